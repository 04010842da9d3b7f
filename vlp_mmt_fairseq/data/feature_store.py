"""The HDF5 image-feature store: its one definition (writer, lazy reader, validation).

Format (documented for users in ``docs/feature_store.md``)::

    /                       attrs: format="vlp_mmt_features", version=2 (or 1),
                                   feature_dim=D, max_regions=R_max, extractor=<str>
    /<image key>/           one group per image, attrs: width, height (pixels)
        features   [R, D]   float16 or float32 region features
        boxes      [R, 4]   float32, (x1, y1, x2, y2) divided by (w, h, w, h): in [0, 1]
        scores     [R]      float32, optional: region confidence; the reader keeps the
                            ``max_regions`` highest-scoring regions (store order if absent)
        tags       [K]      utf-8 strings, optional: object tags of the image
        tag_scores [K]      float32, optional (required with ``tags``)

Version 2 (written by default) makes corruption detectable: every dataset is chunked with HDF5's
fletcher32 checksum, strings are fixed-length (no unchecksummed global heap) and the file uses HDF5
1.10's file format, whose metadata (superblock, object headers, B-trees, heaps) carries checksums.
Version 1 (contiguous datasets, no checksums) stays readable.

An image *index* maps line i of a split to an image key (see :func:`image_key_from_line`).
"""
import atexit
import glob
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from vlp_mmt_fairseq.errors import PluginError
from vlp_mmt_fairseq.file_utils import atomic_output, partial_path, publish, temporary_path

FORMAT_NAME = "vlp_mmt_features"
#: the version :class:`FeatureStoreWriter` writes; :data:`READABLE_VERSIONS` are read
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: how far a normalised box coordinate may lie outside [0, 1] (rounding of pixel boxes at the border)
BOX_TOLERANCE = 0.01
#: the datasets an image group may hold (version 2 refuses any other member)
IMAGE_DATASETS = ("features", "boxes", "scores", "tags", "tag_scores")
#: HDF5 file-format bounds of version 2 stores: HDF5 1.10's format, with checksummed metadata
V2_LIBVER = ("v110", "v110")


class FeatureStoreError(PluginError, ValueError):
    """A feature store, or one image in it, is missing or unusable; the message names both."""


@dataclass
class ImageFeatures:
    """The regions of one image, already cut to ``max_regions`` and sorted by score."""

    features: np.ndarray  # R x D, float32
    boxes: np.ndarray  # R x 4, float32 in [0, 1]
    tags: List[str] = field(default_factory=list)
    tag_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    width: int = 0
    height: int = 0


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a hard dependency
        raise ImportError("the image-feature store needs h5py: pip install h5py") from e
    return h5py


def image_key_from_line(line: str) -> str:
    """The store key of one image-index line.

    The key is the file name without its directory, without any ``#...`` suffix and without its
    extension: ``COCO_train2014_000000117071.jpg#367178`` -> ``COCO_train2014_000000117071``,
    ``1000092795.jpg`` -> ``1000092795``.
    """
    name = line.strip().split("#", 1)[0]
    name = os.path.basename(name)
    return os.path.splitext(name)[0]


# --------------------------------------------------------------------------- writing


def validate_regions(features: np.ndarray, boxes: np.ndarray, feature_dim: Optional[int], where: str) -> None:
    """Raise FeatureStoreError (naming ``where``) for a wrong shape, no regions, NaN or inf."""
    if features.ndim != 2:
        raise FeatureStoreError(f"{where}: features must be [R, D], got shape {tuple(features.shape)}")
    if features.shape[0] == 0:
        raise FeatureStoreError(f"{where}: the image has no regions (R = 0)")
    if feature_dim is not None and features.shape[1] != feature_dim:
        raise FeatureStoreError(
            f"{where}: feature size is {features.shape[1]}, expected D = {feature_dim}"
        )
    if boxes.shape != (features.shape[0], 4):
        raise FeatureStoreError(
            f"{where}: boxes must be [R, 4] = [{features.shape[0]}, 4], got {tuple(boxes.shape)}"
        )
    if not np.isfinite(features).all():
        raise FeatureStoreError(f"{where}: features contain NaN or inf")
    if not np.isfinite(boxes).all():
        raise FeatureStoreError(f"{where}: boxes contain NaN or inf")
    validate_boxes(boxes, where)


