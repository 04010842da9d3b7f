"""Criterion ``vlp_pretrain_loss``: masked LM plus paired-image prediction.

    loss = mean cross entropy of the masked tokens + pair_loss_weight * mean cross entropy of the pair labels

Both means are per batch (``sample_size`` is 1). Logged, in bits like fairseq's losses: ``mlm_loss``
(per predicted token) and ``pair_loss`` (per caption); and ``mlm_accuracy``, ``pair_accuracy`` (%).
"""
import math
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics


@dataclass
class VlpPretrainLossConfig(FairseqDataclass):
    pair_loss_weight: float = field(default=1.0, metadata={"help": "weight of the paired-image prediction loss"})


@register_criterion("vlp_pretrain_loss", dataclass=VlpPretrainLossConfig)
class VlpPretrainLossCriterion(FairseqCriterion):
    """Masked-LM cross entropy over the selected tokens + paired-image cross entropy over the captions."""

    def __init__(self, task, pair_loss_weight: float = 1.0):
        super().__init__(task)
        self.pair_loss_weight = pair_loss_weight
        self.padding_idx = task.source_dictionary.pad()

    def forward(self, model, sample, reduce=True):
        target = sample["target"]
        masked_tokens = target.ne(self.padding_idx)
        mlm_logits, pair_logits = model(**sample["net_input"], masked_tokens=masked_tokens)
        mlm_target = target[masked_tokens]
        pair_label = sample["pair_label"]
        num_masked = int(masked_tokens.sum())
        mlm_sum = F.cross_entropy(mlm_logits.float(), mlm_target, reduction="sum")
        pair_sum = F.cross_entropy(pair_logits.float(), pair_label, reduction="sum")
        loss = mlm_sum / max(num_masked, 1) + self.pair_loss_weight * pair_sum / pair_label.numel()
        logging_output = {
            "loss": loss.data,
            "mlm_loss": mlm_sum.data,
            "pair_loss": pair_sum.data,
            "mlm_correct": int((mlm_logits.argmax(-1) == mlm_target).sum()),
            "pair_correct": int((pair_logits.argmax(-1) == pair_label).sum()),
            "num_masked": num_masked,
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": 1,
        }
        return loss, 1, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        batches = total("sample_size")
        masked, sentences = total("num_masked"), total("nsentences")
        metrics.log_scalar("loss", total("loss") / max(batches, 1) / math.log(2), batches, round=3)
        if masked > 0:
            metrics.log_scalar("mlm_loss", total("mlm_loss") / masked / math.log(2), masked, round=3)
            metrics.log_scalar("mlm_accuracy", 100.0 * total("mlm_correct") / masked, masked, round=2)
        if sentences > 0:
            metrics.log_scalar("pair_loss", total("pair_loss") / sentences / math.log(2), sentences, round=3)
            metrics.log_scalar("pair_accuracy", 100.0 * total("pair_correct") / sentences, sentences, round=2)
        metrics.log_scalar("masked_per_batch", masked / max(batches, 1), batches, round=1)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
