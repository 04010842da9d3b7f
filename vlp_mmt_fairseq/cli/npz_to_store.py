"""Convert a directory of per-image ``.npz`` detector files to a feature store.

One file per image, as the bottom-up-attention feature extractors write them (for example
``extract_features.py`` of bottom-up-attention.pytorch); the store key is the file name without
``.npz``. Accepted keys (the first one present wins; "info" means inside a pickled ``info`` dict,
which needs ``--allow-pickle``):

=================  ============================================================================
features  [R, D]   ``x``, ``features``, ``feat``, ``feats``
boxes     [R, 4]   ``bbox``, ``boxes``, ``bboxes`` (pixels, x1 y1 x2 y2)
width, height      ``image_w``/``image_h``, ``img_w``/``img_h``, ``width``/``height`` (also in info)
region count       ``num_bbox``, ``num_boxes`` (optional; checked against R; also in info)
objects   [R]      class ids: ``objects_id``, ``object_ids``, ``objects`` (also in info), mapped
                   through ``--objects-vocab``; or class names: ``object_names``, ``objects_name``,
                   or a string-typed ``objects``
confidences [R]    ``objects_conf``, ``object_conf``, ``objects_score``, ``scores``, ``conf``
                   (also in info); they become the region scores
=================  ============================================================================

Attribute keys (``attrs_id``, ``attrs_conf``) and anything else are ignored.

Usage::

    python preprocess/npz_to_store.py --npz-dir features/ --objects-vocab objects_vocab.txt \\
        --output flickr30k_features.h5
"""
import argparse
import os
import zipfile
from typing import Iterator, List, Optional

import numpy as np
from tqdm import tqdm

from vlp_mmt_fairseq.cli.store_converter import add_store_output_args, run_converter
from vlp_mmt_fairseq.features.detector_outputs import ConversionError, DetectedImage, write_detected_images

FEATURE_KEYS = ("x", "features", "feat", "feats")
BOX_KEYS = ("bbox", "boxes", "bboxes")
WIDTH_KEYS = ("image_w", "img_w", "width")
HEIGHT_KEYS = ("image_h", "img_h", "height")
COUNT_KEYS = ("num_bbox", "num_boxes")
OBJECT_ID_KEYS = ("objects_id", "object_ids", "objects")
OBJECT_NAME_KEYS = ("object_names", "objects_name")
CONF_KEYS = ("objects_conf", "object_conf", "objects_score", "scores", "conf")


class _Fields:
    """The arrays of one ``.npz`` file, top level first, then its ``info`` dict."""

    def __init__(self, path: str, allow_pickle: bool):
        self.path = path
        if not zipfile.is_zipfile(path):
            raise ConversionError(f"{path}: not a .npz file (not a zip archive)")
        try:
            with np.load(path, allow_pickle=allow_pickle) as npz:
                self.top = {name: npz[name] for name in npz.files}
        except ValueError as e:
            if not allow_pickle and "allow_pickle" in str(e):
                raise ConversionError(
                    f"{path}: holds pickled objects (e.g. an 'info' dict); pass --allow-pickle "
                    "if you trust the file"
                ) from None
            raise ConversionError(f"{path}: not a readable .npz file ({e})") from None
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            raise ConversionError(f"{path}: not a readable .npz file ({e})") from None
        self.info = {}
        if "info" in self.top:
            info = self.top["info"]
            info = info.item() if isinstance(info, np.ndarray) and info.dtype == object else info
            if not isinstance(info, dict):
                raise ConversionError(f"{path}: 'info' must be a dict, got {type(info).__name__}")
            self.info = info

    def find(self, names, required_what: Optional[str] = None):
        for source in (self.top, self.info):
            for name in names:
                if name in source:
                    return np.asarray(source[name])
        if required_what:
            raise ConversionError(
                f"{self.path}: no {required_what} (looked for keys {', '.join(names)}); "
                f"keys present: {', '.join(sorted(self.top))}"
                + (f"; info keys: {', '.join(sorted(self.info))}" if self.info else "")
            )
        return None


def _scalar(fields: _Fields, names, what: str) -> int:
    value = fields.find(names, what)
    if value.size != 1:
        raise ConversionError(f"{fields.path}: {what} must be a single number, got shape {value.shape}")
    number = value.reshape(())
    if number.dtype.kind not in "iuf" or number.dtype.kind == "f" and not float(number).is_integer():
        raise ConversionError(f"{fields.path}: {what} must be an integer, got {number!r}")
    return int(number)


