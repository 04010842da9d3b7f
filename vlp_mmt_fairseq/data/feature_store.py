"""The HDF5 image-feature store: its one definition (writer, lazy reader, validation).

Format (documented for users in ``docs/feature_store.md``)::

    /                       attrs: format="vlp_mmt_features", version=1,
                                   feature_dim=D, max_regions=R_max, extractor=<str>
    /<image key>/           one group per image, attrs: width, height (pixels)
        features   [R, D]   float16 or float32 region features
        boxes      [R, 4]   float32, (x1, y1, x2, y2) divided by (w, h, w, h): in [0, 1]
        scores     [R]      float32, optional: region confidence; the reader keeps the
                            ``max_regions`` highest-scoring regions (store order if absent)
        tags       [K]      utf-8 strings, optional: object tags of the image
        tag_scores [K]      float32, optional (required with ``tags``)

An image *index* maps line i of a split to an image key (see :func:`image_key_from_line`).
"""
import atexit
import contextlib
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence

import numpy as np

FORMAT_NAME = "vlp_mmt_features"
FORMAT_VERSION = 1


class FeatureStoreError(ValueError):
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


def _publish(tmp: str, path: str) -> None:
    """Rename ``tmp`` onto ``path`` with the permissions of a normally created file (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix + ".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        _publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def _write_array(group_id, name: str, array: np.ndarray) -> None:
    """Create dataset ``name`` holding ``array`` in a group (h5py's low-level API: twice as fast)."""
    h5py = _h5py()
    array = np.ascontiguousarray(array)
    dataset = h5py.h5d.create(
        group_id, name.encode("utf-8"), h5py.h5t.py_create(array.dtype), h5py.h5s.create_simple(array.shape)
    )
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, array)


def _write_int_attr(group_id, name: str, value: int) -> None:
    """Attach the integer attribute ``name`` (int64 scalar, as ``group.attrs[name] = value`` does)."""
    h5py = _h5py()
    value = np.array(int(value), dtype=np.int64)
    scalar = h5py.h5s.create(h5py.h5s.SCALAR)
    h5py.h5a.create(group_id, name.encode("utf-8"), h5py.h5t.py_create(value.dtype), scalar).write(value)


class FeatureStoreWriter:
    """Writes a store atomically: into a temporary file that is renamed on :meth:`close`.

    Use as a context manager; on an exception the temporary file is removed and nothing is left
    at ``path``.
    """

    def __init__(self, path: str, feature_dim: int, extractor: str, dtype: str = "float16"):
        self.path = path
        self.feature_dim = int(feature_dim)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float16, np.float32):
            raise ValueError(f"{path}: feature dtype must be float16 or float32, got {dtype}")
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".h5.tmp", dir=directory)
        os.close(fd)
        self._file = _h5py().File(self._tmp, "w")
        self._file.attrs["format"] = FORMAT_NAME
        self._file.attrs["version"] = FORMAT_VERSION
        self._file.attrs["feature_dim"] = self.feature_dim
        self._file.attrs["extractor"] = extractor
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
        """Add one image. ``boxes`` must already be normalised to [0, 1]."""
        where = f"{self.path}: image '{key}'"
        if not key or "/" in key:
            raise FeatureStoreError(f"{where}: a key must be non-empty and contain no '/'")
        features = np.asarray(features, dtype=np.float32)
        boxes = np.asarray(boxes, dtype=np.float32)
        validate_regions(features, boxes, self.feature_dim, where)
        if np.abs(features).max() > np.finfo(self.dtype).max:
            raise FeatureStoreError(f"{where}: features exceed the {self.dtype} range; write float32")
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float32)
            if scores.shape != (features.shape[0],):
                raise FeatureStoreError(f"{where}: scores must be [R], got {tuple(scores.shape)}")
        if tags is not None:
            tags = [str(t) for t in tags]
            tag_scores = np.asarray(tag_scores if tag_scores is not None else np.ones(len(tags)), np.float32)
            if tag_scores.shape != (len(tags),):
                raise FeatureStoreError(f"{where}: {len(tags)} tags but {tag_scores.shape} tag scores")
        # everything is checked before the group exists, so a rejected image leaves no trace
        h5py = _h5py()
        try:
            group_id = h5py.h5g.create(self._file.id, key.encode("utf-8"), lcpl=self._utf8_names)
        except ValueError as e:
            problem = "duplicate key" if key in self._file else f"cannot create the group ({e})"
            raise FeatureStoreError(f"{where}: {problem}") from None
        _write_int_attr(group_id, "width", width)
        _write_int_attr(group_id, "height", height)
        _write_array(group_id, "features", features.astype(self.dtype))
        _write_array(group_id, "boxes", boxes)
        if scores is not None:
            _write_array(group_id, "scores", scores)
        if tags is not None:
            self._file[key].create_dataset("tags", data=tags, dtype=h5py.string_dtype("utf-8"))
            _write_array(group_id, "tag_scores", tag_scores)
        self._max_regions = max(self._max_regions, features.shape[0])

    def close(self, ok: bool = True) -> None:
        """Finish the store: rename it into place if ``ok``, else delete the temporary file."""
        if self._file is None:
            return
        self._file.attrs["max_regions"] = self._max_regions
        self._file.close()
        self._file = None
        if ok:
            _publish(self._tmp, self.path)
        elif os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(ok=exc_type is None)
        return False


