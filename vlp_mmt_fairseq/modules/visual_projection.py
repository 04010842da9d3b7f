"""FFN(v) of Eq. 1: how image regions enter BERT."""
from typing import Optional

import torch
import torch.nn as nn


class VisualProjection(nn.Module):
    """FFN(v): region features and box geometry projected to BERT's hidden size."""

    def __init__(self, feature_dim: int, hidden_size: int, dropout: float = 0.1, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.feature_dim = feature_dim
        self.ffn = nn.Sequential(
            nn.Linear(feature_dim + 5, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor,
                embedding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``embedding`` (B x R x H, or broadcastable to it): added before the layer norm, as BERT adds its
        position and segment embeddings to the word embedding before its own (``--region-embedding``)."""
        # features: B x R x D, boxes: B x R x 4 (x1, y1, x2, y2 in [0, 1])
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # B x R
        v = torch.cat([features, boxes, area.unsqueeze(-1)], dim=-1)  # B x R x (D + 5)
        h = self.ffn(v.to(self.layer_norm.weight.dtype))  # B x R x H
        if embedding is not None:
            h = h + embedding.to(h.dtype)
        return self.dropout(self.layer_norm(h))  # B x R x H
