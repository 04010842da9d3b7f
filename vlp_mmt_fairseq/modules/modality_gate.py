"""The token-level weight lambda_j of the modality loss (Eq. 5), and the prior that keeps it on.

Eq. 5 alone: lambda_j d_j with d_j = 1 - cos(h_x, h_v) >= 0 is smallest at lambda_j = 0, so a learnable
lambda switches the loss off. A Bernoulli prior per token, tau KL(Bern(lambda_j) || Bern(p0)), pushes back:

    min over lambda_j of  lambda_j d_j + tau KL(Bern(lambda_j) || Bern(p0))
        is reached at     lambda_j* = sigmoid(logit(p0) - d_j / tau)
        and equals        -tau log(1 - p0 + p0 exp(-d_j / tau))

(a free-energy bound), so lambda_j lies in [sigmoid(logit(p0) - 2 / tau), p0] for d_j in [0, 2].
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class ModalityGate(nn.Module):
    """lambda_j = sigmoid(w_y . Emb(y_j) + w_x . h_x + w_v . h_v), shared across layers, with an optional prior.

    ``prior_p0=None`` is the literal Eq. 5 (no prior). ``detach_inputs`` reads Emb(y_j), h_x and h_v without
    their gradient, so the gate moves only its own weights (not the decoder, nor tied output-softmax rows).
    Everything is computed in float32 with autocast off, also under --fp16, --bf16 and --amp.
    """

    def __init__(self, embed_dim: int, hidden_dim: int, prior_p0: Optional[float] = 0.5, prior_tau: float = 0.02,
                 detach_inputs: bool = True):
        super().__init__()
        if prior_p0 is not None and not 0.0 < prior_p0 < 1.0:
            raise ValueError(f"--modality-prior-p0 must lie strictly between 0 and 1, got {prior_p0}")
        if not prior_tau > 0.0:
            raise ValueError(f"--modality-prior-tau must be positive, got {prior_tau}")
        self.w_y = nn.Parameter(torch.zeros(embed_dim))
        self.w_x = nn.Parameter(torch.zeros(hidden_dim))
        self.w_v = nn.Parameter(torch.zeros(hidden_dim))
        self.prior_p0 = prior_p0
        self.prior_tau = prior_tau
        self.detach_inputs = detach_inputs

    def logits(self, target_embed, h_x, h_v) -> torch.Tensor:
        """w_y . Emb(y_j) + w_x . h_x + w_v . h_v; inputs T x B x C, output T x B (float32)."""
        inputs = [t.float() for t in (target_embed, h_x, h_v)]
        if self.detach_inputs:
            inputs = [t.detach() for t in inputs]
        target_embed, h_x, h_v = inputs
        with torch.autocast(device_type=h_x.device.type, enabled=False):
            return target_embed @ self.w_y.float() + h_x @ self.w_x.float() + h_v @ self.w_v.float()

    def forward(self, target_embed, h_x, h_v) -> torch.Tensor:
        """lambda_j, T x B."""
        return torch.sigmoid(self.logits(target_embed, h_x, h_v))

    def prior(self, logits) -> torch.Tensor:
        """tau KL(Bern(sigmoid(logits)) || Bern(p0)) per token (zeros for the literal form), in float32.

        Written with log-sigmoids, so it stays finite for any finite logit.
        """
        logits = logits.float()
        if self.prior_p0 is None:
            return torch.zeros_like(logits)
        p0 = self.prior_p0
        lam = torch.sigmoid(logits)
        kl = lam * (F.logsigmoid(logits) - math.log(p0)) + (1.0 - lam) * (F.logsigmoid(-logits) - math.log(1.0 - p0))
        return self.prior_tau * kl

    def optimum(self, d) -> torch.Tensor:
        """The lambda that minimises lambda d + tau KL(Bern(lambda) || Bern(p0)): sigmoid(logit(p0) - d / tau)."""
        p0 = self.prior_p0
        return torch.sigmoid(math.log(p0 / (1.0 - p0)) - d.float() / self.prior_tau)

    def lower_bound(self, d) -> torch.Tensor:
        """That minimum, per token: -tau log(1 - p0 + p0 exp(-d / tau))."""
        p0, tau = self.prior_p0, self.prior_tau
        # log(1 - p0 + p0 e^{-d/tau}) = logaddexp(log(1 - p0), log(p0) - d/tau), stable for small tau
        return -tau * torch.logaddexp(torch.full_like(d.float(), math.log(1.0 - p0)), math.log(p0) - d.float() / tau)