def validate_boxes(boxes: np.ndarray, where: str) -> None:
    """Raise FeatureStoreError unless ``boxes`` are normalised corners (x1, y1, x2, y2) in [0, 1]."""
    low, high = -BOX_TOLERANCE, 1.0 + BOX_TOLERANCE
    outside = (boxes < low) | (boxes > high)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise FeatureStoreError(
            f"{where}: boxes must be normalised to [0, 1] (pixel boxes divided by the image's width and height), "
            f"region {row} has {('x1', 'y1', 'x2', 'y2')[col]} = {float(boxes[row, col]):g}"
        )
    flipped = (boxes[:, 2] < boxes[:, 0] - BOX_TOLERANCE) | (boxes[:, 3] < boxes[:, 1] - BOX_TOLERANCE)
    if flipped.any():
        row = int(np.argmax(flipped))
        raise FeatureStoreError(
            f"{where}: boxes must be corners (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2, region {row} is "
            f"{[round(float(v), 4) for v in boxes[row]]}"
        )


def validate_tags(tags: Sequence[str], tag_scores: np.ndarray, where: str) -> None:
    """Raise FeatureStoreError for an empty tag or non-finite tag scores."""
    for index, tag in enumerate(tags):
        if not tag.strip() or "\0" in tag:
            raise FeatureStoreError(f"{where}: tag {index} is {tag!r}; a tag must be a non-empty word")
    if not np.isfinite(tag_scores).all():
        raise FeatureStoreError(f"{where}: tag scores contain NaN or inf")


def _write_array(group_id, name: str, array: np.ndarray, checksum: bool = False) -> None:
    """Create dataset ``name`` holding ``array`` in a group (h5py's low-level API: twice as fast).

    With ``checksum`` the dataset is one chunk with HDF5's fletcher32 filter (version 2); an empty
    array has no data to check and stays contiguous.
    """
    h5py = _h5py()
    array = np.ascontiguousarray(array)
    dcpl = None
    if checksum and array.size:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(array.shape)
        dcpl.set_fletcher32()
    dataset = h5py.h5d.create(
        group_id, name.encode("utf-8"), h5py.h5t.py_create(array.dtype, logical=True),
        h5py.h5s.create_simple(array.shape), dcpl=dcpl,
    )
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, array)


def _write_int_attr(group_id, name: str, value: int) -> None:
    """Attach the integer attribute ``name`` (int64 scalar, as ``group.attrs[name] = value`` does)."""
    h5py = _h5py()
    value = np.array(int(value), dtype=np.int64)
    scalar = h5py.h5s.create(h5py.h5s.SCALAR)
    h5py.h5a.create(group_id, name.encode("utf-8"), h5py.h5t.py_create(value.dtype), scalar).write(value)


def _fixed_utf8(texts: Sequence[str]) -> np.ndarray:
    """utf-8 strings as a fixed-length byte array (stored in the checksummed chunk, not the global heap)."""
    encoded = [t.encode("utf-8") for t in texts]
    return np.array(encoded, dtype=_h5py().string_dtype("utf-8", max([len(e) for e in encoded] + [1])))


def _set_string_attr(attrs, name: str, text: str, fixed: bool) -> None:
    if fixed:  # a fixed-length string lives in the (checksummed) object header
        value = _fixed_utf8([text])
        attrs.create(name, value[0], dtype=value.dtype)
    else:
        attrs[name] = text


