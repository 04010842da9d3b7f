"""vlp_mmt_fairseq/evaluation/significance.py: the paired bootstrap agrees with an independent numpy bootstrap
(own BLEU, own p-value and intervals, the same resample indices) and with sacrebleu's own CLI; identical outputs
get p = 1; a system worse on every sentence is significantly worse."""
import json
import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from vlp_mmt_fairseq.evaluation.significance import N_RESAMPLES, paired_bootstrap, paired_bootstrap_detokenized

SENTENCES = 300


@pytest.fixture(scope="module")
def tok_references(multi30k_dir) -> list:
    lines = (multi30k_dir / "tok" / "test_2016_flickr.lc.norm.tok.de").read_text(encoding="utf-8").splitlines()
    return [" ".join(line.split()) for line in lines[:SENTENCES]]


def drop_words(references, every: int, offset: int) -> list:
    """Damaged copies: sentence i loses its last word when i % every == offset, and its first when i % 7 == 0."""
    out = []
    for i, ref in enumerate(references):
        words = ref.split()
        if i % every == offset and len(words) > 2:
            words = words[:-1]
        if i % 7 == 0 and offset == 0 and len(words) > 2:
            words = words[1:]
        out.append(" ".join(words))
    return out


# ----------------------------------------------------------------------------- the second computation


def sentence_stats(hypothesis: str, reference: str) -> list:
    """[hyp length, ref length, matches_1, total_1, ..., matches_4, total_4] as multi-bleu.perl counts them."""
    hyp, ref = hypothesis.split(), reference.split()
    stats = [len(hyp), len(ref)]
    for n in range(1, 5):
        h = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        stats += [sum(min(c, r[g]) for g, c in h.items()), max(0, len(hyp) - n + 1)]
    return stats


def bleu_of(stats: np.ndarray) -> float:
    hyp_len, ref_len = stats[0], stats[1]
    precisions = [stats[2 + 2 * k] / stats[3 + 2 * k] for k in range(4)]
    if min(precisions) == 0:
        return 0.0
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * brevity * math.exp(sum(math.log(p) for p in precisions) / 4)


def numpy_bootstrap(system, baseline, references, seed=12345, n=N_RESAMPLES) -> dict:
    """Koehn's paired bootstrap written out: same seed and index draw as sacreBLEU, everything else our own."""
    sys_stats = np.array([sentence_stats(h, r) for h, r in zip(system, references)], dtype=np.float64)
    base_stats = np.array([sentence_stats(h, r) for h, r in zip(baseline, references)], dtype=np.float64)
    idxs = np.random.default_rng(seed).choice(len(references), size=(n, len(references)), replace=True)
    sys_scores = np.array([bleu_of(sys_stats[i].sum(0)) for i in idxs])
    base_scores = np.array([bleu_of(base_stats[i].sum(0)) for i in idxs])
    observed = abs(bleu_of(sys_stats.sum(0)) - bleu_of(base_stats.sum(0)))
    diffs = np.abs(sys_scores - base_scores)
    p = (np.sum(diffs - diffs.mean() > observed) + 1) / (n + 1)
    lo = n // 40  # 2.5% from each end of the sorted samples
    ordered = np.sort(sys_scores)
    delta = np.sort(sys_scores - base_scores)
    return {"bleu": bleu_of(sys_stats.sum(0)), "mean": sys_scores.mean(), "ci": (ordered[n - lo - 1] - ordered[lo]) / 2,
            "p": p, "delta_low": delta[lo], "delta_high": delta[n - lo - 1]}


# ----------------------------------------------------------------------------- tests


def test_paired_bootstrap_matches_an_independent_numpy_bootstrap(tok_references):
    system = drop_words(tok_references, 3, 0)
    baseline = drop_words(tok_references, 2, 1)
    result = paired_bootstrap(system, baseline, tok_references)
    expected = numpy_bootstrap(system, baseline, tok_references)
    assert result.n_resamples == 1000 and result.seed == 12345
    assert result.bleu == pytest.approx(expected["bleu"], abs=1e-6)
    assert result.mean == pytest.approx(expected["mean"], abs=1e-4)
    assert result.ci == pytest.approx(expected["ci"], abs=1e-4)
    assert result.interval == pytest.approx((expected["mean"] - expected["ci"], expected["mean"] + expected["ci"]),
                                            abs=1e-4)
    assert result.p_value == pytest.approx(expected["p"])
    assert (result.delta_low, result.delta_high) == pytest.approx((expected["delta_low"], expected["delta_high"]),
                                                                  abs=1e-4)
    assert result.delta_low < result.delta < result.delta_high
    assert "bs:1000" in result.signature and "tok:none" in result.signature and "case:lc" in result.signature


@pytest.mark.slow
def test_paired_bootstrap_matches_sacrebleus_cli(tok_references, tmp_path):
    system = drop_words(tok_references, 3, 0)
    baseline = drop_words(tok_references, 2, 1)
    for name, lines in (("refs", tok_references), ("base", baseline), ("sys", system)):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(tmp_path / "refs"), "-i", str(tmp_path / "base"), str(tmp_path / "sys"),
         "--paired-bs", "-m", "bleu", "-tok", "none", "-lc", "--smooth-method", "none", "--force", "-f", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True).stdout
    baseline_row, cli_sys = (row["BLEU"] for row in json.loads(out))  # baseline first, then the system
    result = paired_bootstrap(system, baseline, tok_references)
    assert baseline_row["score"] == pytest.approx(result.reference_bleu, abs=0.01)
    assert baseline_row["ci"] == pytest.approx(result.reference_ci, abs=0.01)
    assert cli_sys["score"] == pytest.approx(result.bleu, abs=0.01)
    assert cli_sys["mean"] == pytest.approx(result.mean, abs=0.01)
    assert cli_sys["ci"] == pytest.approx(result.ci, abs=0.01)
    assert cli_sys["p_value"] == pytest.approx(result.p_value, abs=1e-4)


def test_identical_outputs_get_p_one(tok_references):
    system = drop_words(tok_references, 3, 0)
    result = paired_bootstrap(system, list(system), tok_references)
    assert result.identical and result.p_value == 1.0 and not result.significant
    assert result.delta == 0.0 and result.delta_low == 0.0 and result.delta_high == 0.0


def test_a_system_worse_on_every_sentence_is_significantly_worse(tok_references):
    baseline = [" ".join(r.split()[:-1]) for r in tok_references]
    worse = [" ".join(r.split()[:-2]) for r in tok_references]  # one more word missing on every sentence
    result = paired_bootstrap(worse, baseline, tok_references)
    assert result.p_value < 0.05 and result.significant
    assert result.delta < 0 and result.delta_high < 0


def test_detokenized_outputs_are_tokenized_as_vlp_mmt_score_does(multi30k_dir):
    import gzip

    with gzip.open(multi30k_dir / "raw" / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
        raw = f.read().splitlines()[:100]
    tok = (multi30k_dir / "tok" / "test_2016_flickr.lc.norm.tok.de").read_text(encoding="utf-8").splitlines()[:100]
    result = paired_bootstrap_detokenized(raw, [" ".join(s.split()[:-1]) for s in raw], tok, "de")
    assert result.bleu > 95  # the raw references, tokenized, give back the tok/ references (nearly) exactly
    assert result.delta > 0 and result.p_value < 0.05


def test_mismatched_lengths_are_refused(tok_references):
    with pytest.raises(ValueError, match="must be the same sentences"):
        paired_bootstrap(tok_references[:10], tok_references[:9], tok_references[:10])
