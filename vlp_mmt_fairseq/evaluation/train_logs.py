"""Records of ``fairseq-train --log-format json`` logs: validations and end-of-epoch training summaries.

fairseq logs every validation as ``... | valid | {"epoch": 3, ..., "valid_bleu": "12.5", ...}`` (``--eval-bleu``)
and every epoch's training summary as ``... | train | {...}`` (per-interval lines are ``| train_inner |``). A
resumed run logs again into the same file.
"""
import json
import os
from typing import Dict, Iterator, List

VALID_MARKER = "| valid | "
TRAIN_MARKER = "| train | "


def log_records(log_path: str, marker: str) -> Iterator[dict]:
    """Every record after ``marker`` in a training log, in order; none if the log is absent."""
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


def last_valid_record(log_path: str) -> dict:
    """The last validation record of a training log (e.g. VLP's ``valid_mlm_accuracy``); empty if none."""
    records = list(valid_records(log_path))
    return records[-1] if records else {}


def last_train_record(log_path: str) -> dict:
    """The last epoch's training summary of a training log (e.g. ``train_lambda``); empty if none."""
    records = list(log_records(log_path, TRAIN_MARKER))
    return records[-1] if records else {}


def valid_bleu_per_epoch(log_path: str) -> Dict[int, float]:
    """{epoch: validation BLEU} of one ``--eval-bleu`` training log; empty if the log is absent.

    fairseq 0.12 left ``valid_bleu`` out when no hypothesis had a single token (an untrained model): such an epoch
    counts as BLEU 0. An epoch validated twice (a run interrupted after its validation but before its checkpoint)
    keeps its last value.
    """
    curve = {int(r["epoch"]): float(r.get("valid_bleu", 0.0)) for r in valid_records(log_path)}
    return dict(sorted(curve.items()))


def interrupted_attempt_seconds(log_path: str) -> List[float]:
    """The wall-clock seconds fairseq logged by the end of each attempt of a resumed run but the last one.

    A step runner's log starts every attempt with a ``### `` line; fairseq's ``wall`` restarts at 0 in each
    process, so an attempt lasted at least the largest ``wall`` it logged (the work after its last record was
    lost with it). Empty for a run that was never interrupted, or when the log is absent.
    """
    if not os.path.exists(log_path):
        return []
    attempts = []
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("### "):
                attempts.append(0.0)
            elif attempts and '"wall": ' in line and " | {" in line:
                try:
                    wall = float(json.loads("{" + line.split(" | {", 1)[1]).get("wall", 0))
                except ValueError:  # not a fairseq record
                    continue
                attempts[-1] = max(attempts[-1], wall)
    return attempts[:-1]