class FeatureStoreWriter:
    """Writes a store atomically: into a temporary file that is renamed on :meth:`close`.

    Use as a context manager; on an exception the temporary file is removed and nothing is left
    at ``path``. ``version=1`` writes the old format (no checksums), for tests and old readers.
    """

    def __init__(self, path: str, feature_dim: int, extractor: str, dtype: str = "float16",
                 version: int = FORMAT_VERSION):
        self.path = path
        self.feature_dim = int(feature_dim)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float16, np.float32):
            raise ValueError(f"{path}: feature dtype must be float16 or float32, got {dtype}")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{path}: format version must be one of {READABLE_VERSIONS}, got {version}")
        self.version = version
        self._checksum = version >= 2
        self._tmp = temporary_path(path, suffix=".h5")
        self._file = _h5py().File(self._tmp, "w", **({"libver": V2_LIBVER} if self._checksum else {}))
        _set_string_attr(self._file.attrs, "format", FORMAT_NAME, self._checksum)
        self._file.attrs["version"] = version
        self._file.attrs["feature_dim"] = self.feature_dim
        _set_string_attr(self._file.attrs, "extractor", str(extractor), self._checksum)
        self._utf8_names = _h5py().h5p.create(_h5py().h5p.LINK_CREATE)
        self._utf8_names.set_char_encoding(_h5py().h5t.CSET_UTF8)
        self._max_regions = 0

    def add(
        self,
        key: str,
        features: np.ndarray,
        boxes: np.ndarray,
        width: int,
        height: int,
        scores: Optional[np.ndarray] = None,
        tags: Optional[Sequence[str]] = None,
        tag_scores: Optional[Sequence[float]] = None,
    ) -> None:
        """Add one image. ``boxes`` must already be normalised to [0, 1] (divided by width and height)."""
        where = f"{self.path}: image '{key}'"
        if not key or "/" in key:
            raise FeatureStoreError(f"{where}: a key must be non-empty and contain no '/'")
        features = np.asarray(features, dtype=np.float32)
        boxes = np.asarray(boxes, dtype=np.float32)
        validate_regions(features, boxes, self.feature_dim, where)
        if np.abs(features).max() > np.finfo(self.dtype).max:
            raise FeatureStoreError(f"{where}: features exceed the {self.dtype} range; write float32")
        for name, size in (("width", width), ("height", height)):
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
                raise FeatureStoreError(f"{where}: {name} must be a positive integer (pixels), got {size!r}")
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float32)
            if scores.shape != (features.shape[0],):
                raise FeatureStoreError(f"{where}: scores must be [R], got {tuple(scores.shape)}")
            if not np.isfinite(scores).all():
                raise FeatureStoreError(f"{where}: scores contain NaN or inf")
        if tags is not None:
            tags = [str(t) for t in tags]
            tag_scores = np.asarray(tag_scores if tag_scores is not None else np.ones(len(tags)), np.float32)
            if tag_scores.shape != (len(tags),):
                raise FeatureStoreError(f"{where}: {len(tags)} tags but {tag_scores.shape} tag scores")
            validate_tags(tags, tag_scores, where)
        # everything is checked before the group exists, so a rejected image leaves no trace
        h5py = _h5py()
        try:
            group_id = h5py.h5g.create(self._file.id, key.encode("utf-8"), lcpl=self._utf8_names)
        except ValueError as e:
            problem = "duplicate key" if key in self._file else f"cannot create the group ({e})"
            raise FeatureStoreError(f"{where}: {problem}") from None
        _write_int_attr(group_id, "width", width)
        _write_int_attr(group_id, "height", height)
        _write_array(group_id, "features", features.astype(self.dtype), self._checksum)
        _write_array(group_id, "boxes", boxes, self._checksum)
        if scores is not None:
            _write_array(group_id, "scores", scores, self._checksum)
        if tags is not None:
            if self._checksum:
                texts = _fixed_utf8(tags)
                self._file[key].create_dataset("tags", data=texts, dtype=texts.dtype,
                                               **({"chunks": texts.shape, "fletcher32": True} if tags else {}))
            else:
                self._file[key].create_dataset("tags", data=tags, dtype=h5py.string_dtype("utf-8"))
            _write_array(group_id, "tag_scores", tag_scores, self._checksum)
        self._max_regions = max(self._max_regions, features.shape[0])

    def close(self, ok: bool = True) -> None:
        """Finish the store: rename it into place if ``ok``, else delete the temporary file."""
        if self._file is None:
            return
        self._file.attrs["max_regions"] = self._max_regions
        self._file.close()
        self._file = None
        if ok:
            publish(self._tmp, self.path)
        elif os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(ok=exc_type is None)
        return False


# --------------------------------------------------------------------------- reading


_OPEN_STORES = weakref.WeakSet()
#: guards opening handles against the exit hook below; set once the interpreter exits
_OPENING = threading.Lock()
_EXITING = False


