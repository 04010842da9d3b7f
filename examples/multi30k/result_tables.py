"""The paper's Table 5 (systems) and Table 6 (ablation) from the scores of a comparison.

Each row gives, per test set, BLEU (lowercased and tokenized, as MMT papers report it; the
detokenized sacreBLEU is in the CSV and JSON too) and METEOR x 100, then the average over the test
sets of its difference to the table's reference row (the text-only transformer in Table 5, the
full model in Table 6), over the test sets that both rows have. Beside every multimodal row: the
BLEU it loses, averaged over its test sets, when its images are shuffled across sentences
(incongruent) and when it gets none. A multimodal row shows n/a on a test set whose images the
feature store does not hold (a caption-proxy store has no test2017 or mscoco images).

Every BLEU comes with sacreBLEU's 95% interval, and every row but the reference is compared with
the reference row on each test set by paired bootstrap resampling
(``vlp_mmt_fairseq/evaluation/significance.py``); p < 0.05 is marked ``*``.
"""
import csv
import io
import json
import os
from dataclasses import dataclass, field
from statistics import mean
from typing import Dict, List, Optional, Sequence

from vlp_mmt_fairseq.file_utils import atomic_output

NOT_RUN = "not run"
NOT_AVAILABLE = "n/a"
SIGNIFICANT = "*"
SIGNIFICANCE_NOTE = (
    "BLEU ± h: sacreBLEU's 95% interval (mean ± h over 1,000 bootstrap resamples of the test set). "
    f"{SIGNIFICANT}: p < 0.05 against the table's reference row on that test set, by paired bootstrap resampling "
    "(sacreBLEU's implementation, 1,000 resamples, seed 12345) on the BLEU shown; identical outputs get p = 1. "
    "The CSV/JSON also hold the p-values and the 95% interval of the difference from the same resamples."
)


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
    outputs: Dict[str, str] = field(default_factory=dict)  # test set -> fairseq-generate output that was scored
    tok_references: Dict[str, str] = field(default_factory=dict)  # test set -> tokenized references

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
        for paths, name in ((row.outputs, "hypotheses"), (row.tok_references, "tok_references")):
            if s.get(name):
                paths[test_set] = os.path.join(work_dir, s[name])  # vlp-mmt-score ran in the work dir
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


def _hypotheses(path: str, count: int, cache: Dict[str, List[str]]) -> List[str]:
    from vlp_mmt_fairseq.evaluation.generate_output import read_detokenized_hypotheses

    if path not in cache:
        cache[path] = read_detokenized_hypotheses(path, count)
    return cache[path]


def paired_significance(rows: List[Row], reference: str, test_sets: List[str], lang: str) -> Dict[str, dict]:
    """System -> test set -> paired bootstrap result against the ``reference`` row (the reference row skipped).

    A comparison whose outputs cannot be read is left out with a warning, so the tables are still written.
    """
    from vlp_mmt_fairseq.evaluation.bleu import lowercase_normalize_tokenize
    from vlp_mmt_fairseq.evaluation.references import read_lines
    from vlp_mmt_fairseq.evaluation.significance import paired_bootstrap

    ref = next((r for r in rows if r.system == reference), None)
    if ref is None or not ref.finished:
        return {}
    raw_cache: Dict[str, List[str]] = {}
    tok_cache: Dict[str, List[str]] = {}

    def tokenized(path: str, count: int) -> List[str]:
        if path not in tok_cache:
            tok_cache[path] = lowercase_normalize_tokenize(_hypotheses(path, count, raw_cache), lang)
        return tok_cache[path]

    results: Dict[str, dict] = {}
    for row in rows:
        if row.system == reference or not row.finished:
            continue
        for t in test_sets:
            if t not in row.outputs or t not in ref.outputs or t not in ref.tok_references:
                continue
            try:
                references = [" ".join(line.split()) for line in read_lines(ref.tok_references[t])]
                result = paired_bootstrap(tokenized(row.outputs[t], len(references)),
                                          tokenized(ref.outputs[t], len(references)), references)
            except ValueError as e:  # unreadable outputs or references (GenerateOutputError, ReferenceFilesError)
                print(f"warning: no significance test of {row.system} on {t}: {e}")
                continue
            results.setdefault(row.system, {})[t] = result
    return results


def table_records(rows: List[Row], reference: str, test_sets: List[str], probes: List[str],
                  significance: Optional[Dict[str, dict]] = None,
                  image_test_sets: Optional[Sequence[str]] = None) -> List[dict]:
    """Plain records of a table (the JSON and CSV content); ``significance`` from :func:`paired_significance`.

    ``image_test_sets``: the test sets whose images the store holds (None: all); a multimodal row lists the
    others in ``not_available``.
    """
    significance = significance or {}
    reference_intervals = {t: (r.reference_mean, r.reference_ci) for tests in significance.values()
                           for t, r in tests.items()}
    by_name = {r.system: r for r in rows}
    ref = by_name.get(reference)
    records = []
    for row in rows:
        missing = [t for t in test_sets if row.multimodal and image_test_sets is not None
                   and t not in image_test_sets]
        record = {"system": row.system, "label": row.label, "multimodal": row.multimodal,
                  "finished": row.finished, "seconds": row.seconds, "not_available": " ".join(missing)}
        for t in test_sets:
            record[f"{t}_bleu"] = row.bleu.get(t)
            record[f"{t}_meteor"] = row.meteor.get(t)
            record[f"{t}_sacrebleu"] = row.sacrebleu.get(t)
            test = significance.get(row.system, {}).get(t)
            mean_ci = (test.mean, test.ci) if test else (
                reference_intervals.get(t, (None, None)) if row.system == reference else (None, None))
            record[f"{t}_bleu_mean"], record[f"{t}_bleu_ci"] = mean_ci
            record[f"{t}_p_value"] = test.p_value if test else None
            record[f"{t}_significant"] = test.significant if test else None
            record[f"{t}_delta_low"] = test.delta_low if test else None
            record[f"{t}_delta_high"] = test.delta_high if test else None
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


def _bleu_cell(record: dict, t: str) -> str:
    """``35.20 ±0.95*``: BLEU, sacreBLEU's 95% half-width, and the mark of p < 0.05 (where computed)."""
    cell = _number(record[f"{t}_bleu"])
    ci = record.get(f"{t}_bleu_ci")
    if ci is not None:
        cell += f" ±{ci:.2f}"
    if record.get(f"{t}_significant"):
        cell += SIGNIFICANT
    return cell


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
            na = t in r["not_available"].split()
            cells += [NOT_AVAILABLE] * 2 if na else [_bleu_cell(r, t), _number(r[f"{t}_meteor"])]
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
