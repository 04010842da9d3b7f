"""Synthetic feature stores with planted structure, for tests and demos.

Every *concept* name has a fixed unit-norm prototype vector (a function of the name, the feature
size and the seed only). An image's concepts are planted in distinct regions, at random
positions: region = prototype + noise, with a high score (0.7 to 1.0). The other regions are
random unit-scale vectors unrelated to any concept, with low scores (0.01 to 0.3). So a model can
only learn an image's concepts by looking at its features: tags are written only where the
caller gives them, and may be chosen not to reveal the concepts.

Everything about one image (features, boxes, scores, size) depends on its key and the seed only
(given numpy's generator algorithms), never on the other keys or their order. With ``encode_key``
the first dimensions of *every* region hold a code of the key (see :func:`key_code`), so the
right features can be recognised after any region selection or reordering.
"""
import hashlib
from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
from tqdm import tqdm

from vlp_mmt_fairseq.data.feature_store import FeatureStoreError, FeatureStoreWriter

#: dimensions at the start of each region that hold the key code when ``encode_key`` is set
KEY_CODE_DIMS = 16
_KEY_CODE_LEVELS = 16  # 4 bits per dimension: 64 bits per key
IMAGE_SIZES = ((640, 480), (500, 375), (480, 640), (500, 333), (640, 427))