@atexit.register
def _close_open_stores() -> None:
    """Close every store's HDF5 handle before the interpreter tears down, and open none after that.

    h5py objects finalized during shutdown, after parts of HDF5 are gone, can crash the process. And fairseq's
    data-loading thread (a daemon) may still be reading the next epoch's images when training ends: if the
    interpreter stops it inside HDF5, holding h5py's global lock, the exit deadlocks or aborts ("terminate called
    without an active exception"). So from here on a read raises instead of touching HDF5.
    """
    global _EXITING
    with _OPENING:
        _EXITING = True
    for store in list(_OPEN_STORES):
        store.close()


def reads_in_the_main_thread(batch_iterator_kwargs: dict) -> dict:
    """``task.get_batch_iterator``'s options with fairseq's prefetching thread off when batches load in-process.

    With ``--num-workers 0`` fairseq still loads batches in a daemon thread (``--data-buffer-size``). When
    training ends, that thread may be reading the next images; the interpreter then stops it inside HDF5
    holding h5py's global lock, and the exit hangs, aborts ("terminate called without an active exception")
    or crashes. Loading those batches in the main thread costs little: the GIL serialises the two anyway.
    DataLoader workers (``--num-workers N``) read in their own processes and keep fairseq's buffer.
    """
    if not batch_iterator_kwargs.get("num_workers"):
        batch_iterator_kwargs["data_buffer_size"] = 0
    return batch_iterator_kwargs


