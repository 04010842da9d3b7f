"""Turning an object detector's per-image output into feature-store entries.

Shared by the converters ``vlp-mmt-tsv-to-store`` (bottom-up-attention TSV files) and ``vlp-mmt-npz-to-store``
(per-image ``.npz`` files): class-name vocabularies, box normalisation, object tags, and the streaming write loop.
"""
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from vlp_mmt_fairseq.data.feature_store import BOX_TOLERANCE, FeatureStoreError, FeatureStoreWriter
from vlp_mmt_fairseq.errors import PluginError

#: the ``extractor`` attribute written by the converters unless ``--extractor`` says otherwise
BOTTOM_UP_EXTRACTOR = "bottom-up-attention (Caffe Faster R-CNN R101, Visual Genome)"


class ConversionError(PluginError, ValueError):
    """Unusable detector output; the message names the input file (and line or key)."""


@dataclass
class DetectedImage:
    """One image as a detector wrote it: boxes still in pixels, objects as class ids or names."""

    key: str
    features: np.ndarray  # R x D
    boxes: np.ndarray  # R x 4, pixels (x1, y1, x2, y2)
    width: int
    height: int
    where: str  # "file:line" or "file", for error messages
    object_ids: Optional[np.ndarray] = None  # R class ids into the objects vocabulary
    object_names: Optional[Sequence[str]] = None  # R class names (instead of ids)
    object_confs: Optional[np.ndarray] = None  # R confidences


def load_class_names(path: str) -> List[str]:
    """Class names of a detector vocabulary: line k names class k; of ``a,b`` synonyms keep ``a``."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip().split(",")[0].strip() for line in f]
    except OSError as e:
        raise ConversionError(f"{path}: cannot read the objects vocabulary ({e})") from e
    for lineno, name in enumerate(names, 1):
        if not name:
            raise ConversionError(f"{path}:{lineno}: empty class name in the objects vocabulary")
    if not names:
        raise ConversionError(f"{path}: the objects vocabulary is empty")
    return names


def normalize_boxes(boxes: np.ndarray, width: int, height: int, where: str) -> np.ndarray:
    """Pixel boxes (x1, y1, x2, y2) divided by (w, h, w, h), checked, and clipped to [0, 1].

    A box may reach past the image's border by ``BOX_TOLERANCE`` of its size (rounding); one further out means
    the image size or the boxes are wrong (width and height swapped, boxes of a resized image), and boxes that
    all lie within [0, 1] on an image larger than 2 x 2 pixels are already normalised: both are refused.
    """
    if width <= 0 or height <= 0:
        raise ConversionError(f"{where}: image size must be positive, got width={width} height={height}")
    boxes = np.asarray(boxes, dtype=np.float32)
    if not np.isfinite(boxes).all():
        raise ConversionError(f"{where}: boxes contain NaN or inf")
    if boxes.size and width > 2 and height > 2 and 0.0 <= boxes.min() and boxes.max() <= 1.0:
        raise ConversionError(f"{where}: the boxes are all within [0, 1] for a {width} x {height} image: they look "
                              "normalised already, but pixel boxes are expected")
    scale = np.array([width, height, width, height], dtype=np.float32)
    normalized = boxes / scale
    outside = (normalized < -BOX_TOLERANCE) | (normalized > 1.0 + BOX_TOLERANCE)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise ConversionError(
            f"{where}: region {row}'s box {boxes[row].tolist()} (pixels, x1 y1 x2 y2) lies outside the "
            f"{width} x {height} image (width and height swapped?)"
        )
    return np.clip(normalized, 0.0, 1.0)


def object_tags(image: DetectedImage, class_names: Optional[Sequence[str]]) -> Tuple[List[str], np.ndarray]:
    """The image's tags: its regions' class names, each once, with its highest confidence, best first."""
    if image.object_names is not None:
        names = [str(n) for n in image.object_names]
    elif image.object_ids is not None:
        if class_names is None:
            raise ConversionError(f"{image.where}: objects are class ids; pass --objects-vocab to name them")
        ids = np.asarray(image.object_ids)
        bad = (ids < 0) | (ids >= len(class_names))
        if bad.any():
            raise ConversionError(
                f"{image.where}: object class id {int(ids[bad][0])} is outside the objects vocabulary "
                f"({len(class_names)} classes)"
            )
        names = [class_names[i] for i in ids.tolist()]
    else:
        return [], np.zeros(0, np.float32)
    confs = image.object_confs
    if confs is None:
        confs = np.ones(len(names), np.float32)
    if len(confs) != len(names):
        raise ConversionError(f"{image.where}: {len(names)} object classes but {len(confs)} confidences")
    best = {}
    for name, conf in zip(names, np.asarray(confs, np.float32).tolist()):
        if name not in best or conf > best[name]:
            best[name] = conf
    ranked = sorted(best.items(), key=lambda item: -item[1])
    return [name for name, _ in ranked], np.array([conf for _, conf in ranked], np.float32)


def _add(writer: FeatureStoreWriter, image: DetectedImage, class_names: Optional[Sequence[str]]) -> None:
    scores = image.object_confs
    if scores is not None and len(scores) != len(image.features):
        raise ConversionError(f"{image.where}: {len(image.features)} regions but {len(scores)} object confidences")
    has_objects = image.object_ids is not None or image.object_names is not None
    tags, tag_scores = object_tags(image, class_names) if has_objects else (None, None)
    try:
        writer.add(
            image.key,
            image.features,
            normalize_boxes(image.boxes, image.width, image.height, image.where),
            width=image.width,
            height=image.height,
            scores=scores,
            tags=tags,
            tag_scores=tag_scores,
        )
    except FeatureStoreError as e:
        raise ConversionError(f"{image.where}: {e}") from e


def write_detections(
    path: str,
    images: Iterable[DetectedImage],
    class_names: Optional[Sequence[str]] = None,
    dtype: str = "float16",
    extractor: str = BOTTOM_UP_EXTRACTOR,
) -> int:
    """Stream ``images`` into a new store at ``path`` (atomically); return the number written.

    The feature size D is taken from the first image; any later image of another size is an error.
    """
    images: Iterator[DetectedImage] = iter(images)
    first = next(images, None)
    if first is None:
        raise ConversionError(f"{path}: no images in the input; nothing written")
    feature_dim = first.features.shape[1] if first.features.ndim == 2 else -1
    if feature_dim <= 0:
        raise ConversionError(f"{first.where}: features must be [R, D], got shape {tuple(first.features.shape)}")
    count = 0
    with FeatureStoreWriter(path, feature_dim=feature_dim, extractor=extractor, dtype=dtype) as writer:
        _add(writer, first, class_names)
        count += 1
        for image in images:
            _add(writer, image, class_names)
            count += 1
    return count


def write_detected_images(path: str, images: Iterable[DetectedImage], objects_vocab: Optional[str], dtype: str,
                          extractor: str) -> int:
    """:func:`write_detections`, the class ids named by the vocabulary file ``objects_vocab`` (if given)."""
    class_names = load_class_names(objects_vocab) if objects_vocab else None
    return write_detections(path, images, class_names, dtype, extractor)
