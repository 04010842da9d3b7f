"""Reading the hypotheses out of a ``fairseq-generate`` log.

fairseq-generate prints, per sentence, ``D-<id>\\t<score>\\t<text>``: the hypothesis after
``--post-process`` (detokenized when run with ``--post-process sentencepiece``). Sentences come out
in batch order, so they are sorted back by id.
"""

from typing import Dict, List

from vlp_mmt_fairseq.errors import PluginError


class GenerateOutputError(PluginError, ValueError):
    """A generate log is unreadable or does not match its references; the message names the file."""


def _describe_ids(ids: List[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def parse_detokenized_hypotheses(path: str) -> Dict[int, str]:
    """Map sentence id -> hypothesis for every ``D-`` line of ``path``."""
    hypotheses: Dict[int, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if not line.startswith("D-"):
                    continue
                fields = line.rstrip("\r\n").split("\t", 2)
                id_text = fields[0][2:]
                if len(fields) < 2 or not id_text.isdigit():
                    raise GenerateOutputError(
                        f"{path}:{line_number}: expected 'D-<id>\\t<score>\\t<text>', got {line.strip()[:80]!r}"
                    )
                sentence_id = int(id_text)
                if sentence_id in hypotheses:
                    raise GenerateOutputError(
                        f"{path}:{line_number}: sentence id {sentence_id} appears twice (generated with "
                        "--nbest > 1, or two logs concatenated?); one hypothesis per sentence is scored"
                    )
                hypotheses[sentence_id] = fields[2].rstrip() if len(fields) == 3 else ""
    except UnicodeDecodeError as e:
        raise GenerateOutputError(f"{path}: not UTF-8 text ({e})") from e
    except OSError as e:
        raise GenerateOutputError(f"{path}: cannot read it ({e})") from e
    return hypotheses


def read_detokenized_hypotheses(path: str, expected_count: int, references: str = "the references") -> List[str]:
    """The hypotheses of ``path`` in id order; ids must be exactly ``0 .. expected_count - 1``."""
    hypotheses = parse_detokenized_hypotheses(path)
    if not hypotheses:
        raise GenerateOutputError(
            f"{path}: no 'D-<id>' lines; is it the output of fairseq-generate (run with --post-process)?"
        )
    expected = set(range(expected_count))
    missing = sorted(expected - hypotheses.keys())
    extra = sorted(hypotheses.keys() - expected)
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing ids: {_describe_ids(missing)}")
        if extra:
            problems.append(f"extra ids: {_describe_ids(extra)}")
        raise GenerateOutputError(
            f"{path}: {len(hypotheses)} hypotheses, but {references} have {expected_count} sentences "
            f"(ids 0..{expected_count - 1}); " + "; ".join(problems)
        )
    return [hypotheses[i] for i in range(expected_count)]


def looks_undetokenized(hypotheses: List[str]) -> bool:
    """True when many hypotheses still hold sentencepiece or BPE markers (``--post-process`` forgotten)."""
    marked = sum(1 for h in hypotheses if "\u2581" in h or "@@ " in h)
    return marked > len(hypotheses) // 10