class FeatureStore:
    """Lazy, read-only access to a store.

    The HDF5 file is opened on first use in each process (so every DataLoader worker and every
    distributed rank gets its own handle) and only the requested image is read. Every read is
    validated; whatever is wrong (a corrupt file, a checksum mismatch, a missing dataset, a wrong
    type or shape, NaN, an out-of-range box) raises :class:`FeatureStoreError` naming the file.

    ``memory_mb`` > 0 holds each image read (validated, cut) in this process's memory until that much is held,
    so that later epochs take it from there instead of HDF5 (a few milliseconds per image); the images after
    that are read from the file every time. Callers must not modify what :meth:`get` returns.
    """

    def __init__(self, path: str, feature_dim: Optional[int] = None, max_regions: Optional[int] = None,
                 max_tags: Optional[int] = None, memory_mb: float = 0):
        self.path = path
        self.max_regions = max_regions
        self.max_tags = max_tags
        self.memory_bytes = int(memory_mb * 2 ** 20)
        self._held: Dict[str, ImageFeatures] = {}  # key -> image, in this process
        self._held_bytes = 0
        self._file = self._pid = self._identity = None  # this process's handle, opened lazily
        handle = self._open()
        try:
            attrs = {name: handle.attrs[name] for name in handle.attrs}
        except Exception as e:  # h5py raises OSError, KeyError, TypeError... for a corrupt header
            raise FeatureStoreError(f"{path}: cannot read the store's attributes (corrupt?): {e}") from e
        fmt = attrs.get("format")
        if _as_text(fmt) != FORMAT_NAME:
            raise FeatureStoreError(f"{path}: not a vlp_mmt feature store (attribute format={fmt!r})")
        self.version = _int_attr(attrs, "version", path, minimum=1)
        if self.version not in READABLE_VERSIONS:
            raise FeatureStoreError(
                f"{path}: format version {self.version}; this reader reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))} (upgrade vlp_mmt_fairseq?)"
            )
        self.feature_dim = _int_attr(attrs, "feature_dim", path, minimum=1)
        strict = self.version >= 2
        self.stored_max_regions = _int_attr(attrs, "max_regions", path, minimum=0, required=strict)
        extractor = attrs.get("extractor", None if strict else "")
        if _as_text(extractor) is None:
            raise FeatureStoreError(f"{path}: attribute 'extractor' must be a string, got {extractor!r}")
        self.extractor = _as_text(extractor)
        if feature_dim is not None and feature_dim != self.feature_dim:
            raise FeatureStoreError(
                f"{path}: the store holds features of size D = {self.feature_dim}, "
                f"but D = {feature_dim} was expected"
            )

    def _open(self):
        if self._file is None or self._pid != os.getpid():
            with _OPENING:
                return self._open_handle()
        return self._file

    def _open_handle(self):
        """Open this process's handle (the caller holds ``_OPENING``)."""
        if _EXITING:
            raise FeatureStoreError(f"{self.path}: not read: the process is exiting")
        if not os.path.exists(self.path):
            raise FeatureStoreError(f"{self.path}: feature store not found{_unfinished_writer(self.path)}")
        identity = _file_identity(self.path)
        if self._identity is not None and identity != self._identity:
            raise FeatureStoreError(
                f"{self.path}: the store was replaced by another file while in use (a writer published a new "
                "one); restart so that every process reads the same store"
            )
        try:
            self._file = _h5py().File(self.path, "r")
        except Exception as e:  # OSError mostly; h5py raises others for some corruptions
            raise FeatureStoreError(f"{self.path}: {_open_problem(e)}") from e
        self._identity = identity
        self._pid = os.getpid()
        _OPEN_STORES.add(self)
        return self._file

    def close(self) -> None:
        """Close this process's handle (it reopens on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            try:
                self._file.close()
            except Exception:  # already closed by h5py itself
                pass
        self._file, self._pid = None, None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None  # never ship an open handle to another process
        state["_pid"] = None
        state["_held"], state["_held_bytes"] = {}, 0  # each process holds its own
        return state

    def _listing(self, what, action):
        try:
            return action(self._open())
        except FeatureStoreError:
            raise
        except Exception as e:
            raise FeatureStoreError(f"{self.path}: cannot {what} (corrupt store?): {e}") from e

    def __contains__(self, key: str) -> bool:
        return self._listing("look up a key", lambda handle: key in handle)

    def keys(self) -> Iterator[str]:
        return iter(self._listing("list the keys", lambda handle: list(handle.keys())))

    def __len__(self) -> int:
        return self._listing("count the images", len)

    def get(self, key: str, tags_only: bool = False) -> ImageFeatures:
        """Read one image, validated, cut to ``max_regions`` and ``max_tags``.

        ``tags_only`` reads only the tags (the features and boxes come back empty), e.g. to size the
        encoder's input at load time.
        """
        held = self._held.get(key)
        if held is not None:
            return self._tags_only(held.tags, held.tag_scores, held.width, held.height) if tags_only else held
        where = f"{self.path}: image '{key}'"
        handle = self._open()
        try:
            if key not in handle:
                raise FeatureStoreError(f"{where}: key not in the store")
            item = self._read(handle[key], where, tags_only)
        except FeatureStoreError:
            raise
        except Exception as e:  # OSError (checksum mismatch, truncation), KeyError, TypeError, UnicodeError...
            raise FeatureStoreError(f"{where}: unreadable entry ({type(e).__name__}: {e})") from e
        if not tags_only:
            self._hold(key, item)
        return item

    def _hold(self, key: str, item: ImageFeatures) -> None:
        """Keep ``item`` in memory if it fits in what is left of ``memory_mb``."""
        size = item.features.nbytes + item.boxes.nbytes + item.tag_scores.nbytes + sum(len(t) for t in item.tags)
        if self._held_bytes + size <= self.memory_bytes:
            self._held[key] = item
            self._held_bytes += size

    def _tags_only(self, tags: List[str], tag_scores: np.ndarray, width: int, height: int) -> ImageFeatures:
        """An image with tags and no regions, as a ``tags_only`` read gives it."""
        return ImageFeatures(np.zeros((0, self.feature_dim), np.float32), np.zeros((0, 4), np.float32), tags,
                             tag_scores, width, height)

    def _read(self, group, where: str, tags_only: bool = False) -> ImageFeatures:
        h5py = _h5py()
        strict = self.version >= 2
        if not isinstance(group, h5py.Group):
            raise FeatureStoreError(f"{where}: not an image group")
        members = list(group.keys())
        unknown = [m for m in members if m not in IMAGE_DATASETS]
        if strict and unknown:
            raise FeatureStoreError(
                f"{where}: unexpected member '{unknown[0]}' (an image holds {', '.join(IMAGE_DATASETS)})"
            )

        def dataset(name, kinds, ndim, required=True):
            if name not in members:
                if required:
                    raise FeatureStoreError(f"{where}: dataset '{name}' is missing")
                return None
            ds = group[name]
            if not isinstance(ds, h5py.Dataset):
                raise FeatureStoreError(f"{where}: '{name}' is not a dataset")
            is_string = h5py.check_string_dtype(ds.dtype) is not None
            if ("string" in kinds) != is_string or (not is_string and ds.dtype.kind not in kinds):
                raise FeatureStoreError(f"{where}: dataset '{name}' has the wrong type {ds.dtype}")
            if len(ds.shape) != ndim:
                raise FeatureStoreError(f"{where}: dataset '{name}' must have {ndim} dimensions, got shape {ds.shape}")
            if strict and ds.size and not ds.fletcher32:
                raise FeatureStoreError(
                    f"{where}: dataset '{name}' has no checksum (version 2 checksums every dataset)"
                )
            return ds

        feats_ds = dataset("features", "f", 2)
        if strict and feats_ds.dtype not in (np.float16, np.float32):
            raise FeatureStoreError(f"{where}: dataset 'features' must be float16 or float32, got {feats_ds.dtype}")
        boxes_ds = dataset("boxes", "f", 2)
        scores_ds = dataset("scores", "f", 1, required=False)
        tags_ds = dataset("tags", "string", 1, required=False)
        tag_scores_ds = dataset("tag_scores", "f", 1, required=tags_ds is not None)
        for name, ds in (("boxes", boxes_ds), ("scores", scores_ds), ("tag_scores", tag_scores_ds)):
            if strict and ds is not None and ds.dtype != np.float32:
                raise FeatureStoreError(f"{where}: dataset '{name}' must be float32, got {ds.dtype}")
        if tags_ds is None and tag_scores_ds is not None:
            raise FeatureStoreError(f"{where}: 'tag_scores' without 'tags'")
        attrs = {name: group.attrs[name] for name in group.attrs}
        width = _int_attr(attrs, "width", where, minimum=1 if strict else 0, required=strict, default=0)
        height = _int_attr(attrs, "height", where, minimum=1 if strict else 0, required=strict, default=0)

        if tags_only:
            return self._tags_only(*self._read_tags(tags_ds, tag_scores_ds, where), width, height)
        features = np.asarray(feats_ds[()], dtype=np.float32)  # R x D
        boxes = np.asarray(boxes_ds[()], dtype=np.float32)  # R x 4
        validate_regions(features, boxes, self.feature_dim, where)
        if strict and features.shape[0] > self.stored_max_regions:
            raise FeatureStoreError(f"{where}: {features.shape[0]} regions, more than the store's "
                                    f"max_regions = {self.stored_max_regions}")
        order = np.arange(features.shape[0])
        if scores_ds is not None:
            scores = np.asarray(scores_ds[()], dtype=np.float32)
            if scores.shape != (features.shape[0],):
                raise FeatureStoreError(f"{where}: scores must be [R] = [{features.shape[0]}], got {scores.shape}")
            if not np.isfinite(scores).all():
                raise FeatureStoreError(f"{where}: scores contain NaN or inf")
            order = np.argsort(-scores, kind="stable")
        if self.max_regions is not None:
            order = order[: self.max_regions]
        features, boxes = features[order], boxes[order]

        tags, tag_scores = self._read_tags(tags_ds, tag_scores_ds, where)
        return ImageFeatures(features, boxes, tags, tag_scores, width, height)

    def _read_tags(self, tags_ds, tag_scores_ds, where: str):
        """The tags (best first, cut to ``max_tags``) and their scores."""
        tags, tag_scores = [], np.zeros(0, np.float32)
        if tags_ds is not None:
            tags = [_decode_tag(t, where) for t in tags_ds[()]]
            tag_scores = np.asarray(tag_scores_ds[()], dtype=np.float32)
            if tag_scores.shape != (len(tags),):
                raise FeatureStoreError(f"{where}: {len(tags)} tags but tag_scores of shape {tag_scores.shape}")
            validate_tags(tags, tag_scores, where)
            tag_order = np.argsort(-tag_scores, kind="stable")
            if self.max_tags is not None:
                tag_order = tag_order[: self.max_tags]
            tags = [tags[i] for i in tag_order]
            tag_scores = tag_scores[tag_order]
        return tags, tag_scores


def _as_text(value) -> Optional[str]:
    """A string attribute's text (h5py gives str, bytes or numpy bytes), or None if it is no string."""
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _int_attr(attrs, name: str, where: str, minimum: int, required: bool = True, default: int = 0) -> int:
    """An integer scalar attribute, checked."""
    if name not in attrs:
        if required:
            raise FeatureStoreError(f"{where}: attribute '{name}' is missing")
        return default
    value = np.asarray(attrs[name])
    if value.shape != () or value.dtype.kind not in "iu" or int(value) < minimum:
        raise FeatureStoreError(f"{where}: attribute '{name}' must be an integer >= {minimum}, got {attrs[name]!r}")
    return int(value)


