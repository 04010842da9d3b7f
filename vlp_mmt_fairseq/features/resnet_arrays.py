"""The Multi30K/WMT organisers' ResNet-50 feature arrays, as a feature store keyed by image.

The organisers ship one ``.npy`` array per split with one row per *line* of the split, in the order of the
split's image list: ``train-resnet50-avgpool.npy`` [N, 2048] (the pooled vector) or
``train-resnet50-res4frelu.npy`` [N, 1024, 14, 14] (the res4f grid, channels first). The store holds each image
once: lines that name the same image must hold equal features (an error otherwise). A pooled vector becomes one
region covering the whole image; a grid's cells become regions, row by row, each with its box and, as its score,
the L2 norm of its feature (so ``--max-regions`` keeps the most activated cells). Arrays are memory-mapped and
read one line at a time: the train grid is about 23 GB in float32.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from vlp_mmt_fairseq.data.feature_store import FeatureStoreError, FeatureStoreWriter, image_key_from_line
from vlp_mmt_fairseq.errors import PluginError
from vlp_mmt_fairseq.features.extractor import grid_boxes

#: the side of the square image the organisers' ResNet-50 saw (a 14 x 14 res4f grid at stride 16)
NETWORK_INPUT = 224


class ResNetArrayError(PluginError, ValueError):
    """Unusable organisers' arrays or image lists; the message names the file and line."""


def default_extractor(shape: Sequence[int]) -> str:
    """The store's ``extractor`` attribute for an array of ``shape``."""
    if len(shape) == 2:
        return f"ResNet-50 avgpool D={shape[1]} (Multi30K/WMT organisers' features)"
    return f"ResNet-50 res4f_relu {shape[2]}x{shape[3]} D={shape[1]} (Multi30K/WMT organisers' features)"


def open_array(path: str) -> np.ndarray:
    """The array at ``path``, memory-mapped, checked to be [N, D] or [N, C, H, W] floats."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ResNetArrayError(f"{path}: feature array not found") from None
    except (OSError, ValueError) as e:
        raise ResNetArrayError(f"{path}: not a readable .npy array ({e})") from None
    if array.ndim not in (2, 4) or array.dtype.kind != "f" or array.shape[0] == 0 or 0 in array.shape:
        raise ResNetArrayError(f"{path}: expected a float array [N, D] (avgpool) or [N, C, H, W] (res4frelu), "
                               f"got {array.dtype} {tuple(array.shape)}")
    return array


def read_image_list(path: str) -> List[str]:
    """The image of each line of a split's image list, as store keys."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ResNetArrayError(f"{path}: cannot read the image list ({e})") from None
    keys = []
    for lineno, line in enumerate(lines, 1):
        key = image_key_from_line(line)
        if not key:
            raise ResNetArrayError(f"{path}:{lineno}: empty image-list line")
        keys.append(key)
    return keys


def _regions(row: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """One line's features as regions: (features [R, D], boxes [R, 4], scores [R] or None)."""
    row = np.asarray(row, dtype=np.float32)
    if row.ndim == 1:  # D: one region, the whole image
        return row[None, :], np.array([[0.0, 0.0, 1.0, 1.0]], np.float32), None
    channels, rows, cols = row.shape  # C x H x W
    features = row.reshape(channels, rows * cols).T.copy()  # H*W x C, row by row
    return features, grid_boxes(rows, cols), np.linalg.norm(features, axis=1).astype(np.float32)


def _image_sizes(image_dir: Optional[str], shape: Sequence[int]):
    """A function key -> (width, height): the real image's, with ``image_dir``, else the network's input."""
    side = NETWORK_INPUT if len(shape) == 2 else 16 * shape[2]
    if image_dir is None:
        return lambda key: (side, side)
    from vlp_mmt_fairseq.features.image_files import IMAGE_EXTENSIONS, _pil

    Image, _ = _pil()
    names = {os.path.splitext(n)[0]: n for n in sorted(os.listdir(image_dir)) if n.lower().endswith(IMAGE_EXTENSIONS)}

    def size(key):
        if key not in names:
            raise ResNetArrayError(f"{image_dir}: no image file for '{key}'")
        with Image.open(os.path.join(image_dir, names[key])) as image:  # reads the header only
            return image.size

    return size


def convert_resnet_arrays(
    pairs: Sequence[Tuple[str, str]],
    output: str,
    extractor: Optional[str] = None,
    dtype: str = "float16",
    image_dir: Optional[str] = None,
    atol: float = 0.0,
    progress: bool = True,
) -> int:
    """Write the images of ``pairs`` ((array, image list) per split) to the store ``output``; return how many.

    All arrays must have the same layout. Lines (of any split) that name the same image must hold features
    equal within ``atol``.
    """
    from tqdm import tqdm

    arrays = []
    for array_path, list_path in pairs:
        array, keys = open_array(array_path), read_image_list(list_path)
        if array.shape[0] != len(keys):
            raise ResNetArrayError(f"{array_path}: {array.shape[0]} rows, but the image list {list_path} has "
                                   f"{len(keys)} lines; they must be of the same split")
        if arrays and array.shape[1:] != arrays[0][1].shape[1:]:
            raise ResNetArrayError(f"{array_path}: rows of shape {array.shape[1:]}, but {arrays[0][0]} has "
                                   f"{arrays[0][1].shape[1:]}; convert one layout per store")
        arrays.append((array_path, array, keys))
    shape = arrays[0][1].shape
    sizes = _image_sizes(image_dir, shape)
    first: Dict[str, Tuple[str, np.ndarray, int]] = {}  # key -> where it was written first
    total = sum(len(keys) for _, _, keys in arrays)
    count = 0
    with FeatureStoreWriter(output, feature_dim=shape[1], extractor=extractor or default_extractor(shape),
                            dtype=dtype) as writer, tqdm(total=total, desc="resnet", unit="line",
                                                         disable=not progress) as bar:
        for array_path, array, keys in arrays:
            for line, key in enumerate(keys):
                bar.update(1)
                seen = first.get(key)
                if seen is not None:
                    _check_equal(array_path, array, line, key, seen, atol)
                    continue
                features, boxes, scores = _regions(array[line])
                width, height = sizes(key)
                try:
                    writer.add(key, features, boxes, width=width, height=height, scores=scores)
                except FeatureStoreError as e:
                    raise ResNetArrayError(f"{array_path}: line {line + 1}: {e}") from e
                first[key] = (array_path, array, line)
                count += 1
    return count


def _check_equal(array_path: str, array: np.ndarray, line: int, key: str, seen, atol: float) -> None:
    first_path, first_array, first_line = seen
    a = np.asarray(first_array[first_line], dtype=np.float32)
    b = np.asarray(array[line], dtype=np.float32)
    difference = float(np.abs(a - b).max())
    if not difference <= atol:  # also catches NaN
        raise ResNetArrayError(
            f"{array_path}: line {line + 1} and {first_path}: line {first_line + 1} both name image '{key}' but hold "
            f"different features (largest difference {difference:g}; --atol allows {atol:g})"
        )
