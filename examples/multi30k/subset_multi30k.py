#!/usr/bin/env python
"""Write a Multi30K-layout folder holding the first N sentences of chosen splits (small budgets).

The output has the layout ``preprocess/prepare_multi30k.py`` reads (``raw/{split}.{lang}.gz``,
``tok/{split}.lc.norm.tok.{lang}``, ``image_splits/{split}.txt``), for the two languages and the
splits asked for; every file of a split is cut at the same line, so sentences, tokenized
references and images stay aligned. It is built beside ``--out`` and renamed when complete.
"""
import argparse
import gzip
import os
import shutil
import sys
import tempfile
from typing import List, Optional

TEST_SPLIT_PREFIX = "test_"


def read_lines(path: str) -> List[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def split_files(multi30k_dir: str, split: str, langs: List[str]) -> dict:
    """{relative output path: input path} of one split; raw text and image list must exist."""
    files = {}
    for lang in langs:
        raw = os.path.join(multi30k_dir, "raw", f"{split}.{lang}.gz")
        if not os.path.exists(raw) and os.path.exists(raw[: -len(".gz")]):
            raw = raw[: -len(".gz")]
        if not os.path.exists(raw):
            raise FileNotFoundError(f"{raw}: no such file (split '{split}', language '{lang}')")
        files[f"raw/{split}.{lang}.gz"] = raw
        tok = os.path.join(multi30k_dir, "tok", f"{split}.lc.norm.tok.{lang}")
        if os.path.exists(tok):
            files[f"tok/{split}.lc.norm.tok.{lang}"] = tok
    images = os.path.join(multi30k_dir, "image_splits", f"{split}.txt")
    if not os.path.exists(images):
        raise FileNotFoundError(f"{images}: no such file (the image list of split '{split}')")
    files[f"image_splits/{split}.txt"] = images
    return files


def limit_of(split: str, args) -> Optional[int]:
    if split == "train":
        return args.train
    if split == "val":
        return args.valid
    return args.test if split.startswith(TEST_SPLIT_PREFIX) else None


def write_split(multi30k_dir: str, split: str, langs: List[str], limit: Optional[int], out: str) -> int:
    """Copy the first ``limit`` lines of every file of ``split``; return the line count."""
    files = split_files(multi30k_dir, split, langs)
    contents = {target: read_lines(source) for target, source in files.items()}
    counts = {files[t]: len(lines) for t, lines in contents.items()}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{p}: {n}" for p, n in counts.items())
        raise ValueError(f"split '{split}': its files differ in line count ({detail})")
    total = next(iter(counts.values()))
    kept = min(total, limit) if limit else total
    for target, lines in contents.items():
        lines = lines[:kept]
        path = os.path.join(out, target)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "wt", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
    return kept


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multi30k-dir", required=True, help="Multi30K data/task1 folder")
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--splits", nargs="+", required=True, help="Multi30K split names (train, val, test_...)")
    parser.add_argument("--train", type=int, help="keep the first N training sentences")
    parser.add_argument("--valid", type=int, help="keep the first N validation sentences")
    parser.add_argument("--test", type=int, help="keep the first N sentences of each test split")
    args = parser.parse_args()
    for name in ("train", "valid", "test"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    if os.path.exists(args.out):
        sys.exit(f"error: {args.out} exists; remove it or choose another --out")
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(args.out) + ".", suffix=".tmp", dir=parent)
    try:
        for split in args.splits:
            count = write_split(args.multi30k_dir, split, [args.src, args.tgt], limit_of(split, args), tmp)
            print(f"{split}: {count} sentences", file=sys.stderr)
        os.replace(tmp, args.out)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