def _decode_tag(value, where: str) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise FeatureStoreError(f"{where}: a tag is not valid utf-8: {bytes(value)!r}") from None
    return str(value)


def _file_identity(path: str):
    """What tells one file at ``path`` from a replacement (device, inode, size, modification time)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _open_problem(error: Exception) -> str:
    """Why HDF5 would not open a store, in words."""
    text = str(error)
    if "unable to lock file" in text or "already open for write" in text:
        return ("the store is being written by another process (HDF5 holds it open for writing); wait until the "
                f"writer has finished, or if none is running, clear the flag with h5clear -s ({text})")
    if "truncated file" in text:
        return f"the store is truncated (an interrupted copy or write?): {text}"
    return f"cannot read the feature store (corrupt or not HDF5): {text}"


def _unfinished_writer(path: str) -> str:
    """A hint when a writer's unfinished output of ``path`` exists."""
    unfinished = [p for p in [partial_path(path)] if os.path.exists(p)]
    directory = os.path.dirname(os.path.abspath(path))
    unfinished += sorted(glob.glob(os.path.join(glob.escape(directory), "." + glob.escape(os.path.basename(path))
                                                + ".*.tmp")))
    if not unfinished:
        return ""
    return f" (unfinished output {unfinished[0]} exists: a writer is still writing it, or was interrupted)"


