#!/usr/bin/env python
"""Concepts and tags for a synthetic feature store over a prepared Multi30K folder.

Without real detector features the comparison runs on a synthetic store
(``preprocess/synthetic_store.py``). To give its images something to carry, each image's regions
plant the *content words of its English caption* (the source sentence) as concepts, as a perfect
object detector would see the things a caption names; its tags are the first ``--tags`` of those
words. Only the source side is read, never the references, so nothing about the target leaks.

Writes ``OUT_DIR/concepts.tsv`` and ``OUT_DIR/tags.tsv`` (``key<TAB>word word ...``), the input of
``preprocess/synthetic_store.py --concepts-tsv/--tags-tsv``.
"""
import argparse
import os
import re
import sys
from typing import Dict, List

from vlp_mmt_fairseq.data.feature_store import image_key_from_line
from vlp_mmt_fairseq.file_utils import atomic_output

#: function words that no detector would name
STOPWORDS = frozenset(
    "a an the and or but of in on at to from with without by for into onto over under near next "
    "is are was were be being been has have had do does while as it its their his her they he she "
    "them this that these those there here who whom which what some one two three four five several "
    "other another each very up down out off back front top side where when not cannot can will just".split()
)
WORD = re.compile(r"[a-z]+")


def content_words(sentence: str, limit: int) -> List[str]:
    """The first ``limit`` distinct non-function words (lowercased, letters only, 3+ letters) of a sentence."""
    words = []
    for word in WORD.findall(sentence.lower()):
        if len(word) >= 3 and word not in STOPWORDS and word not in words:
            words.append(word)
    return words[:limit]


def split_names(data_dir: str, src: str) -> List[str]:
    """Splits that have both the raw source text and an image index."""
    names = []
    for name in sorted(os.listdir(os.path.join(data_dir, "images"))):
        split = name[: -len(".txt")] if name.endswith(".txt") else None
        if split and os.path.exists(os.path.join(data_dir, "raw", f"{split}.{src}")):
            names.append(split)
    return names


def collect_concepts(data_dir: str, src: str, limit: int) -> Dict[str, List[str]]:
    """Image key -> content words of its caption(s), over every split of a prepared folder."""
    concepts: Dict[str, List[str]] = {}
    for split in split_names(data_dir, src):
        text_path = os.path.join(data_dir, "raw", f"{split}.{src}")
        index_path = os.path.join(data_dir, "images", f"{split}.txt")
        with open(text_path, encoding="utf-8") as f:
            sentences = f.read().splitlines()
        with open(index_path, encoding="utf-8") as f:
            keys = [image_key_from_line(line) for line in f.read().splitlines()]
        if len(sentences) != len(keys):
            raise ValueError(f"{text_path} has {len(sentences)} lines but {index_path} has {len(keys)}")
        for key, sentence in zip(keys, sentences):
            words = concepts.setdefault(key, [])
            words.extend(w for w in content_words(sentence, limit) if w not in words)
            del words[limit:]
    if not concepts:
        raise ValueError(f"{data_dir}: no split with both raw/{{split}}.{src} and images/{{split}}.txt")
    return concepts


def write_tsv(path: str, table: Dict[str, List[str]]) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{key}\t{' '.join(words)}\n" for key, words in table.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder written by preprocess/prepare_multi30k.py")
    parser.add_argument("--src", default="en", help="source language (default en)")
    parser.add_argument("--concepts", type=int, default=6, help="concepts planted per image (default 6)")
    parser.add_argument("--tags", type=int, default=3, help="tags stored per image (default 3)")
    parser.add_argument("--out-dir", required=True, help="where concepts.tsv and tags.tsv go")
    args = parser.parse_args()
    try:
        concepts = collect_concepts(args.data, args.src, args.concepts)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    os.makedirs(args.out_dir, exist_ok=True)
    write_tsv(os.path.join(args.out_dir, "concepts.tsv"), concepts)
    write_tsv(os.path.join(args.out_dir, "tags.tsv"), {k: v[: args.tags] for k, v in concepts.items()})
    print(f"{len(concepts)} images: concepts.tsv and tags.tsv in {args.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
