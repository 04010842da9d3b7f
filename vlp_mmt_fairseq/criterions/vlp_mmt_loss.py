"""Criterion ``vlp_mmt_loss``: label-smoothed cross entropy plus the modality loss (Eq. 2-5).

At a decoder layer, the query q_j that the layer's cross-attention received at target position j
attends, through that same attention module (same projections, heads and output projection),
once to the source-text positions only (h_x, the source-target attention) and once to the image
regions only (h_v, the image-target attention). With d_j = 1 - cos(h_x_j, h_v_j) and

    lambda_j = sigmoid(w_y . Emb(y_j) + w_x . h_x_j + w_v . h_v_j)                      (Eq. 5)

the modality loss is, by ``--modality-gate``:

    prior (default):  L_M = sum_j [ lambda_j d_j + tau KL(Bern(lambda_j) || Bern(p0)) ]
    literal:          L_M = sum_j lambda_j d_j                                           (Eq. 4-5 as written)
    --modality-lambda L:  L_M = sum_j L d_j                                              (fixed lambda)

The prior is this project's resolution of a gap in the paper: as written, d_j >= 0 pushes every
lambda_j down and nothing pushes back, so the literal form learns lambda -> 0 (L_M switches itself
off), while the paper reports a learned mean near 0.4. With the prior, each lambda_j is drawn to
sigmoid(logit(p0) - d_j / tau): at most p0, and larger where text and image attention already agree.
p0 = ``--modality-prior-p0``, tau = ``--modality-prior-tau``; see ``modules/modality_gate.py``.

Emb(y_j) is the decoder's own (unscaled, position-free) embedding of the gold token y_j; w_y, w_x,
w_v are vectors shared across layers. They live in this criterion: translation never uses them.
``--modality-gate-inputs detached`` (default) lets the gate read Emb(y_j), h_x, h_v without their
gradient, so only d_j's gradient reaches the model.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics

from vlp_mmt_fairseq.modules.masked_attention import attend_masked
from vlp_mmt_fairseq.modules.modality_gate import ModalityGate
from vlp_mmt_fairseq.modules.text_packing import PositionKind

MODALITY_LAYERS = ChoiceEnum(["last", "all", "off"])
TAG_SIDES = ChoiceEnum(["none", "x", "v"])
GATE_FORMS = ChoiceEnum(["prior", "literal"])
GATE_INPUTS = ChoiceEnum(["detached", "attached"])
OPENING_SCALES = ChoiceEnum(["open", "none"])
FREQUENT_TYPES = 100  # lambda is logged apart for the most frequent target types of the training data


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
    modality_gate: GATE_FORMS = field(
        default="prior",
        metadata={"help": "the learnable lambda: prior (default; adds tau KL(Bern(lambda_j) || Bern(p0)) per "
                          "token, so lambda cannot collapse) or literal (the paper's Eq. 5 alone, which learns "
                          "lambda -> 0)"},
    )
    modality_prior_p0: float = field(
        default=0.5,
        metadata={"help": "p0 of the prior Bern(p0): lambda's ceiling, reached where cos(h_x, h_v) = 1"},
    )
    modality_prior_tau: float = field(
        default=0.02,
        metadata={"help": "tau, the prior's weight, in units of d = 1 - cos(h_x, h_v) (lambda_j -> sigmoid(logit(p0) "
                          "- d_j / tau)): a large tau makes lambda the constant p0; one near d's spread (0.003 on "
                          "the toy corpus) lets lambda fall, d rise and lambda collapse again (docs/modality_loss.md)"},
    )
    modality_gate_inputs: GATE_INPUTS = field(
        default="detached",
        metadata={"help": "whether the gate reads Emb(y), h_x and h_v with their gradient (attached: the gate "
                          "can lower its loss by moving the decoder and, with tied embeddings, the output "
                          "softmax) or without (detached, default)"},
    )
    modality_gate_opening: OPENING_SCALES = field(
        default="open",
        metadata={"help": "with --cross-attention gated: open (default) scales each layer's L_M by how far that "
                          "layer's image gate is open (mean |tanh g| over its heads, without gradient), so L_M "
                          "aligns only what reaches the translation; none: the full L_M from the start, which "
                          "trains the closed region path to copy the text before the translation can use it"},
    )


def frequent_types(dictionary, k: int) -> torch.Tensor:
    """A boolean lookup over ``dictionary``: True for its ``k`` most frequent non-special types.

    Ranked by the dictionary's counts (its training-data frequencies), not by index: fairseq's
    ``Dictionary.finalize`` sorts by count after the special symbols, but this project's target dictionaries keep
    SentencePiece's piece order (``preprocess/prepare_multi30k.py``).
    """
    counts = torch.tensor(dictionary.count, dtype=torch.float64)
    counts[: dictionary.nspecial] = -1.0  # never a special symbol
    order = torch.sort(-counts, stable=True).indices
    lookup = torch.zeros(len(dictionary), dtype=torch.bool)
    lookup[order[: min(k, len(dictionary) - dictionary.nspecial)]] = True
    return lookup


@register_criterion("vlp_mmt_loss", dataclass=VlpMmtLossConfig)
class VlpMmtLossCriterion(LabelSmoothedCrossEntropyCriterion):
    """Label-smoothed cross entropy + sum_j [lambda_j (1 - cos(h_x, h_v)) + tau KL(Bern(lambda_j) || Bern(p0))]."""

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,
                 modality_loss="last", modality_lambda=None, modality_tags="none", modality_gate="prior",
                 modality_prior_p0=0.5, modality_prior_tau=0.02, modality_gate_inputs="detached",
                 modality_gate_opening="open"):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.modality_layers = str(modality_loss)
        self.fixed_lambda = modality_lambda
        self.x_kinds = [PositionKind.SOURCE] + ([PositionKind.TAG] if str(modality_tags) == "x" else [])
        self.v_kinds = [PositionKind.REGION] + ([PositionKind.TAG] if str(modality_tags) == "v" else [])
        self.gate = None
        self.scale_by_opening = str(modality_gate_opening) == "open"
        self.use_images = getattr(task, "use_images", False)
        if self.modality_layers != "off":
            if not self.use_images:
                raise ValueError("the modality loss needs images: pass --modality-loss off with --no-images")
            if self.fixed_lambda is None:
                embed_dim, hidden_dim = task.decoder_dims
                self.gate = ModalityGate(embed_dim, hidden_dim,
                                         prior_p0=modality_prior_p0 if str(modality_gate) == "prior" else None,
                                         prior_tau=modality_prior_tau,
                                         detach_inputs=str(modality_gate_inputs) == "detached")
        # one entry per target type: is it one of the FREQUENT_TYPES most frequent types of the training data?
        self.register_buffer("frequent_types", frequent_types(task.target_dictionary, FREQUENT_TYPES),
                             persistent=False)

    def forward(self, model, sample, reduce=True):
        use_modality = self.modality_layers != "off" and model.training
        # the layers whose queries L_M reads (they also run outside --checkpoint-activations, see the decoder)
        net_output = model(**sample["net_input"],
                           return_cross_attn_queries=self.modality_layer_indices(model) if use_modality else False)
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
                modality_prior=terms["prior_sum"].data,
                lambda_sum=terms["lambda_sum"].data,
                lambda_sq_sum=terms["lambda_sq_sum"].data,
                lambda_frequent_sum=terms["lambda_frequent_sum"].data,
                frequent_tokens=terms["frequent_count"].data,
                cos_sum=terms["cos_sum"].data,
                cos_sq_sum=terms["cos_sq_sum"].data,
                modality_tokens=terms["count"].data,
            )
        if self.use_images and getattr(model.decoder, "gated", False):  # how far the region gates are open
            gates = torch.cat([layer.encoder_attn.gate_values().detach() for layer in model.decoder.layers])
            logging_output.update(cross_gate_sum=gates.abs().mean(), cross_gate_batches=1)  # no sync per step
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        return loss, sample_size, logging_output

    def modality_layer_indices(self, model) -> List[int]:
        """The decoder layers with the modality loss."""
        n = len(model.decoder.layers)
        return list(range(n)) if self.modality_layers == "all" else [n - 1]

    def modality_terms(self, model, net_output, sample) -> Dict[str, torch.Tensor]:
        """h_x, h_v, lambda, cos(h_x, h_v) and L_M (summed over the chosen layers and non-pad target tokens).

        Per layer: ``d`` = 1 - cos, ``lambda``, its ``logit`` and ``prior`` = tau KL(Bern(lambda) || Bern(p0))
        (zero without a prior), all T x B float32 and zero at dropped positions.
        """
        extra = net_output[1]
        encoder_out = extra["encoder_out"]
        memory = encoder_out["encoder_out"][0]  # S x B x C
        kinds = encoder_out["position_kinds"][0]  # B x S
        is_x, is_v = self._kind_mask(kinds, self.x_kinds), self._kind_mask(kinds, self.v_kinds)  # B x S
        target = sample["target"].t()  # T x B
        valid = target.ne(self.padding_idx) & is_v.any(1) & is_x.any(1)  # T x B
        frequent = self.frequent_types[target] & valid  # T x B
        # an all-masked row would give NaN attention; unmask one position there, its terms are dropped
        guard = ~(is_v.any(1) & is_x.any(1))
        is_x = is_x | (guard.unsqueeze(1) & (torch.arange(is_x.size(1), device=is_x.device) == 0))
        is_v = is_v | (guard.unsqueeze(1) & (torch.arange(is_v.size(1), device=is_v.device) == 0))
        layers = model.decoder.layers
        chosen = self.modality_layer_indices(model)
        queries = extra["cross_attn_queries"]
        trained = [i for i in chosen if any(p.requires_grad for p in layers[i].parameters())]
        if torch.is_grad_enabled() and not all(queries[i].requires_grad for i in trained):
            raise RuntimeError("the modality loss got cross-attention queries without a graph, so L_M would "
                               "train only the gate: run the decoder with return_cross_attn_queries set to the "
                               "modality-loss layers (the criterion does), which keeps them out of "
                               "--checkpoint-activations")
        target_embed = model.decoder.embed_tokens.weight[target]  # T x B x E, unscaled, no positions
        zero = memory.new_zeros((), dtype=torch.float32)
        sums = {name: zero for name in ("loss", "prior_sum", "lambda_sum", "lambda_sq_sum", "lambda_frequent_sum",
                                        "cos_sum", "cos_sq_sum")}
        per_layer: List[Dict[str, torch.Tensor]] = []
        for index in chosen:
            query = queries[index]  # T x B x C
            projected = [extra[name][index] if name in extra else None
                         for name in ("cross_attn_keys", "cross_attn_values")]
            h_x, h_v = attend_masked(layers[index].encoder_attn, query, memory, [is_x, is_v], *projected)  # T x B x C
            cos = F.cosine_similarity(h_x.float(), h_v.float(), dim=-1)  # T x B
            d = (1.0 - cos).masked_fill(~valid, 0.0)
            if self.gate is not None:
                logit = self.gate.logits(target_embed, h_x, h_v)  # T x B, float32
                lam = torch.sigmoid(logit).masked_fill(~valid, 0.0)
                prior = self.gate.prior(logit).masked_fill(~valid, 0.0)
            else:
                logit = None
                lam = torch.full_like(cos, float(self.fixed_lambda)).masked_fill(~valid, 0.0)
                prior = torch.zeros_like(cos)
            cos_kept = cos.detach().masked_fill(~valid, 0.0)
            lam_kept = lam.detach()
            opening = self.gate_opening(layers[index])
            sums["loss"] = sums["loss"] + opening * (lam * d + prior).sum()
            sums["prior_sum"] = sums["prior_sum"] + prior.detach().sum()
            sums["lambda_sum"] = sums["lambda_sum"] + lam.sum()
            sums["lambda_sq_sum"] = sums["lambda_sq_sum"] + (lam_kept * lam_kept).sum()
            sums["lambda_frequent_sum"] = sums["lambda_frequent_sum"] + lam_kept.masked_fill(~frequent, 0.0).sum()
            sums["cos_sum"] = sums["cos_sum"] + cos_kept.sum()
            sums["cos_sq_sum"] = sums["cos_sq_sum"] + (cos_kept * cos_kept).sum()
            per_layer.append({"h_x": h_x, "h_v": h_v, "lambda": lam, "cos": cos, "d": d, "logit": logit,
                              "prior": prior})
        return dict(sums, count=valid.sum() * len(chosen), frequent_count=frequent.sum() * len(chosen),
                    layers=per_layer, valid=valid, frequent=frequent)

    def gate_opening(self, layer) -> float:
        """The weight of a layer's L_M: 1, or how far its image gate is open (``--modality-gate-opening``)."""
        attention = layer.encoder_attn
        if not (self.scale_by_opening and hasattr(attention, "gate_values")):
            return 1.0
        return attention.gate_values().detach().abs().mean()

    @staticmethod
    def _kind_mask(kinds: torch.Tensor, wanted) -> torch.Tensor:
        mask = torch.zeros_like(kinds, dtype=torch.bool)
        for kind in wanted:
            mask |= kinds.eq(int(kind))
        return mask

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)

        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        batches = total("cross_gate_batches")
        if batches > 0:  # mean |tanh g| over decoder layers and heads: 0 = text only
            metrics.log_scalar("cross_gate", total("cross_gate_sum") / batches, batches, round=4)
        count = total("modality_tokens")
        if count > 0:
            modality = total("modality_loss")
            # xent below is the label-smoothed cross entropy alone, in the same units as loss
            sample_size = total("sample_size")
            metrics.log_scalar("modality_loss", modality / count, count, round=4)
            metrics.log_scalar("modality_prior", total("modality_prior") / count, count, round=4)
            lam = total("lambda_sum") / count
            metrics.log_scalar("lambda", lam, count, round=4)
            # standard deviation over tokens, from the summed squares (so several workers combine)
            metrics.log_scalar("lambda_std", math.sqrt(max(total("lambda_sq_sum") / count - lam * lam, 0.0)),
                               count, round=4)
            frequent = total("frequent_tokens")
            if frequent > 0:
                metrics.log_scalar("lambda_frequent", total("lambda_frequent_sum") / frequent, frequent, round=4)
            if count > frequent:
                metrics.log_scalar("lambda_other", (total("lambda_sum") - total("lambda_frequent_sum"))
                                   / (count - frequent), count - frequent, round=4)
            # how close the text and image attention outputs are, also when lambda is 0 or small
            cos = total("cos_sum") / count
            metrics.log_scalar("modality_cos", cos, count, round=4)
            metrics.log_scalar("modality_cos_std", math.sqrt(max(total("cos_sq_sum") / count - cos * cos, 0.0)),
                               count, round=4)
            metrics.log_scalar("xent", (total("loss") - modality) / sample_size / math.log(2), sample_size,
                               round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
