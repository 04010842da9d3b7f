"""Criterion ``vlp_mmt_loss``: label-smoothed cross entropy plus the modality loss (Eq. 2-5).

At a decoder layer, the query q_j that the layer's cross-attention received at target position j
attends, through that same attention module (same projections, heads and output projection),
once to the source-text positions only (h_x, the source-target attention) and once to the image
regions only (h_v, the image-target attention). Then

    L_M = sum_j lambda_j * (1 - cos(h_x_j, h_v_j))
    lambda_j = sigmoid(w_y . Emb(y_j) + w_x . h_x_j + w_v . h_v_j)

with Emb(y_j) the decoder's own (unscaled, position-free) embedding of the gold token y_j, and
w_y, w_x, w_v vectors shared across layers. They live in this criterion: translation never uses them.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics

from vlp_mmt_fairseq.models.multimodal_bert_encoder import PositionKind

MODALITY_LAYERS = ChoiceEnum(["last", "all", "off"])
TAG_SIDES = ChoiceEnum(["none", "x", "v"])


@dataclass
class VlpMmtLossConfig(LabelSmoothedCrossEntropyCriterionConfig):
    modality_loss: MODALITY_LAYERS = field(
        default="last",
        metadata={"help": "decoder layers with the modality loss: the last one (paper's default), all of "
                          "them (summed), or off (plain label-smoothed cross entropy)"},
    )
    modality_lambda: Optional[float] = field(
        default=None,
        metadata={"help": "a fixed lambda instead of the learnable token-level one (paper's ablation: 0.4)"},
    )
    modality_tags: TAG_SIDES = field(
        default="none",
        metadata={"help": "which side the object-tag positions join: none (default), the text side x, "
                          "or the visual side v"},
    )


class ModalityGate(nn.Module):
    """lambda_j = sigmoid(w_y . Emb(y_j) + w_x . h_x + w_v . h_v), shared across layers."""

    def __init__(self, embed_dim: int, hidden_dim: int):
        super().__init__()
        self.w_y = nn.Parameter(torch.zeros(embed_dim))
        self.w_x = nn.Parameter(torch.zeros(hidden_dim))
        self.w_v = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, target_embed, h_x, h_v):
        # all T x B x C; computed in the inputs' precision (float32), also when --fp16/--bf16 cast the weights
        dtype = target_embed.dtype
        logits = target_embed @ self.w_y.to(dtype) + h_x @ self.w_x.to(dtype) + h_v @ self.w_v.to(dtype)  # T x B
        return torch.sigmoid(logits)


def attend_masked(attention, query, memory, keeps, keys=None, values=None) -> List[torch.Tensor]:
    """fairseq MultiheadAttention ``attention`` from ``query`` over ``memory``, once per mask in ``keeps``.

    Equal to ``attention(query=query, key=memory, value=memory, key_padding_mask=~keep, static_kv=True)``
    for each ``keep`` (B x S, True = attend), but the projections and scores are computed once, and
    ``keys``/``values`` (``attention``'s own projections of ``memory``, S x B x C) are used when given.
    """
    tgt_len, bsz, dim = query.shape
    heads, head_dim = attention.num_heads, attention.head_dim

    def split_heads(x):  # L x B x C -> (B * heads) x L x head_dim
        return x.contiguous().view(x.size(0), bsz * heads, head_dim).transpose(0, 1)

    q = split_heads(attention.q_proj(query) * attention.scaling)
    k = split_heads(attention.k_proj(memory) if keys is None else keys)
    v = split_heads(attention.v_proj(memory) if values is None else values)
    scores = torch.bmm(q, k.transpose(1, 2)).view(bsz, heads, tgt_len, -1)  # B x heads x T x S
    outputs = []
    for keep in keeps:
        masked = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        probs = attention.dropout_module(utils.softmax(masked, dim=-1).type_as(scores))
        attended = torch.bmm(probs.view(bsz * heads, tgt_len, -1), v)  # (B * heads) x T x head_dim
        outputs.append(attention.out_proj(attended.transpose(0, 1).contiguous().view(tgt_len, bsz, dim)))
    return outputs


@register_criterion("vlp_mmt_loss", dataclass=VlpMmtLossConfig)
class VlpMmtLossCriterion(LabelSmoothedCrossEntropyCriterion):
    """Label-smoothed cross entropy + sum_j lambda_j (1 - cos(h_x, h_v))."""

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,
                 modality_loss="last", modality_lambda=None, modality_tags="none"):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.modality_layers = str(modality_loss)
        self.fixed_lambda = modality_lambda
        self.x_kinds = [PositionKind.SOURCE] + ([PositionKind.TAG] if str(modality_tags) == "x" else [])
        self.v_kinds = [PositionKind.REGION] + ([PositionKind.TAG] if str(modality_tags) == "v" else [])
        self.gate = None
        if self.modality_layers != "off":
            if not getattr(task, "use_images", False):
                raise ValueError("the modality loss needs images: pass --modality-loss off with --no-images")
            if self.fixed_lambda is None:
                embed_dim, hidden_dim = task.decoder_dims
                self.gate = ModalityGate(embed_dim, hidden_dim)

    def forward(self, model, sample, reduce=True):
        use_modality = self.modality_layers != "off" and model.training
        net_output = model(**sample["net_input"], return_cross_attn_queries=use_modality)
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if use_modality:
            terms = self.modality_terms(model, net_output, sample)
            loss = loss + terms["loss"]
            logging_output.update(
                loss=loss.data,
                modality_loss=terms["loss"].data,
                lambda_sum=terms["lambda_sum"].data,
                cos_sum=terms["cos_sum"].data,
                modality_tokens=terms["count"].data,
            )
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        return loss, sample_size, logging_output

    def modality_terms(self, model, net_output, sample) -> Dict[str, torch.Tensor]:
        """h_x, h_v, lambda, cos(h_x, h_v) and L_M (summed over the chosen layers and non-pad target tokens)."""
        extra = net_output[1]
        encoder_out = extra["encoder_out"]
        memory = encoder_out["encoder_out"][0]  # S x B x C
        kinds = encoder_out["position_kinds"][0]  # B x S
        is_x, is_v = self._kind_mask(kinds, self.x_kinds), self._kind_mask(kinds, self.v_kinds)  # B x S
        target = sample["target"].t()  # T x B
        valid = target.ne(self.padding_idx) & is_v.any(1) & is_x.any(1)  # T x B
        # an all-masked row would give NaN attention; unmask one position there, its terms are dropped
        guard = ~(is_v.any(1) & is_x.any(1))
        is_x = is_x | (guard.unsqueeze(1) & (torch.arange(is_x.size(1), device=is_x.device) == 0))
        is_v = is_v | (guard.unsqueeze(1) & (torch.arange(is_v.size(1), device=is_v.device) == 0))
        layers = model.decoder.layers
        chosen = range(len(layers)) if self.modality_layers == "all" else [len(layers) - 1]
        target_embed = model.decoder.embed_tokens.weight[target]  # T x B x E, unscaled, no positions
        total = memory.new_zeros(())
        lambda_sum = memory.new_zeros(())
        cos_sum = memory.new_zeros((), dtype=torch.float32)
        per_layer: List[Dict[str, torch.Tensor]] = []
        for index in chosen:
            query = extra["cross_attn_queries"][index]  # T x B x C
            projected = [extra[name][index] if name in extra else None
                         for name in ("cross_attn_keys", "cross_attn_values")]
            h_x, h_v = attend_masked(layers[index].encoder_attn, query, memory, [is_x, is_v], *projected)  # T x B x C
            cos = F.cosine_similarity(h_x.float(), h_v.float(), dim=-1)  # T x B
            if self.gate is not None:
                lam = self.gate(target_embed.float(), h_x.float(), h_v.float())  # T x B
            else:
                lam = torch.full_like(cos, float(self.fixed_lambda))
            lam = lam.masked_fill(~valid, 0.0)
            total = total + (lam * (1.0 - cos)).masked_fill(~valid, 0.0).sum()
            lambda_sum = lambda_sum + lam.sum()
            cos_sum = cos_sum + cos.detach().masked_fill(~valid, 0.0).sum()
            per_layer.append({"h_x": h_x, "h_v": h_v, "lambda": lam, "cos": cos})
        count = valid.sum() * len(chosen)
        return {"loss": total, "lambda_sum": lambda_sum, "cos_sum": cos_sum, "count": count, "layers": per_layer,
                "valid": valid}

    @staticmethod
    def _kind_mask(kinds: torch.Tensor, wanted) -> torch.Tensor:
        mask = torch.zeros_like(kinds, dtype=torch.bool)
        for kind in wanted:
            mask |= kinds.eq(int(kind))
        return mask

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        count = utils.item(sum(log.get("modality_tokens", 0) for log in logging_outputs))
        if count > 0:
            modality = utils.item(sum(log.get("modality_loss", 0) for log in logging_outputs))
            lambdas = utils.item(sum(log.get("lambda_sum", 0) for log in logging_outputs))
            cosines = utils.item(sum(log.get("cos_sum", 0) for log in logging_outputs))
            # xent below is the label-smoothed cross entropy alone, in the same units as loss
            sample_size = utils.item(sum(log.get("sample_size", 0) for log in logging_outputs))
            metrics.log_scalar("modality_loss", modality / count, count, round=4)
            metrics.log_scalar("lambda", lambdas / count, count, round=4)
            # how close the text and image attention outputs are, also when lambda is 0 or small
            metrics.log_scalar("modality_cos", cosines / count, count, round=4)
            total = utils.item(sum(log.get("loss", 0) for log in logging_outputs))
            metrics.log_scalar("xent", (total - modality) / sample_size / math.log(2), sample_size, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
