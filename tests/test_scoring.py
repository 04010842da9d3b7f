"""vlp-mmt-score on real Multi30K references: BLEU as sacreBLEU's CLI computes it, tokenized BLEU,
METEOR 1.5 through java, and refusal of generate logs that do not match the references."""

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from utils import REPO_ROOT, SHARED_DIR
from vlp_mmt_fairseq.cli import score
from vlp_mmt_fairseq.evaluation.bleu import lowercase_normalize_tokenize, tokenized_bleu
from vlp_mmt_fairseq.evaluation.meteor import MeteorUnavailable, meteor_score

MULTI30K = SHARED_DIR / "multi30k"


def raw_lines(split: str, lang: str = "de"):
    with gzip.open(MULTI30K / "raw" / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def tok_lines(split: str, lang: str = "de"):
    return (MULTI30K / "tok" / f"{split}.lc.norm.tok.{lang}").read_text(encoding="utf-8").splitlines()


def perturb(lines, seed=0):
    """Damage some sentences: drop a word, shuffle the words, or replace one."""
    rng = random.Random(seed)
    out = []
    for i, line in enumerate(lines):
        words = line.split()
        if i % 3 == 0 and len(words) > 2:
            del words[rng.randrange(len(words))]
        if i % 4 == 0:
            rng.shuffle(words)
        if i % 7 == 0 and words:
            words[rng.randrange(len(words))] = "Zebra"
        out.append(" ".join(words))
    return out


def write_generate_log(path: Path, hypotheses, ids=None, seed=1):
    """A fairseq-generate log: S/H/D/P lines per sentence, in a shuffled (batch-like) order."""
    ids = list(range(len(hypotheses))) if ids is None else ids
    order = list(zip(ids, hypotheses))
    random.Random(seed).shuffle(order)
    with open(path, "w", encoding="utf-8") as f:
        f.write("2024-01-01 | INFO | fairseq_cli.generate | loaded checkpoint\n")
        for i, hyp in order:
            f.write(f"S-{i}\tsource sentence\nH-{i}\t-0.25\t\u2581{hyp}\nD-{i}\t-0.25\t{hyp}\nP-{i}\t-0.1 -0.4\n")
        f.write("Generate test with beam=5: BLEU4 = 0.00\n")


def run_module(module: str, *args, cwd: Path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """One CLI run over two test sets: mscoco perturbed, test2017 identical to its references."""
    tmp = tmp_path_factory.mktemp("score")
    mscoco_hyps = perturb(raw_lines("test_2017_mscoco"))
    write_generate_log(tmp / "gen.mscoco.txt", mscoco_hyps)
    write_generate_log(tmp / "gen.test2017.txt", raw_lines("test_2017_flickr"))
    (tmp / "mscoco.hyp").write_text("\n".join(mscoco_hyps) + "\n", encoding="utf-8")
    done = run_module(
        "vlp_mmt_fairseq.cli.score",
        "--generate-output",
        "gen.mscoco.txt:mscoco",
        "gen.test2017.txt:test2017",
        "--multi30k-dir",
        MULTI30K,
        "--tgt",
        "de",
        "--json",
        "scores.json",
        "--markdown",
        "scores.md",
        cwd=tmp,
    )
    assert done.returncode == 0, done.stderr
    return tmp, done.stdout, json.loads((tmp / "scores.json").read_text(encoding="utf-8"))["test_sets"]


def sacrebleu_cli(reference: Path, hypothesis: Path, *options) -> float:
    sacrebleu = Path(sys.executable).parent / "sacrebleu"
    done = subprocess.run(
        [str(sacrebleu), str(reference), "-i", str(hypothesis), "-b", "-w", "4", *options],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip())


@pytest.mark.slow
def test_bleu_equals_sacrebleu_command_line(scored):
    tmp, _, scores = scored
    reference = tmp / "mscoco.ref"
    reference.write_text("\n".join(raw_lines("test_2017_mscoco")) + "\n", encoding="utf-8")
    expected = sacrebleu_cli(reference, tmp / "mscoco.hyp")
    assert 20 < expected < 95  # really perturbed, still related
    assert round(scores["mscoco"]["bleu"], 4) == pytest.approx(expected, abs=1e-4)
    assert scores["mscoco"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert scores["mscoco"]["n_sentences"] == 461
    assert scores["test2017"]["bleu"] == pytest.approx(100.0)
    assert scores["test2017"]["n_sentences"] == 1000


@pytest.mark.slow
def test_tokenized_bleu(scored):
    _, stdout, scores = scored
    reference = tok_lines("test_2017_mscoco")
    assert tokenized_bleu(reference, reference)[0] == pytest.approx(100.0)
    # The hypothesis pipeline rebuilds the official tokenized text exactly from the raw text.
    assert lowercase_normalize_tokenize(raw_lines("test_2017_mscoco"), "de") == reference
    assert scores["test2017"]["bleu_tok"] == pytest.approx(100.0)
    assert 20 < scores["mscoco"]["bleu_tok"] < 95
    assert "tok:none" in scores["mscoco"]["bleu_tok_signature"]
    assert "comparable to the paper" in stdout


@pytest.mark.slow
def test_tokenized_bleu_equals_sacrebleu_on_tokens(scored, tmp_path):
    _, _, scores = scored
    hyp_tok = lowercase_normalize_tokenize(perturb(raw_lines("test_2017_mscoco")), "de")
    (tmp_path / "hyp.tok").write_text("\n".join(hyp_tok) + "\n", encoding="utf-8")
    expected = sacrebleu_cli(
        MULTI30K / "tok" / "test_2017_mscoco.lc.norm.tok.de", tmp_path / "hyp.tok", "-tok", "none", "-s", "none"
    )
    assert round(scores["mscoco"]["bleu_tok"], 4) == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_meteor(scored):
    _, stdout, scores = scored
    identical, perturbed = scores["test2017"], scores["mscoco"]
    assert identical["meteor"] == pytest.approx(1.0, abs=1e-3)
    assert 0 < perturbed["meteor"] < identical["meteor"] - 0.05
    for record in (identical, perturbed):
        assert record["meteor_skipped_reason"] is None
        assert record["meteor_settings"].startswith("meteor-1.5-wo-de-norm-0.95_1.0_0.55_0.55-ex_st-1.0_0.8")
    assert "-m 'exact stem'" in stdout
    with open(scored[0] / "scores.md", encoding="utf-8") as f:
        markdown = f.read()
    assert "| mscoco | 461 |" in markdown and f"{100 * perturbed['meteor']:.2f}" in markdown


def test_meteor_without_java_is_skipped_with_reason():
    with pytest.raises(MeteorUnavailable, match="java"):
        meteor_score(["ein hund ."], ["ein hund ."], "de", java="no-such-java-binary")


def test_mismatched_generate_logs_are_refused(tmp_path, capsys):
    # In-process (the same cli_main as the console script): a subprocess would spend its time
    # importing torch and fairseq before failing.
    references = raw_lines("test_2017_mscoco")
    write_generate_log(
        tmp_path / "missing.txt", references[:17] + references[18:], ids=[i for i in range(461) if i != 17]
    )
    write_generate_log(tmp_path / "extra.txt", raw_lines("test_2017_flickr") + ["Ein Satz zu viel."])
    output = tmp_path / "scores.json"
    with pytest.raises(SystemExit) as exit_info:
        score.cli_main(
            [
                "--generate-output",
                f"{tmp_path / 'missing.txt'}:mscoco",
                f"{tmp_path / 'extra.txt'}:test2017",
                "--multi30k-dir",
                str(MULTI30K),
                "--tgt",
                "de",
                "--json",
                str(output),
            ]
        )
    assert exit_info.value.code != 0
    stderr = capsys.readouterr().err
    assert "missing.txt: 460 hypotheses" in stderr and "461 sentences" in stderr
    assert "missing ids: 17" in stderr
    assert "extra.txt: 1001 hypotheses" in stderr and "extra ids: 1000" in stderr
    assert not output.exists()


def test_duplicate_sentence_id_is_refused(tmp_path, capsys):
    log = tmp_path / "twice.txt"
    write_generate_log(log, raw_lines("test_2017_mscoco"))
    with open(log, "a", encoding="utf-8") as f:
        f.write("D-5\t-0.5\tnoch einmal\n")
    with pytest.raises(SystemExit) as exit_info:
        score.cli_main(["--generate-output", f"{log}:mscoco", "--multi30k-dir", str(MULTI30K), "--tgt", "de"])
    assert exit_info.value.code != 0
    assert "sentence id 5 appears twice" in capsys.readouterr().err
