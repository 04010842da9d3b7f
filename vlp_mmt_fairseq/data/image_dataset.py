"""ImageDataset: the image of each line of a split, read lazily from the feature store."""
import functools
from typing import Callable, List, Optional

import numpy as np
import torch
from fairseq.data import FairseqDataset

from vlp_mmt_fairseq.data.feature_store import FeatureStore


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
        tags = []
        if self.tag_encoder is not None and image.tags:
            for tag in image.tags:
                tags.extend(self.tag_encoder(tag))
            tags.append(self.sep)
        keep = None if self.regions else 0
        return {
            "features": torch.from_numpy(image.features[:keep]),  # R x D
            "boxes": torch.from_numpy(image.boxes[:keep]),  # R x 4
            "tags": torch.tensor(tags, dtype=torch.long),  # T
        }

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
