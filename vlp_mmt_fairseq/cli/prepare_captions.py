"""Binarize an image-caption corpus (COCO, Conceptual Captions, ...) for ``--task vlp_pretrain``.

Usage::

    python preprocess/prepare_captions.py --captions coco/train.txt --images coco/train.images.txt \\
        --out data-bin/vlp-coco --split train [--lang en] [--bert-model bundled-minilm]

    # several splits at once: --captions, --images and --split take one value per split
    python preprocess/prepare_captions.py --captions train.txt valid.txt --images train.img valid.img \\
        --split train valid --out data-bin/vlp-coco

Input: a caption file (one caption per line, plain or .gz) and an image index of as many lines
(line i names the image of caption i, e.g. ``COCO_train2014_000000117071.jpg``; see
feature_store.image_key_from_line). Output, each file written atomically::

    OUT/{split}.{lang}.bin/.idx   BERT ids [CLS] x [SEP] of each caption (fairseq mmap indexed dataset)
    OUT/{split}.img.npy           the image keys (memory-mapped by the task)

Both files are streamed: memory does not grow with the corpus beyond fairseq's index (8 bytes and
a size per caption).
"""
import argparse
import gzip
import logging
import os
import sys
from typing import Iterator, List, Tuple

import numpy as np
from tqdm import tqdm

from vlp_mmt_fairseq.bert_loading import (
    BUNDLED_MINILM,
    BertModelNotFound,
    load_bert_config,
    load_bert_tokenizer,
)
from vlp_mmt_fairseq.data.feature_store import image_key_from_line
from vlp_mmt_fairseq.errors import PluginError
from vlp_mmt_fairseq.file_utils import atomic_output

logger = logging.getLogger("prepare_captions")
BATCH_SIZE = 1000


class CaptionError(PluginError):
    """The input cannot be prepared; the message names the file and line at fault."""


def open_text(path: str):
    try:
        return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")
    except OSError as e:
        raise CaptionError(f"{path}: cannot read it ({e})") from e


def scan_image_index(path: str) -> Tuple[int, int]:
    """Line count and longest key (bytes) of an image index; an empty line is an error."""
    count, longest = 0, 1
    with open_text(path) as f:
        for count, line in enumerate(tqdm(f, desc=f"scan {os.path.basename(path)}", unit="line"), 1):
            key = image_key_from_line(line)
            if not key:
                raise CaptionError(f"{path}:{count}: empty image-index line")
            longest = max(longest, len(key.encode("utf-8")))
    return count, longest


def scan_captions(path: str) -> int:
    """Line count of a caption file; an empty caption is an error."""
    count = 0
    with open_text(path) as f:
        for count, line in enumerate(tqdm(f, desc=f"scan {os.path.basename(path)}", unit="line"), 1):
            if not line.strip():
                raise CaptionError(f"{path}:{count}: empty caption")
    return count


def caption_batches(path: str) -> Iterator[Tuple[int, List[str]]]:
    """(first line number, captions) in batches of whitespace-normalized captions."""
    batch, start = [], 1
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            batch.append(" ".join(line.split()))
            if len(batch) == BATCH_SIZE:
                yield start, batch
                batch, start = [], lineno + 1
    if batch:
        yield start, batch


def check_split(captions: str, images: str) -> Tuple[int, int]:
    """Line count and longest image key of a split whose two files are valid and of equal length."""
    num_images, key_bytes = scan_image_index(images)
    num_captions = scan_captions(captions)
    if num_captions != num_images:
        raise CaptionError(f"{captions} has {num_captions} lines but {images} has {num_images}")
    if num_captions == 0:
        raise CaptionError(f"{captions}: no captions")
    return num_captions, key_bytes


def prepare_split(captions: str, images: str, out: str, split: str, lang: str, tokenizer, max_positions: int,
                  num_captions: int, key_bytes: int) -> dict:
    """Write one split's captions and image index; return its line count and longest caption."""
    import torch
    from fairseq.data import indexed_dataset

    prefix = os.path.join(out, f"{split}.{lang}")
    os.makedirs(out, exist_ok=True)
    longest = 0
    with atomic_output(prefix + ".bin") as bin_tmp, atomic_output(prefix + ".idx") as idx_tmp, \
            atomic_output(os.path.join(out, f"{split}.img.npy"), suffix=".npy") as npy_tmp:
        builder = indexed_dataset.make_builder(bin_tmp, impl="mmap", vocab_size=len(tokenizer))
        keys = np.lib.format.open_memmap(npy_tmp, mode="w+", dtype=f"S{key_bytes}", shape=(num_captions,))
        with open_text(images) as index_file:
            progress = tqdm(total=num_captions, desc=f"BERT-tokenize {split}", unit="caption")
            for start, batch in caption_batches(captions):
                ids = tokenizer(batch, add_special_tokens=True, verbose=False)["input_ids"]
                for offset, sentence in enumerate(ids):
                    if len(sentence) > max_positions:
                        raise CaptionError(f"{captions}:{start + offset}: {len(sentence)} BERT tokens, "
                                           f"more than the model's {max_positions} positions")
                    builder.add_item(torch.IntTensor(sentence))
                    keys[start + offset - 1] = image_key_from_line(next(index_file)).encode("utf-8")
                    longest = max(longest, len(sentence))
                progress.update(len(batch))
            progress.close()
        builder.finalize(idx_tmp)
        keys.flush()
        del keys
    return {"split": split, "captions": num_captions, "longest": longest}


def prepare(args) -> list:
    """Prepare every split named on the command line."""
    if not len(args.captions) == len(args.images) == len(args.split):
        raise CaptionError(f"{len(args.captions)} --captions, {len(args.images)} --images and "
                           f"{len(args.split)} --split values: give one of each per split")
    checked = [check_split(c, i) for c, i in zip(args.captions, args.images)]  # every input, before any output
    tokenizer = load_bert_tokenizer(args.bert_model)
    max_positions = load_bert_config(args.bert_model).max_position_embeddings
    return [prepare_split(c, i, args.out, s, args.lang, tokenizer, max_positions, *counts)
            for c, i, s, counts in zip(args.captions, args.images, args.split, checked)]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", required=True, nargs="+", help="caption file(s), one caption per line "
                                                                      "(plain or .gz)")
    parser.add_argument("--images", required=True, nargs="+", help="image index(es): line i names the image "
                                                                    "of caption i")
    parser.add_argument("--out", required=True, help="output data directory (created if missing)")
    parser.add_argument("--split", nargs="+", default=["train"], help="split name(s) of the output files "
                                                                       "(default: train)")
    parser.add_argument("--lang", default="en", help="language suffix of the caption files (default: en)")
    parser.add_argument("--bert-model", default=BUNDLED_MINILM, help=f"BERT tokenizer (default: {BUNDLED_MINILM})")
    return parser


def cli_main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    args = get_parser().parse_args(argv)
    try:
        summaries = prepare(args)
    except (CaptionError, BertModelNotFound) as e:
        print(f"prepare_captions.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    for summary in summaries:
        logger.info("%s: %d captions (longest %d BERT tokens) in %s", summary["split"], summary["captions"],
                    summary["longest"], args.out)


if __name__ == "__main__":
    cli_main()
