"""Convert bottom-up-attention TSV files (the layout LXMERT and Oscar distribute) to a feature store.

Each line holds one image in ten tab-separated columns::

    img_id  img_h  img_w  objects_id  objects_conf  attrs_id  attrs_conf  num_boxes  boxes  features

(height before width). ``objects_id``/``attrs_id`` are base64 of int64 buffers; ``objects_conf``,
``attrs_conf``, ``boxes`` (pixels, x1 y1 x2 y2) and ``features`` (num_boxes x D) base64 of float32
buffers. The files are streamed line by line, so their size does not matter.

Usage::

    python preprocess/tsv_to_store.py --tsv train2014_obj36.tsv val2014_obj36.tsv \\
        --objects-vocab objects_vocab.txt --output coco_features.h5
"""
import argparse
import base64
import binascii
import os
from typing import Iterator, Optional

import numpy as np
from tqdm import tqdm

from vlp_mmt_fairseq.cli.store_converter import add_store_output_args, run_converter
from vlp_mmt_fairseq.features.detector_outputs import ConversionError, DetectedImage, write_detected_images

COLUMNS = (
    "img_id", "img_h", "img_w", "objects_id", "objects_conf",
    "attrs_id", "attrs_conf", "num_boxes", "boxes", "features",
)


def decode_buffer(text: str, dtype, column: str, where: str) -> np.ndarray:
    """A base64 column as a 1-D numpy array of ``dtype``."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ConversionError(f"{where}: column '{column}' is not valid base64 ({e})") from None
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise ConversionError(
            f"{where}: column '{column}' holds {len(raw)} bytes, not a whole number of {np.dtype(dtype).name} values"
        )
    return np.frombuffer(raw, dtype=dtype)


def _int_column(text: str, column: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConversionError(f"{where}: column '{column}' must be an integer, got {text[:40]!r}") from None


def parse_line(line: str, where: str) -> DetectedImage:
    """One TSV line as a :class:`DetectedImage`."""
    cols = line.rstrip("\r\n").split("\t")
    if len(cols) != len(COLUMNS):
        raise ConversionError(
            f"{where}: expected {len(COLUMNS)} tab-separated columns ({', '.join(COLUMNS)}), got {len(cols)}"
        )
    row = dict(zip(COLUMNS, cols))
    height = _int_column(row["img_h"], "img_h", where)
    width = _int_column(row["img_w"], "img_w", where)
    num_boxes = _int_column(row["num_boxes"], "num_boxes", where)
    if num_boxes <= 0:
        raise ConversionError(f"{where}: num_boxes is {num_boxes}; an image needs at least one region")
    object_ids = decode_buffer(row["objects_id"], np.int64, "objects_id", where)
    object_confs = decode_buffer(row["objects_conf"], np.float32, "objects_conf", where)
    boxes = decode_buffer(row["boxes"], np.float32, "boxes", where)
    features = decode_buffer(row["features"], np.float32, "features", where)
    for column, values, expected in (
        ("objects_id", object_ids, num_boxes),
        ("objects_conf", object_confs, num_boxes),
        ("boxes", boxes, num_boxes * 4),
    ):
        if values.size != expected:
            raise ConversionError(
                f"{where}: column '{column}' holds {values.size} values, expected {expected} for num_boxes={num_boxes}"
            )
    if features.size == 0 or features.size % num_boxes:
        raise ConversionError(
            f"{where}: column 'features' holds {features.size} values, not num_boxes={num_boxes} rows of equal size"
        )
    return DetectedImage(
        key=row["img_id"],
        features=features.reshape(num_boxes, -1),
        boxes=boxes.reshape(num_boxes, 4),
        width=width,
        height=height,
        where=where,
        object_ids=object_ids,
        object_confs=object_confs,
    )


def read_tsv(paths, progress: bool = True) -> Iterator[DetectedImage]:
    """Stream the images of several TSV files, with a progress bar over their bytes."""
    total = sum(os.path.getsize(p) for p in paths)
    with tqdm(total=total, unit="B", unit_scale=True, desc="tsv", disable=not progress) as bar:
        for path in paths:
            with open(path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    bar.update(len(raw))
                    where = f"{path}:{lineno}"
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise ConversionError(f"{where}: not utf-8 text ({e})") from None
                    if not line.strip():
                        continue
                    if lineno == 1 and line.startswith(COLUMNS[0] + "\t"):
                        continue  # a header line
                    yield parse_line(line, where)


def convert(tsv_paths, output: str, objects_vocab: Optional[str], dtype: str, extractor: str,
            progress: bool = True) -> int:
    """Write the images of ``tsv_paths`` to the store ``output``; return how many."""
    for path in tsv_paths:
        if not os.path.isfile(path):
            raise ConversionError(f"{path}: TSV file not found")
    return write_detected_images(output, read_tsv(tsv_paths, progress), objects_vocab, dtype, extractor)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tsv", nargs="+", required=True, metavar="FILE", help="bottom-up-attention TSV file(s)")
    add_store_output_args(parser, vocab_required=True)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def cli_main():
    run_converter(get_parser(), lambda args: convert(
        args.tsv, args.output, args.objects_vocab, args.dtype, args.extractor, progress=not args.no_progress))


if __name__ == "__main__":
    cli_main()
