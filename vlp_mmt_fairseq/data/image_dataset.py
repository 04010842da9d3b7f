"""ImageDataset: the image of each line of a split, read lazily from the feature store."""
import functools
import logging
from typing import Callable, List, Optional

import numpy as np
import torch
from fairseq.data import FairseqDataset

from vlp_mmt_fairseq.data.feature_store import FeatureStore

logger = logging.getLogger(__name__)


class ImageDataset(FairseqDataset):
    """Line i -> (features [R, D], boxes [R, 4], tag ids) of the image that line i's index names.

    Args:
        keys: store key of each line (an image index, possibly memory-mapped)
        store: the lazy feature store
        tag_encoder: maps one tag string to WordPiece ids; ``None`` drops the tags
        sep: id appended after the tags (BERT's ``[SEP]``)
        pad: padding id of the tag tokens
        regions: ``False`` drops the regions (tags only: every image has 0 regions)
    """

    def __init__(self, keys: np.ndarray, store: FeatureStore, tag_encoder: Optional[Callable[[str], List[int]]],
                 sep: int, pad: int, regions: bool = True):
        super().__init__()
        self.regions = regions
        self.keys = keys
        self.store = store
        self.tag_encoder = functools.lru_cache(maxsize=65536)(tag_encoder) if tag_encoder else None
        self.sep, self.pad = sep, pad

    def __len__(self):
        return len(self.keys)

    def key(self, index: int) -> str:
        key = self.keys[index]
        return key.decode("utf-8") if isinstance(key, (bytes, np.bytes_)) else str(key)

    def __getitem__(self, index):
        image = self.store.get(self.key(index))
        tags, sizes = self.tag_ids(image.tags)
        keep = None if self.regions else 0
        return {
            "features": torch.from_numpy(image.features[:keep]),  # R x D
            "boxes": torch.from_numpy(image.boxes[:keep]),  # R x 4
            "tags": torch.tensor(tags, dtype=torch.long),  # T: the tags' WordPieces, best tag first, then [SEP]
            "tag_sizes": torch.tensor(sizes, dtype=torch.long),  # K: WordPieces per tag
        }

    def tag_ids(self, tags: List[str]):
        """The WordPiece ids of ``tags`` followed by ``[SEP]`` (none without tags), and each tag's count."""
        if self.tag_encoder is None or not tags:
            return [], []
        ids, sizes = [], []
        for tag in tags:
            pieces = self.tag_encoder(tag)
            ids.extend(pieces)
            sizes.append(len(pieces))
        return ids + [self.sep], sizes

    def tag_positions(self) -> np.ndarray:
        """Positions each line's tags take in BERT's input (WordPieces and ``[SEP]``), read at load time.

        Reads the tags only (not the features), once per distinct image.
        """
        if self.tag_encoder is None:
            return np.zeros(len(self), dtype=np.int64)
        per_key = {}
        counts = np.zeros(len(self), dtype=np.int64)
        for index in range(len(self)):
            key = self.key(index)
            if key not in per_key:
                per_key[key] = len(self.tag_ids(self.store.get(key, tags_only=True).tags)[0])
            counts[index] = per_key[key]
        return counts

    def collater(self, samples):
        """Pad regions to the batch's largest R (with a region mask) and tags to the longest."""
        bsz = len(samples)
        max_r = max(s["features"].size(0) for s in samples)
        dim = samples[0]["features"].size(1)
        max_t = max(s["tags"].numel() for s in samples)
        features = torch.zeros(bsz, max_r, dim)  # B x R x D
        boxes = torch.zeros(bsz, max_r, 4)  # B x R x 4
        mask = torch.zeros(bsz, max_r, dtype=torch.bool)  # B x R, True = a real region
        tags = torch.full((bsz, max_t), self.pad, dtype=torch.long)  # B x T
        for i, s in enumerate(samples):
            r = s["features"].size(0)
            features[i, :r], boxes[i, :r], mask[i, :r] = s["features"], s["boxes"], True
            tags[i, : s["tags"].numel()] = s["tags"]
        return {"region_features": features, "region_boxes": boxes, "region_mask": mask, "tag_tokens": tags}

    def num_tokens(self, index):
        return 0

    def size(self, index):
        return 0


def fit_tags(image: dict, budget: int) -> dict:
    """``image`` (an item of :class:`ImageDataset`) with its lowest-scored tags dropped until its tags and
    ``[SEP]`` take at most ``budget`` positions; all of them, and the ``[SEP]``, when not even the best fits."""
    tags, sizes = image["tags"], image["tag_sizes"]
    if tags.numel() <= budget:
        return image
    kept, used = 0, 1  # the [SEP]
    for size in sizes.tolist():
        if used + size > budget:
            break
        kept, used = kept + 1, used + size
    fitted = dict(image)
    fitted["tags"] = torch.cat([tags[: used - 1], tags[-1:]]) if kept else tags[:0]
    fitted["tag_sizes"] = sizes[:kept]
    return fitted


def log_lost_tags(split: str, src_sizes: np.ndarray, images: "ImageDataset", max_positions: int) -> int:
    """Log how many sentences of ``split`` lose tags to BERT's position limit; return that number."""
    tags = images.tag_positions()
    lost = int(((np.asarray(src_sizes) + tags > max_positions) & (tags > 0)).sum())
    if lost:
        logger.warning("%s: %d of %d sentences have caption + tags over BERT's %d positions; their lowest-scored "
                       "tags are dropped until they fit", split, lost, len(tags), max_positions)
    return lost
