"""Score ``fairseq-generate`` outputs on one or several Multi30K test sets, in one command.

Example::

    vlp-mmt-score --generate-output gen.test2016.txt:test2016 gen.mscoco.txt:mscoco \\
        --multi30k-dir ../shared/multi30k --tgt de --json scores.json --markdown scores.md

Per test set it reports detokenized cased sacreBLEU (with its signature), the lowercased tokenized
BLEU that MMT papers report, and METEOR 1.5 (skipped, with the reason, without java or the jar).
"""

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

from vlp_mmt_fairseq.evaluation.generate_output import (
    GenerateOutputError,
    looks_undetokenized,
    read_detokenized_hypotheses,
)
from vlp_mmt_fairseq.evaluation.references import TEST_SETS, ReferenceFilesError, References, load_references

PROG = "vlp-mmt-score"
BLEU_TOK_LABEL = "BLEU tok (lowercased, tokenized; comparable to the paper)"


@dataclass
class ScoresOfTestSet:
    """Everything reported for one test set (the JSON record)."""

    hypotheses: str
    raw_references: str
    tok_references: str
    n_sentences: int
    bleu: float
    signature: str
    bleu_tok: float
    bleu_tok_signature: str
    meteor: Optional[float]
    meteor_settings: Optional[str]
    meteor_skipped_reason: Optional[str]


