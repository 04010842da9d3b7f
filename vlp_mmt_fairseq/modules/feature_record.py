"""What a ``vlp_mmt`` checkpoint records of the image features it was trained on: the feature size D and the
store's ``extractor`` string.

The record lives in the model options (``--image-feature-dim``, ``--image-extractor``, filled from the store
when training starts) and, for resumed training, in the state dict (the ``image_record`` buffer). Translating
or resuming with a store of another size or extractor stops with :class:`FeatureRecordError` naming both.
D is the input size of FFN(v): 0 for a model without one (text only, or tags only); a multimodal model keeps its
FFN(v) under ``--no-images`` (the "no image" probe), where it is only not fed.
"""
import json
from dataclasses import dataclass
from typing import Optional

import torch

from vlp_mmt_fairseq.errors import PluginError

BUFFER_NAME = "image_record"


class FeatureRecordError(PluginError, ValueError):
    """Image features that differ from those a model was trained on; the message names both."""


@dataclass(frozen=True)
class FeatureRecord:
    feature_dim: int  # 0: a text-only model
    extractor: str

    def describe(self) -> str:
        if not self.feature_dim:
            return "no image features (a text-only model)"
        return f"features of size D = {self.feature_dim} from extractor '{self.extractor}'"

    def to_tensor(self) -> torch.Tensor:
        data = json.dumps({"feature_dim": self.feature_dim, "extractor": self.extractor}).encode("utf-8")
        return torch.tensor(list(data), dtype=torch.uint8)

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> "FeatureRecord":
        data = json.loads(bytes(tensor.tolist()).decode("utf-8"))
        return cls(int(data["feature_dim"]), str(data["extractor"]))


def recorded(args) -> Optional[FeatureRecord]:
    """The record in the model options, or None (a model being trained from scratch)."""
    dim = getattr(args, "image_feature_dim", None)
    if dim is None:
        return None
    return FeatureRecord(int(dim), str(getattr(args, "image_extractor", None) or ""))


def record_for_task(args, task) -> FeatureRecord:
    """The record of a model built for ``task``, checked against what the model options recorded, and written
    into them (so that the checkpoint keeps it)."""
    old = recorded(args)
    if task.use_images and task.store is None:  # a trained model given its stores per call (from_pretrained)
        if old is None:
            raise ValueError("--image-features is required unless --no-images is given")
        found = old
    elif task.use_images:
        regions = getattr(task, "use_regions", True)  # --no-regions: tags only, no FFN(v), D = 0
        found = FeatureRecord(int(task.feature_dim) if regions else 0, task.store.extractor)
        if old is not None and old != found:
            raise FeatureRecordError(
                f"{task.store.path}: the model was trained on {old.describe()}, but this store holds "
                f"{found.describe()}; use a store made by the model's extractor (see docs/images.md)"
            )
    else:
        found = old if old is not None else FeatureRecord(0, "")  # --no-images: keep a multimodal model whole
    args.image_feature_dim, args.image_extractor = found.feature_dim, found.extractor
    return found


def check_state_dict(record: FeatureRecord, state_dict, prefix: str) -> None:
    """Resuming: the checkpoint's record must be this model's (an old checkpoint without one gets this one's)."""
    key = prefix + BUFFER_NAME
    if key not in state_dict:
        state_dict[key] = record.to_tensor()
        return
    theirs = FeatureRecord.from_tensor(state_dict[key])
    if theirs != record:
        raise FeatureRecordError(
            f"the checkpoint was trained on {theirs.describe()}, but this run has {record.describe()}; "
            "resume with the store the checkpoint was trained on"
        )
