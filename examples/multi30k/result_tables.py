"""The paper's Table 5 (systems) and Table 6 (ablation) from the scores of a comparison.

Each row gives, per test set, BLEU (lowercased and tokenized, as MMT papers report it; the
detokenized sacreBLEU is in the CSV and JSON too) and METEOR x 100, then the average over the test
sets of its difference to the table's reference row (the text-only transformer in Table 5, the
full model in Table 6). Beside every multimodal row: the BLEU it loses, averaged over the test
sets, when its images are shuffled across sentences (incongruent) and when it gets none.
"""
import csv
import io
import json
import os
from dataclasses import dataclass, field
from statistics import mean
from typing import Dict, List, Optional

from steps import atomic_output

NOT_RUN = "not run"


@dataclass
class Row:
    """One system's numbers (None where missing)."""

    system: str
    label: str
    multimodal: bool
    bleu: Dict[str, float] = field(default_factory=dict)  # tokenized, lowercased
    sacrebleu: Dict[str, float] = field(default_factory=dict)
    meteor: Dict[str, Optional[float]] = field(default_factory=dict)  # x 100
    probe_bleu: Dict[str, Dict[str, float]] = field(default_factory=dict)  # probe -> test set -> BLEU
    seconds: Optional[float] = None  # wall time of the system's own steps

    @property
    def finished(self) -> bool:
        return bool(self.bleu)


def read_scores(path: str) -> Optional[dict]:
    """The ``test_sets`` record of a ``vlp-mmt-score --json`` file, or None if it is absent."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)["test_sets"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a vlp-mmt-score JSON file ({e})") from e


def load_row(work_dir: str, system, probes: List[str], seconds: Optional[float], finished: bool) -> Row:
    """The row of ``system`` from ``WORK/scores/`` (empty unless its scoring steps are ``finished``)."""
    row = Row(system.name, system.label, system.multimodal, seconds=seconds)
    scores = read_scores(os.path.join(work_dir, "scores", f"{system.name}.json")) if finished else None
    if scores is None:
        return row
    for test_set, s in scores.items():
        row.bleu[test_set] = s["bleu_tok"]
        row.sacrebleu[test_set] = s["bleu"]
        row.meteor[test_set] = None if s.get("meteor") is None else 100 * s["meteor"]
    if system.multimodal:
        for probe in probes:
            probe_scores = read_scores(os.path.join(work_dir, "scores", f"{system.name}.{probe}.json"))
            if probe_scores is not None:
                row.probe_bleu[probe] = {t: s["bleu_tok"] for t, s in probe_scores.items()}
    return row


def average_delta(values: Dict[str, Optional[float]], reference: Dict[str, Optional[float]]) -> Optional[float]:
    """Mean over the shared test sets of ``values - reference``; None if any value is missing."""
    shared = [t for t in values if t in reference]
    if not shared or any(values[t] is None or reference[t] is None for t in shared):
        return None
    return mean(values[t] - reference[t] for t in shared)


def probe_loss(row: Row, probe: str) -> Optional[float]:
    """Average BLEU the row loses under ``probe`` (positive: the probe hurts)."""
    if probe not in row.probe_bleu:
        return None
    return average_delta(row.bleu, row.probe_bleu[probe])


def table_records(rows: List[Row], reference: str, test_sets: List[str], probes: List[str]) -> List[dict]:
    """Plain records of a table (the JSON and CSV content)."""
    by_name = {r.system: r for r in rows}
    ref = by_name.get(reference)
    records = []
    for row in rows:
        record = {"system": row.system, "label": row.label, "multimodal": row.multimodal,
                  "finished": row.finished, "seconds": row.seconds}
        for t in test_sets:
            record[f"{t}_bleu"] = row.bleu.get(t)
            record[f"{t}_meteor"] = row.meteor.get(t)
            record[f"{t}_sacrebleu"] = row.sacrebleu.get(t)
        usable = ref is not None and ref.finished and row.finished
        record["avg_delta_bleu"] = average_delta(row.bleu, ref.bleu) if usable else None
        record["avg_delta_meteor"] = average_delta(row.meteor, ref.meteor) if usable else None
        for probe in probes:
            record[f"bleu_lost_{probe}"] = probe_loss(row, probe) if row.multimodal else None
            for t in test_sets:
                record[f"{t}_bleu_{probe}"] = row.probe_bleu.get(probe, {}).get(t)
        records.append(record)
    return records


def _number(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def markdown_table(records: List[dict], test_sets: List[str], probes: List[str], reference_label: str,
                   feature_note: str) -> str:
    """The table as Markdown (one line per row)."""
    header = ["System"]
    for t in test_sets:
        header += [f"{t} BLEU", f"{t} METEOR"]
    header += [f"avg ΔBLEU vs {reference_label}", "avg ΔMETEOR"]
    header += [f"BLEU lost: {p.replace('_', ' ')}" for p in probes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for r in records:
        label = r["label"] + (f" [{feature_note}]" if r["multimodal"] else "")
        if not r["finished"]:
            lines.append("| " + " | ".join([label, NOT_RUN] + [""] * (len(header) - 2)) + " |")
            continue
        cells = [label]
        for t in test_sets:
            cells += [_number(r[f"{t}_bleu"]), _number(r[f"{t}_meteor"])]
        cells += [_number(r["avg_delta_bleu"], True), _number(r["avg_delta_meteor"], True)]
        cells += [_number(r[f"bleu_lost_{p}"], True) if r["multimodal"] else "n/a" for p in probes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(records: List[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return out.getvalue()


def write_text(path: str, text: str) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_table(out_prefix: str, title: str, notes: List[str], records: List[dict], test_sets: List[str],
                probes: List[str], reference_label: str, feature_note: str, context: dict) -> str:
    """``PREFIX.md``, ``PREFIX.csv`` and ``PREFIX.json``; returns the Markdown."""
    markdown = f"### {title}\n\n" + markdown_table(records, test_sets, probes, reference_label, feature_note)
    markdown += "\n" + "".join(f"- {note}\n" for note in notes)
    write_text(out_prefix + ".md", markdown)
    write_text(out_prefix + ".csv", csv_text(records))
    write_text(out_prefix + ".json", json.dumps(dict(context, title=title, notes=notes, rows=records), indent=1,
                                                ensure_ascii=False) + "\n")
    return markdown