def parse_output_spec(spec: str) -> Tuple[str, str]:
    """``FILE:TESTSET`` -> (file, test set); the last colon separates them."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise argparse.ArgumentTypeError(
            f"'{spec}' is not FILE:TESTSET (test sets: {', '.join(TEST_SETS)}, or a split name)"
        )
    return path, name


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--generate-output",
        nargs="+",
        required=True,
        type=parse_output_spec,
        metavar="FILE:TESTSET",
        help="fairseq-generate output (run with --post-process sentencepiece) and its test set: "
        + ", ".join(f"{k} ({v})" for k, v in TEST_SETS.items()),
    )
    refs = parser.add_mutually_exclusive_group(required=True)
    refs.add_argument("--multi30k-dir", help="Multi30K data/task1 directory (raw/*.gz, tok/*.lc.norm.tok.*)")
    refs.add_argument(
        "--refs-dir", help="data directory written by prepare_multi30k.py (raw/{split}.{lang}, tok/{split}.{lang})"
    )
    parser.add_argument("--tgt", required=True, help="target language, e.g. de or fr")
    parser.add_argument("--json", metavar="FILE", help="also write the scores as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    parser.add_argument("--no-meteor", action="store_true", help="do not compute METEOR")
    parser.add_argument("--meteor-jar", help="meteor-1.5.jar (default: the one in the pycocoevalcap package)")
    parser.add_argument("--java", default="java", help="java executable for METEOR (default: java)")
    return parser


def _load_test_set(path: str, name: str, args) -> Tuple[List[str], References]:
    references = load_references(name, args.tgt, multi30k_dir=args.multi30k_dir, refs_dir=args.refs_dir)
    hypotheses = read_detokenized_hypotheses(
        path, len(references.raw), references=f"the {name} references ({references.raw_path})"
    )
    if looks_undetokenized(hypotheses):
        print(
            f"{PROG}: warning: {path}: hypotheses still contain sentencepiece/BPE markers; "
            "was fairseq-generate run with --post-process sentencepiece?",
            file=sys.stderr,
        )
    return hypotheses, references


def load_all(outputs: List[Tuple[str, str]], args) -> List[tuple]:
    """Read and check every (file, test set) before any scoring; one error lists every bad file."""
    loaded, problems = [], []
    for path, name in outputs:
        try:
            loaded.append((path, name) + _load_test_set(path, name, args))
        except (GenerateOutputError, ReferenceFilesError) as e:
            problems.append(str(e))
    if problems:
        raise GenerateOutputError("\n".join(problems))
    return loaded


def _meteor(hyp_tok: List[str], ref_tok: List[str], args) -> Tuple[Optional[float], Optional[str], Optional[str]]:
    """(score, settings, skipped reason) -- exactly one of settings and reason is set."""
    from vlp_mmt_fairseq.evaluation.meteor import MeteorUnavailable, meteor_score

    if args.no_meteor:
        return None, None, "not computed (--no-meteor)"
    try:
        result = meteor_score(hyp_tok, ref_tok, args.tgt, jar=args.meteor_jar, java=args.java)
    except MeteorUnavailable as e:
        return None, None, str(e)
    return result.score, result.settings, None


def score_test_set(path: str, hypotheses: List[str], references: References, args) -> ScoresOfTestSet:
    """All metrics of one test set."""
    from vlp_mmt_fairseq.evaluation.bleu import detokenized_bleu, lowercase_normalize_tokenize, tokenized_bleu

    bleu, signature = detokenized_bleu(hypotheses, references.raw)
    hyp_tok = lowercase_normalize_tokenize(hypotheses, args.tgt)
    ref_tok = [" ".join(line.split()) for line in references.tok]
    bleu_tok, tok_signature = tokenized_bleu(hyp_tok, ref_tok)
    meteor, meteor_settings, skipped = _meteor(hyp_tok, ref_tok, args)
    return ScoresOfTestSet(
        hypotheses=path,
        raw_references=references.raw_path,
        tok_references=references.tok_path,
        n_sentences=len(hypotheses),
        bleu=bleu,
        signature=signature,
        bleu_tok=bleu_tok,
        bleu_tok_signature=tok_signature,
        meteor=meteor,
        meteor_settings=meteor_settings,
        meteor_skipped_reason=skipped,
    )


def _rows(scores: dict) -> List[List[str]]:
    header = ["test set", "sentences", "BLEU", "BLEU tok", "METEOR x100"]
    rows = [header]
    for name, s in scores.items():
        meteor = "-" if s.meteor is None else f"{100 * s.meteor:.2f}"
        rows.append([name, str(s.n_sentences), f"{s.bleu:.2f}", f"{s.bleu_tok:.2f}", meteor])
    return rows


def _notes(scores: dict) -> List[str]:
    from vlp_mmt_fairseq.evaluation.bleu import moses_version

    first = next(iter(scores.values()))
    notes = [
        f"BLEU: sacreBLEU on detokenized, cased text against the raw references; signature {first.signature}",
        f"{BLEU_TOK_LABEL}: hypotheses lowercased, punctuation-normalized and Moses-tokenized "
        f"(sacremoses {moses_version()}) like the official tokenized references, BLEU over those tokens "
        f"as multi-bleu.perl counts them; signature {first.bleu_tok_signature}",
    ]
    settings = {s.meteor_settings for s in scores.values() if s.meteor_settings}
    notes += [f"METEOR 1.5 on the tokenized lowercased text: {setting}" for setting in sorted(settings)]
    notes += [
        f"METEOR skipped for {name}: {s.meteor_skipped_reason}" for name, s in scores.items() if s.meteor_skipped_reason
    ]
    return notes


def format_table(scores: dict) -> str:
    """Aligned plain-text table plus notes on the metrics."""
    rows = _rows(scores)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [""] + _notes(scores)) + "\n"


def format_markdown(scores: dict) -> str:
    """The same table as Markdown."""
    rows = _rows(scores)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(rows[0]) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines + [""] + [f"- {note}" for note in _notes(scores)]) + "\n"


def _write_text(path: str, text: str) -> None:
    from vlp_mmt_fairseq.file_utils import atomic_output

    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def main(args) -> dict:
    """Score every ``--generate-output``; returns {test set: ScoresOfTestSet}."""
    names = [name for _, name in args.generate_output]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GenerateOutputError(f"test set given more than once: {', '.join(duplicates)}")
    loaded = load_all(args.generate_output, args)
    scores = {name: score_test_set(path, hyps, refs, args) for path, name, hyps, refs in loaded}
    sys.stdout.write(format_table(scores))
    if args.json:
        record = {"target_language": args.tgt, "test_sets": {name: asdict(s) for name, s in scores.items()}}
        _write_text(args.json, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    if args.markdown:
        _write_text(args.markdown, format_markdown(scores))
    return scores


def cli_main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    try:
        main(args)
    except (GenerateOutputError, ReferenceFilesError, ImportError, RuntimeError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli_main()