def _numbers(fields: _Fields, names, what: str) -> np.ndarray:
    """A numeric array of the file, as float32 (strings or objects are refused, not parsed)."""
    value = fields.find(names, what)
    if value.dtype.kind not in "iuf":
        raise ConversionError(f"{fields.path}: {what} must be numbers, got dtype {value.dtype}")
    return value.astype(np.float32)


def read_npz(path: str, allow_pickle: bool = False) -> DetectedImage:
    """One ``.npz`` file as a :class:`DetectedImage` (key = file name without extension)."""
    fields = _Fields(path, allow_pickle)
    features = _numbers(fields, FEATURE_KEYS, "features")
    boxes = _numbers(fields, BOX_KEYS, "boxes")
    if features.ndim != 2 or features.shape[0] == 0:
        raise ConversionError(f"{path}: features must be [R, D] with R > 0, got shape {features.shape}")
    regions = features.shape[0]
    if boxes.shape != (regions, 4):
        raise ConversionError(f"{path}: boxes must be [{regions}, 4] for {regions} regions, got {boxes.shape}")
    count = fields.find(COUNT_KEYS)
    if count is not None and int(count.reshape(-1)[0]) != regions:
        raise ConversionError(f"{path}: num_bbox is {int(count.reshape(-1)[0])} but features have {regions} rows")
    object_ids = object_names = None
    names = fields.find(OBJECT_NAME_KEYS)
    ids = fields.find(OBJECT_ID_KEYS)
    if names is None and ids is not None and ids.dtype.kind in "USO":
        names, ids = ids, None
    if names is not None:
        object_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names.reshape(-1)]
    elif ids is not None:
        if ids.dtype.kind not in "iu":
            raise ConversionError(f"{path}: object class ids must be integers, got {ids.dtype}")
        object_ids = ids.reshape(-1)
    confs = fields.find(CONF_KEYS)
    confs = None if confs is None else confs.astype(np.float32).reshape(-1)
    for what, values in (("object classes", object_ids if object_names is None else object_names),
                         ("object confidences", confs)):
        if values is not None and len(values) != regions:
            raise ConversionError(f"{path}: {len(values)} {what} for {regions} regions")
    return DetectedImage(
        key=os.path.splitext(os.path.basename(path))[0],
        features=features,
        boxes=boxes,
        width=_scalar(fields, WIDTH_KEYS, "image width"),
        height=_scalar(fields, HEIGHT_KEYS, "image height"),
        where=path,
        object_ids=object_ids,
        object_names=object_names,
        object_confs=confs,
    )


def list_npz(directory: str) -> List[str]:
    """The ``.npz`` files directly in ``directory``, sorted by name."""
    if not os.path.isdir(directory):
        raise ConversionError(f"{directory}: directory not found")
    paths = sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".npz"))
    if not paths:
        raise ConversionError(f"{directory}: no .npz files in it")
    return paths


def read_npz_dir(directory: str, allow_pickle: bool = False, progress: bool = True) -> Iterator[DetectedImage]:
    """Stream the images of a directory of ``.npz`` files."""
    for path in tqdm(list_npz(directory), desc="npz", unit="img", disable=not progress):
        yield read_npz(path, allow_pickle)


def convert(npz_dir: str, output: str, objects_vocab: Optional[str], dtype: str, extractor: str,
            allow_pickle: bool = False, progress: bool = True) -> int:
    """Write the images of ``npz_dir`` to the store ``output``; return how many."""
    list_npz(npz_dir)  # fail early, before creating anything
    return write_detected_images(output, read_npz_dir(npz_dir, allow_pickle, progress), objects_vocab, dtype, extractor)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npz-dir", required=True, metavar="DIR", help="directory of per-image .npz files")
    add_store_output_args(parser)
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read pickled objects such as an 'info' dict (only for files you trust)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def cli_main():
    run_converter(get_parser(), lambda args: convert(
        args.npz_dir, args.output, args.objects_vocab, args.dtype, args.extractor,
        allow_pickle=args.allow_pickle, progress=not args.no_progress))


if __name__ == "__main__":
    cli_main()
