"""Finished rows carried from one work folder to another (``compare.py --export-results`` / ``--previous-results``).

A comparison can outlast the machine it runs on: its systems finish in different runs, on machines that do not
keep each other's work folders. ``export_rows`` writes each finished row into a folder that can be committed:
``<system>.json`` (its scores, probe scores, step seconds and validation curve) and, per test set, the ``D-`` lines
of the fairseq-generate output it was scored on (``<system>.<test set>.txt``, all that the paired bootstrap needs).
``import_rows`` reads them back as rows of the tables; their tokenized references are the current work folder's
prepared ``data/tok`` (the same Multi30K), so the paired bootstrap of any two rows still runs.
"""
import dataclasses
import json
import os
from typing import Dict, List, Tuple

from result_tables import Row, write_text

Curve = List[Tuple[int, float, int]]


class CarriedRowsError(ValueError):
    """A --previous-results folder or file that cannot be read."""


def _relative(path: str, work_dir: str) -> str:
    """``path`` relative to the work folder where it lies inside it (the prepared data), else as it is."""
    relative = os.path.relpath(path, work_dir)
    return path if relative.startswith("..") else relative


def export_rows(rows: Dict[str, Row], curves: Dict[str, Curve], work_dir: str, out_dir: str) -> List[str]:
    """Every finished row into ``out_dir``; returns the systems written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, row in rows.items():
        if not row.finished:
            continue
        outputs = {}
        for test_set, path in row.outputs.items():
            outputs[test_set] = f"{name}.{test_set}.txt"
            with open(path, encoding="utf-8") as f:
                hypotheses = "".join(line for line in f if line.startswith("D-"))
            write_text(os.path.join(out_dir, outputs[test_set]), hypotheses)
        record = dict(dataclasses.asdict(row), outputs=outputs,
                      tok_references={t: _relative(p, work_dir) for t, p in row.tok_references.items()},
                      curve=[list(point) for point in curves.get(name, [])], exported_from=os.path.abspath(work_dir))
        write_text(os.path.join(out_dir, f"{name}.json"), json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        written.append(name)
    return written


def import_rows(in_dir: str, work_dir: str, systems: List[str]) -> Dict[str, Tuple[Row, Curve]]:
    """The rows of ``systems`` that ``in_dir`` holds, with their curves."""
    if not os.path.isdir(in_dir):
        raise CarriedRowsError(f"--previous-results {in_dir}: no such folder")
    carried = {}
    fields = {f.name for f in dataclasses.fields(Row)}
    for name in systems:
        path = os.path.join(in_dir, f"{name}.json")
        if not os.path.exists(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            row = Row(**{k: v for k, v in record.items() if k in fields})
        except (OSError, ValueError, TypeError) as e:
            raise CarriedRowsError(f"{path}: not a row written by compare.py --export-results ({e})") from None
        row.outputs = {t: os.path.join(in_dir, p) for t, p in row.outputs.items()}
        row.tok_references = {t: p if os.path.isabs(p) else os.path.join(work_dir, p)
                              for t, p in row.tok_references.items()}
        carried[name] = (row, [tuple(point) for point in record.get("curve", [])])
    return carried
