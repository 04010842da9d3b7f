"""fairseq-train's set-up in this process: a task, its model and criterion, and fairseq's Trainer.

For code that drives a Trainer itself (the benchmarks, the tests) instead of running ``fairseq-train``.
"""
from typing import Sequence


def load_plugin() -> None:
    """Register the plugin's tasks, models and criterions, and its fixes, in this process: importing the package
    does both (``compat.apply`` allow-lists the checkpoint classes and applies the fixes this fairseq needs)."""
    import vlp_mmt_fairseq  # noqa: F401


def build_trainer(argv: Sequence, trainer_class=None):
    """(cfg, task, trainer) as fairseq-train sets them up from the command-line arguments ``argv``.

    ``trainer_class``: a subclass of fairseq's ``Trainer`` to build instead of it.
    """
    import numpy as np
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    load_plugin()
    args = options.parse_args_and_arch(options.get_training_parser(), [str(a) for a in argv])
    cfg = convert_namespace_to_omegaconf(args)
    np.random.seed(cfg.common.seed)
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return cfg, task, (trainer_class or Trainer)(cfg, task, model, criterion)
