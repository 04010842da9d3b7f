"""Validation BLEU per epoch, read from the ``fairseq-train --log-format json`` logs (Figure 3).

fairseq logs every validation as ``... | valid | {"epoch": 3, ..., "valid_bleu": "12.5", ...}``
(``--eval-bleu``). fairseq leaves ``valid_bleu`` out when no hypothesis has a single token (an
untrained model): such an epoch counts as BLEU 0. A resumed run logs again into the same file; an
epoch validated twice (a run interrupted after its validation but before its checkpoint) keeps its
last value.
"""
import json
import os
from typing import Dict, Iterator, List, Tuple

VALID_MARKER = "| valid | "
TRAIN_MARKER = "| train | "  # the end-of-epoch summary (per-interval lines are "| train_inner | ")


def log_records(log_path: str, marker: str) -> Iterator[dict]:
    """Every record after ``marker`` in a ``--log-format json`` training log, in order; none if the log is absent."""
    if not os.path.exists(log_path):
        return
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line_number, line in enumerate(f, 1):
            if marker not in line:
                continue
            try:
                yield json.loads(line.split(marker, 1)[1])
            except ValueError as e:
                raise ValueError(f"{log_path}:{line_number}: unreadable record ({e})") from e


def valid_records(log_path: str) -> Iterator[dict]:
    """Every validation record of a training log, in order."""
    return log_records(log_path, VALID_MARKER)


def last_train_record(log_path: str) -> dict:
    """The last epoch's training summary of a training log (e.g. ``train_lambda``); empty if none."""
    records = list(log_records(log_path, TRAIN_MARKER))
    return records[-1] if records else {}


def last_valid_record(log_path: str) -> dict:
    """The last validation record of a training log (e.g. VLP's ``valid_mlm_accuracy``); empty if none."""
    records = list(valid_records(log_path))
    return records[-1] if records else {}


def valid_bleu_per_epoch(log_path: str) -> Dict[int, float]:
    """{epoch: validation BLEU} of one ``--eval-bleu`` training log; empty if the log is absent."""
    curve = {int(r["epoch"]): float(r.get("valid_bleu", 0.0)) for r in valid_records(log_path)}
    return dict(sorted(curve.items()))


def system_curve(log_paths: List[str]) -> List[Tuple[int, float, int]]:
    """(global epoch, BLEU, stage) points across a system's runs; stage k's epochs follow stage k-1's."""
    points, offset = [], 0
    for stage, path in enumerate(log_paths, 1):
        curve = valid_bleu_per_epoch(path)
        points += [(offset + epoch, bleu, stage) for epoch, bleu in curve.items()]
        offset += max(curve, default=0)
    return points


def plot_curves(curves: Dict[str, List[Tuple[int, float, int]]], stage1_epochs: int, title: str, path: str) -> None:
    """A PNG of the curves (label -> points), with the stage boundary of the two-stage systems."""
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
    axis.axvline(stage1_epochs + 0.5, color="grey", linestyle=":", linewidth=1)
    axis.text(stage1_epochs + 0.6, 0.02, "stage 2 →", transform=axis.get_xaxis_transform(), color="grey")
    axis.set_xlabel("epoch (stage 2 epochs follow stage 1)")
    axis.set_ylabel("validation BLEU")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