def _generator(*parts) -> np.random.Generator:
    """A random generator seeded by a stable hash of ``parts`` (not by Python's salted ``hash``)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def concept_prototype(concept: str, feature_dim: int, seed: int = 0) -> np.ndarray:
    """The fixed unit-norm float32 prototype of ``concept``."""
    vector = _generator("concept", seed, feature_dim, concept).standard_normal(feature_dim)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _key_code_dims(feature_dim: int) -> int:
    dims = min(KEY_CODE_DIMS, feature_dim // 4)
    if dims < 1:
        raise ValueError(f"encode_key needs feature_dim >= 4, got {feature_dim}")
    return dims


def key_code(key: str, feature_dim: int) -> np.ndarray:
    """The code of ``key`` that ``encode_key`` writes into the first dimensions of every region.

    ``min(16, feature_dim // 4)`` values, each one of 16 levels in [-1, 1] / sqrt(feature_dim), so
    the code has the scale of the features; its length is ``len(key_code(key, feature_dim))``.
    """
    dims = _key_code_dims(feature_dim)
    digest = hashlib.sha256(("key\x1f" + key).encode("utf-8")).digest()
    levels = np.frombuffer(digest, dtype=np.uint8)[:dims] % _KEY_CODE_LEVELS
    return ((levels - (_KEY_CODE_LEVELS - 1) / 2) / ((_KEY_CODE_LEVELS - 1) / 2) / np.sqrt(feature_dim)).astype(
        np.float32
    )


def has_key_code(features: np.ndarray, key: str) -> bool:
    """Whether every region of ``features`` ([R, D]) carries the code of ``key``."""
    features = np.asarray(features, dtype=np.float32)
    code = key_code(key, features.shape[1])
    half_step = 1.0 / ((_KEY_CODE_LEVELS - 1) / 2) / np.sqrt(features.shape[1]) / 2
    return bool(np.all(np.abs(features[:, : len(code)] - code) < half_step))


def nearest_concept(vector: np.ndarray, concepts: Sequence[str], seed: int = 0) -> str:
    """The concept among ``concepts`` whose prototype has the highest cosine with ``vector``."""
    vector = np.asarray(vector, dtype=np.float32)
    prototypes = np.stack([concept_prototype(c, len(vector), seed) for c in concepts])
    return concepts[int(np.argmax(prototypes @ vector / (np.linalg.norm(vector) + 1e-12)))]


def _random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` normalised boxes x1 < x2, y1 < y2 in [0, 1], each at least 0.05 wide and high."""
    size = rng.uniform(0.05, 1.0, size=(count, 2))
    start = rng.uniform(0.0, 1.0, size=(count, 2)) * (1.0 - size)
    return np.concatenate([start, start + size], axis=1).astype(np.float32)


def synthetic_image(
    key: str,
    concepts: Sequence[str] = (),
    feature_dim: int = 64,
    num_regions: int = 10,
    seed: int = 0,
    noise: float = 0.1,
    encode_key: bool = False,
    prototypes: Optional[Dict[str, np.ndarray]] = None,
) -> dict:
    """One image's regions: ``features`` [R, D], ``boxes`` [R, 4], ``scores`` [R], ``width``, ``height``.

    ``noise`` is the expected norm of the perturbation added to a (unit-norm) prototype.
    ``prototypes`` is an optional cache (concept -> prototype) shared across images.
    """
    concepts = list(dict.fromkeys(concepts))
    if len(concepts) > num_regions:
        raise FeatureStoreError(f"image '{key}': {len(concepts)} concepts do not fit in {num_regions} regions")
    rng = _generator("image", seed, key)
    scale = 1.0 / np.sqrt(feature_dim)
    features = rng.standard_normal((num_regions, feature_dim)) * scale  # background: unit-scale noise
    scores = rng.uniform(0.01, 0.3, size=num_regions)
    positions = rng.permutation(num_regions)[: len(concepts)]
    for position, concept in zip(positions, concepts):
        if prototypes is None:
            prototype = concept_prototype(concept, feature_dim, seed)
        else:
            prototype = prototypes.get(concept)
            if prototype is None:
                prototype = prototypes[concept] = concept_prototype(concept, feature_dim, seed)
        features[position] = prototype + noise * features[position]
        scores[position] = rng.uniform(0.7, 1.0)
    if encode_key:
        code = key_code(key, feature_dim)
        features[:, : len(code)] = code
    width, height = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    return {
        "features": features.astype(np.float32),
        "boxes": _random_boxes(rng, num_regions),
        "scores": scores.astype(np.float32),
        "width": width,
        "height": height,
    }


def _tag_scores(count: int) -> np.ndarray:
    """Decreasing scores, so the reader keeps the caller's tag order."""
    return np.linspace(0.95, 0.5, num=count, dtype=np.float32) if count > 1 else np.full(count, 0.95, np.float32)


def write_synthetic_store(
    path: str,
    keys: Iterable[str],
    concepts_per_key: Optional[Mapping[str, Sequence[str]]] = None,
    tags_per_key: Optional[Mapping[str, Sequence[str]]] = None,
    feature_dim: int = 64,
    num_regions: int = 10,
    seed: int = 0,
    noise: float = 0.1,
    encode_key: bool = False,
    dtype: str = "float16",
    progress: bool = False,
) -> int:
    """Write a synthetic store at ``path`` (atomically, one image at a time); return the image count.

    ``concepts_per_key`` plants concepts (images without an entry get none). ``tags_per_key``
    gives the tags to store, with scores decreasing in the given order; when it is given, every
    image gets a tags dataset (empty for keys without an entry), otherwise none does.
    """
    concepts_per_key = concepts_per_key or {}
    extractor = f"synthetic (seed={seed}, noise={noise}, regions={num_regions}, encode_key={encode_key})"
    prototypes: Dict[str, np.ndarray] = {}
    count = 0
    with FeatureStoreWriter(path, feature_dim=feature_dim, extractor=extractor, dtype=dtype) as writer:
        for key in tqdm(keys, desc="synthetic", unit="img", disable=not progress):
            image = synthetic_image(
                key, concepts_per_key.get(key, ()), feature_dim, num_regions, seed, noise, encode_key, prototypes
            )
            tags = None if tags_per_key is None else list(tags_per_key.get(key, ()))
            writer.add(
                key,
                image["features"],
                image["boxes"],
                width=image["width"],
                height=image["height"],
                scores=image["scores"],
                tags=tags,
                tag_scores=None if tags is None else _tag_scores(len(tags)),
            )
            count += 1
    return count
