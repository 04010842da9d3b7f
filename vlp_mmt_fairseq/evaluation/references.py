"""Where the references of a test set are: in a Multi30K checkout or in a prepared data directory.

Two layouts are understood:

* a Multi30K ``data/task1`` directory (``--multi30k-dir``): ``raw/{split}.{lang}.gz`` (original text)
  and ``tok/{split}.lc.norm.tok.{lang}`` (the official lowercased, Moses-tokenized text);
* a directory written by ``preprocess/prepare_multi30k.py`` (``--refs-dir``): ``raw/{split}.{lang}``
  and ``tok/{split}.{lang}``.
"""

import gzip
import os
from dataclasses import dataclass
from typing import List, Optional

from vlp_mmt_fairseq.errors import PluginError

#: Short test-set names and the Multi30K split each one stands for.
TEST_SETS = {
    "test2016": "test_2016_flickr",
    "test2017": "test_2017_flickr",
    "mscoco": "test_2017_mscoco",
    "test2018": "test_2018_flickr",
    "valid": "val",
}

MULTI30K_SPLITS = frozenset(TEST_SETS.values()) | {"train"}


class ReferenceFilesError(PluginError, ValueError):
    """A test set is unknown, or its reference files are missing or unreadable."""


@dataclass
class References:
    """The two reference files of one test set, and their lines."""

    name: str
    raw_path: str
    tok_path: str
    raw: List[str]
    tok: List[str]


def read_lines(path: str) -> List[str]:
    """The lines of a text file (gzip-compressed if its name ends in ``.gz``), without line ends."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [line.rstrip() for line in f]
    except UnicodeDecodeError as e:
        raise ReferenceFilesError(f"{path}: not UTF-8 text ({e})") from e
    except OSError as e:
        raise ReferenceFilesError(f"{path}: cannot read it ({e})") from e


def multi30k_split(name: str) -> str:
    """The Multi30K split of a test-set name (a short name such as ``test2016``, or a split name)."""
    if name in TEST_SETS:
        return TEST_SETS[name]
    if name in MULTI30K_SPLITS:
        return name
    known = ", ".join(f"{k} ({v})" for k, v in TEST_SETS.items())
    raise ReferenceFilesError(f"unknown test set '{name}'; known: {known}")


def _first_existing(candidates: List[str], what: str) -> str:
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise ReferenceFilesError(f"no {what}; looked for: {', '.join(candidates)}")


def _multi30k_paths(name: str, lang: str, multi30k_dir: str):
    split = multi30k_split(name)
    raw = _first_existing(
        [os.path.join(multi30k_dir, "raw", f"{split}.{lang}.gz"), os.path.join(multi30k_dir, "raw", f"{split}.{lang}")],
        f"raw '{lang}' reference of {name}",
    )
    tok = _first_existing(
        [os.path.join(multi30k_dir, "tok", f"{split}.lc.norm.tok.{lang}")],
        f"tokenized '{lang}' reference of {name}",
    )
    return raw, tok


def _prepared_paths(name: str, lang: str, refs_dir: str):
    splits = [name] + ([TEST_SETS[name]] if name in TEST_SETS else [])
    raw = _first_existing(
        [os.path.join(refs_dir, "raw", f"{s}.{lang}") for s in splits], f"raw '{lang}' reference of {name}"
    )
    tok = _first_existing(
        [os.path.join(refs_dir, "tok", f"{s}.{lang}") for s in splits], f"tokenized '{lang}' reference of {name}"
    )
    return raw, tok


def load_references(
    name: str, lang: str, multi30k_dir: Optional[str] = None, refs_dir: Optional[str] = None
) -> References:
    """Find and read the raw and tokenized references of test set ``name`` in language ``lang``.

    Exactly one of ``multi30k_dir`` and ``refs_dir`` is given. In a prepared ``refs_dir`` the split
    may be named by the short name (``test2016``) or the Multi30K split (``test_2016_flickr``).
    """
    if (multi30k_dir is None) == (refs_dir is None):
        raise ValueError("give exactly one of multi30k_dir and refs_dir")
    if multi30k_dir is not None:
        raw_path, tok_path = _multi30k_paths(name, lang, multi30k_dir)
    else:
        raw_path, tok_path = _prepared_paths(name, lang, refs_dir)
    raw, tok = read_lines(raw_path), read_lines(tok_path)
    if len(raw) != len(tok):
        raise ReferenceFilesError(
            f"references of {name} disagree: {raw_path} has {len(raw)} lines, {tok_path} has {len(tok)}"
        )
    return References(name, raw_path, tok_path, raw, tok)