# --------------------------------------------------------------------------- image index


def read_image_index(path: str) -> np.ndarray:
    """Store keys of an image index, one per line, as a compact numpy byte-string array.

    ``.npy`` files (written by :func:`write_image_index_npy`) are memory-mapped, so an index of
    millions of lines costs no resident memory until it is read; text files are parsed with
    :func:`image_key_from_line`.
    """
    if not os.path.exists(path):
        raise FeatureStoreError(f"{path}: image index not found")
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r")
    with open(path, encoding="utf-8") as f:
        keys = []
        for lineno, line in enumerate(f, 1):
            key = image_key_from_line(line)
            if not key:
                raise FeatureStoreError(f"{path}:{lineno}: empty image-index line")
            keys.append(key.encode("utf-8"))
    return np.array(keys, dtype=bytes)


def find_image_index(directory: str, split: str) -> str:
    """The image index of ``split`` in ``directory``: ``{split}.img.npy``, else ``{split}.img.txt``."""
    for ext in ("npy", "txt"):
        path = os.path.join(directory, f"{split}.img.{ext}")
        if os.path.exists(path):
            return path
    raise FeatureStoreError(f"{directory}: no image index {split}.img.npy or {split}.img.txt")


def read_split_image_keys(directory: str, split: str, count: int, counted: str) -> np.ndarray:
    """The image key of each of a split's ``count`` lines, from its image index in ``directory``.

    ``counted`` says what was counted in the error when the numbers differ ("split 'valid' has 1014 sentences").
    """
    index_path = find_image_index(directory, split)
    keys = read_image_index(index_path)
    if len(keys) != count:
        raise FeatureStoreError(f"{index_path}: the image index has {len(keys)} lines but {counted}")
    return keys


def write_image_index_npy(txt_path: str, npy_path: str) -> None:
    """Convert a text image index to the memory-mappable ``.npy`` form, atomically."""
    keys = read_image_index(txt_path)
    with atomic_output(npy_path, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, keys)
