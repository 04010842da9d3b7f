"""Validation BLEU per epoch of the comparison's systems, read from their training logs (Figure 3).

The log records are read by :mod:`vlp_mmt_fairseq.evaluation.train_logs`; a system's curve runs across its
training runs (stage 1, then stage 2).
"""
from typing import Dict, Iterable, List, Tuple

from vlp_mmt_fairseq.evaluation.train_logs import valid_bleu_per_epoch


def system_curve(log_paths: List[str]) -> List[Tuple[int, float, int]]:
    """(global epoch, BLEU, stage) points across a system's runs; stage k's epochs follow stage k-1's."""
    points, offset = [], 0
    for stage, path in enumerate(log_paths, 1):
        curve = valid_bleu_per_epoch(path)
        points += [(offset + epoch, bleu, stage) for epoch, bleu in curve.items()]
        offset += max(curve, default=0)
    return points


def plot_curves(curves: Dict[str, List[Tuple[int, float, int]]], stage1_epochs: Iterable[int], title: str,
                path: str) -> None:
    """A PNG of the curves (label -> points), with the stage boundaries of the two-stage systems (after each of
    the budget's stage-1 lengths)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlp_mmt_fairseq.file_utils import atomic_output

    figure, axis = plt.subplots(figsize=(9, 5.5))
    for label, points in curves.items():
        if not points:
            continue
        epochs, bleu, stages = zip(*points)
        two_stage = max(stages) > 1
        # one-stage curves dashed and on top: BERT-NMT's warm-start epochs repeat the transformer's curve
        axis.plot(epochs, bleu, marker="o" if two_stage else ".", linestyle="-" if two_stage else "--",
                  linewidth=1.5 if two_stage else 2.0, markersize=4, zorder=2 if two_stage else 3, label=label)
    for epochs in sorted(set(stage1_epochs)):
        axis.axvline(epochs + 0.5, color="grey", linestyle=":", linewidth=1)
        axis.text(epochs + 0.6, 0.02, "stage 2 →", transform=axis.get_xaxis_transform(), color="grey")
    axis.set_xlabel("epoch (stage 2 epochs follow stage 1)")
    axis.set_ylabel("validation BLEU")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
