"""``fairseq-train`` with two observers, for tests that need more than fairseq's rounded logs.

    python tests/fairseq_train_probe.py OUT_PREFIX <fairseq-train arguments>

runs fairseq's own training CLI unchanged and writes, per distributed rank R,
``OUT_PREFIX.rank{R}.json``: the loss of every update as fairseq computes it (summed loss over
summed sample size, in bits) at full precision, and ``OUT_PREFIX.rank{R}.pt``: the model's and the
criterion's parameters when training ends.
"""
import atexit
import json
import math
import sys

from fairseq_cli import train  # isort: skip  (first: importing it sets fairseq's log format)
import torch
from fairseq import trainer as trainer_module


def observe(prefix: str) -> None:
    losses, seen = [], {}
    reduce_and_log = trainer_module.Trainer._reduce_and_log_stats

    def observed_reduce_and_log(self, logging_outputs, sample_size, grad_norm=None):
        seen["trainer"] = self
        if self.model.training:  # a training update (validation runs in eval mode)
            loss = sum(float(log.get("loss", 0)) for log in logging_outputs)
            size = sum(float(log.get("sample_size", 0)) for log in logging_outputs)
            losses.append({"update": self.get_num_updates(), "loss": loss / size / math.log(2)})
        return reduce_and_log(self, logging_outputs, sample_size, grad_norm)

    def dump():
        trainer = seen.get("trainer")
        if trainer is None:
            return
        rank = trainer.data_parallel_rank
        with open(f"{prefix}.rank{rank}.json", "w") as f:
            json.dump(losses, f)
        state = {"model." + k: v for k, v in trainer.get_model().state_dict().items()}
        state.update({"criterion." + k: v for k, v in trainer.get_criterion().state_dict().items()})
        torch.save(state, f"{prefix}.rank{rank}.pt")

    trainer_module.Trainer._reduce_and_log_stats = observed_reduce_and_log
    atexit.register(dump)


if __name__ == "__main__":
    observe(sys.argv[1])
    sys.argv = ["fairseq-train"] + sys.argv[2:]
    train.cli_main()
