"""The image-feature extractor interface: how ``vlp-mmt-extract-features`` turns images into store entries.

An extractor has two halves, so that decoding can run in DataLoader worker processes and the network
in the main one:

- :meth:`ImageFeatureExtractor.preprocess` maps one RGB ``PIL.Image`` to a tensor (runs in the workers, so it
  must not touch the network);
- :meth:`ImageFeatureExtractor.extract` maps a batch of those tensors to one :class:`ExtractedRegions` per image.

Its :attr:`~ImageFeatureExtractor.name` becomes the store's ``extractor`` attribute, which a trained model
records; keep it stable for the same weights and settings. Built-in extractors are named by
:func:`build_extractor`; any other is given as ``module:factory`` (``factory(**options)`` returns an extractor).
"""
import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from vlp_mmt_fairseq.errors import PluginError


@dataclass
class ExtractedRegions:
    """What an extractor found in one image: regions, normalised boxes and optional scores and tags."""

    features: np.ndarray  # R x D
    boxes: np.ndarray  # R x 4, (x1, y1, x2, y2) in [0, 1] of the upright image
    scores: Optional[np.ndarray] = None  # R, region confidence (the reader keeps the best --max-regions)
    tags: List[str] = field(default_factory=list)
    tag_scores: Optional[np.ndarray] = None  # K


class ImageFeatureExtractor:
    """Base class of the extractors; see the module docstring."""

    #: the store's ``extractor`` attribute: names the network, its weights and the settings
    name: str = ""
    #: D, the size of one region feature
    feature_dim: int = 0

    def preprocess(self, image):
        """One upright RGB ``PIL.Image`` -> the tensor that :meth:`extract` takes (any shape, same in a batch)."""
        raise NotImplementedError

    def extract(self, batch, sizes: Sequence[tuple]) -> List[ExtractedRegions]:
        """A stacked batch of :meth:`preprocess` outputs, and each image's (width, height) -> its regions."""
        raise NotImplementedError


def grid_boxes(rows: int, cols: int) -> np.ndarray:
    """The normalised (x1, y1, x2, y2) boxes of a rows x cols grid of cells, row by row: [rows * cols, 4]."""
    y, x = np.meshgrid(np.arange(rows, dtype=np.float32), np.arange(cols, dtype=np.float32), indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    return np.stack([x / cols, y / rows, (x + 1) / cols, (y + 1) / rows], axis=1).astype(np.float32)


#: built-in extractors: name -> "module:factory"
BUILTIN_EXTRACTORS: Dict[str, str] = {
    "efficientnet-lite0": "vlp_mmt_fairseq.features.efficientnet_lite:EfficientNetLiteExtractor",
}
DEFAULT_EXTRACTOR = "efficientnet-lite0"


class ExtractorError(PluginError, ValueError):
    """An extractor that cannot be found or built; the message names it."""


def _load_factory(spec: str) -> Callable[..., ImageFeatureExtractor]:
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ExtractorError(f"extractor '{spec}': give a built-in name ({', '.join(BUILTIN_EXTRACTORS)}) "
                             "or module:factory")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise ExtractorError(f"extractor '{spec}': {module_name} not found")
            module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(module_name))[0],
                                                                 module_name)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise ExtractorError(f"extractor '{spec}': cannot import {module_name} ({e})") from e
    factory = getattr(module, attr, None)
    if factory is None:
        raise ExtractorError(f"extractor '{spec}': {module_name} has no {attr}")
    return factory


def build_extractor(spec: str = DEFAULT_EXTRACTOR, **options) -> ImageFeatureExtractor:
    """The extractor named ``spec`` (a built-in name, ``module:factory`` or ``file.py:factory``), built with
    ``options`` (e.g. ``image_size=320`` for the built-in one)."""
    extractor = _load_factory(BUILTIN_EXTRACTORS.get(spec, spec))(**options)
    if not isinstance(extractor, ImageFeatureExtractor):
        raise ExtractorError(f"extractor '{spec}' built a {type(extractor).__name__}, not an ImageFeatureExtractor")
    if not extractor.name or extractor.feature_dim <= 0:
        raise ExtractorError(f"extractor '{spec}' must set name and feature_dim")
    return extractor


def builtin_from_record(record: str) -> Optional[ImageFeatureExtractor]:
    """The built-in extractor that wrote a store whose ``extractor`` attribute is ``record``, or None.

    Built-in names read ``<name> key=value ...``; the values are the options that rebuild it.
    """
    parts = record.split()
    if not parts or parts[0] not in BUILTIN_EXTRACTORS:
        return None
    options = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep:
            return None
        options[key] = int(value) if value.isdigit() else value
    return build_extractor(parts[0], **options)