# --------------------------------------------------------------------------- reading


_OPEN_STORES = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:
    """Close every store's HDF5 handle before the interpreter tears down (h5py objects finalized
    during shutdown, after parts of HDF5 are gone, can crash the process on exit)."""
    for store in list(_OPEN_STORES):
        store.close()


class FeatureStore:
    """Lazy, read-only access to a store.

    The HDF5 file is opened on first use in each process (so every DataLoader worker and every
    distributed rank gets its own handle) and only the requested image is read.
    """

    def __init__(self, path: str, feature_dim: Optional[int] = None, max_regions: Optional[int] = None,
                 max_tags: Optional[int] = None):
        self.path = path
        self.max_regions = max_regions
        self.max_tags = max_tags
        self._file = None
        self._pid = None
        attrs = self._open().attrs
        if attrs.get("format") != FORMAT_NAME:
            raise FeatureStoreError(
                f"{path}: not a vlp_mmt feature store (attribute format={attrs.get('format')!r})"
            )
        self.feature_dim = int(attrs["feature_dim"])
        self.extractor = str(attrs.get("extractor", ""))
        if feature_dim is not None and feature_dim != self.feature_dim:
            raise FeatureStoreError(
                f"{path}: the store holds features of size D = {self.feature_dim}, "
                f"but D = {feature_dim} was expected"
            )

    def _open(self):
        if self._file is None or self._pid != os.getpid():
            if not os.path.exists(self.path):
                raise FeatureStoreError(f"{self.path}: feature store not found")
            try:
                self._file = _h5py().File(self.path, "r")
            except OSError as e:
                raise FeatureStoreError(f"{self.path}: cannot read the feature store (corrupt or not HDF5): {e}") from e
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
        return state

    def __contains__(self, key: str) -> bool:
        return key in self._open()

    def keys(self) -> Iterator[str]:
        return iter(self._open().keys())

    def __len__(self) -> int:
        return len(self._open())

    def get(self, key: str) -> ImageFeatures:
        """Read one image, validated, cut to ``max_regions`` and ``max_tags``."""
        where = f"{self.path}: image '{key}'"
        handle = self._open()
        try:
            group = handle[key]
        except KeyError:
            raise FeatureStoreError(f"{where}: key not in the store") from None
        try:
            boxes_ds, feats_ds = group["boxes"], group["features"]
            order = None
            if "scores" in group:
                scores = group["scores"][()]
                order = np.argsort(-scores, kind="stable")
                if self.max_regions is not None:
                    order = order[: self.max_regions]
            if order is None:
                n = feats_ds.shape[0] if self.max_regions is None else min(self.max_regions, feats_ds.shape[0])
                features = feats_ds[:n]
                boxes = boxes_ds[:n]
            else:
                # h5py fancy indexing wants increasing indices; read the rows, then reorder
                rows = np.sort(order)
                pos = np.searchsorted(rows, order)
                features = feats_ds[rows][pos] if len(rows) else feats_ds[:0]
                boxes = boxes_ds[rows][pos] if len(rows) else boxes_ds[:0]
            tags, tag_scores = [], np.zeros(0, np.float32)
            if "tags" in group:
                tags = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in group["tags"][()]]
                tag_scores = group["tag_scores"][()].astype(np.float32)
                tag_order = np.argsort(-tag_scores, kind="stable")
                if self.max_tags is not None:
                    tag_order = tag_order[: self.max_tags]
                tags = [tags[i] for i in tag_order]
                tag_scores = tag_scores[tag_order]
            width, height = int(group.attrs.get("width", 0)), int(group.attrs.get("height", 0))
        except (KeyError, OSError) as e:
            raise FeatureStoreError(f"{where}: unreadable entry ({e})") from e
        features = np.asarray(features, dtype=np.float32)
        boxes = np.asarray(boxes, dtype=np.float32)
        validate_regions(features, boxes, self.feature_dim, where)
        return ImageFeatures(features, boxes, tags, tag_scores, width, height)


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


def write_image_index_npy(txt_path: str, npy_path: str) -> None:
    """Convert a text image index to the memory-mappable ``.npy`` form, atomically."""
    keys = read_image_index(txt_path)
    with atomic_output(npy_path, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, keys)
