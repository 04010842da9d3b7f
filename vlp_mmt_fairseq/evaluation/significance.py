"""Paired bootstrap resampling of the tokenized, lowercased BLEU, with sacreBLEU's own implementation.

:func:`paired_bootstrap` runs ``sacrebleu.significance.PairedTest`` (what ``sacrebleu --paired-bs`` runs:
Koehn (2004), as Moses' ``bootstrap-hypothesis-difference-significance.pl``) on a system and a reference system,
both Moses-tokenized like the official ``tok/`` references, with the BLEU of :func:`tokenized_bleu_metric`. From
sacreBLEU it takes the p-value and the system's 95% interval (``mean +- ci`` over the resamples). From the *same*
resamples (sacreBLEU's seed, default 12345 or ``$SACREBLEU_SEED``, and its index draw) it adds the interval of the
difference system - reference, with sacreBLEU's own percentile rule.

Two systems with identical outputs get p = 1: sacreBLEU's p-value is ``(c + 1) / (n + 1)`` with ``c`` the resamples
whose centred difference *exceeds* the observed one, which for identical outputs is 1 / 1001 and would read as
significant.
"""
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import List, Sequence, Tuple

import numpy as np

from vlp_mmt_fairseq.evaluation.bleu import tokenized_bleu_metric

#: resamples of the paired bootstrap (sacreBLEU's default)
N_RESAMPLES = 1000
#: the significance level marked in the tables
ALPHA = 0.05


@dataclass
class PairedBootstrapResult:
    """One system against a reference system on one test set (BLEU in points)."""

    bleu: float  # the system's corpus BLEU
    reference_bleu: float
    mean: float  # sacreBLEU's mean BLEU over the resamples
    ci: float  # sacreBLEU's 95% half-width: it reports "mean +- ci"
    reference_mean: float
    reference_ci: float
    delta: float  # bleu - reference_bleu
    delta_low: float  # the 95% interval of (system - reference) over the same resamples
    delta_high: float
    p_value: float
    identical: bool  # identical outputs: p = 1
    n_resamples: int
    seed: int
    signature: str

    @property
    def interval(self) -> Tuple[float, float]:
        """The system's 95% interval as sacreBLEU reports it: mean - ci .. mean + ci."""
        return self.mean - self.ci, self.mean + self.ci

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def as_dict(self) -> dict:
        return dict(asdict(self), significant=self.significant)


def percentile_interval(samples: np.ndarray) -> Tuple[float, float]:
    """The 95% interval of bootstrap samples by sacreBLEU's rule (``estimate_ci``: the n//40-th from each end)."""
    ordered = np.sort(samples)
    lower = len(ordered) // 40
    return float(ordered[lower]), float(ordered[len(ordered) - lower - 1])


def resample_indices(n_sentences: int, n_resamples: int, seed: int) -> np.ndarray:
    """The sentence indices of every resample, drawn exactly as sacreBLEU's paired bootstrap draws them."""
    return np.random.default_rng(seed).choice(n_sentences, size=(n_resamples, n_sentences), replace=True)


def resampled_scores(metric, hypotheses: Sequence[str], references: Sequence[str], idxs: np.ndarray) -> np.ndarray:
    """The metric on every resample (sacreBLEU's sufficient statistics, summed over each resample)."""
    stats = np.array(metric._extract_corpus_statistics(list(hypotheses), [list(references)]), dtype="float32")
    return np.array([metric._compute_score_from_stats(s.sum(0)).score for s in stats[idxs]])


@contextlib.contextmanager
def _quiet_sacrebleu():
    """sacreBLEU logs every step of a paired test at INFO; a table of many comparisons needs none of it."""
    log = logging.getLogger("sacrebleu")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def paired_bootstrap(system: Sequence[str], reference_system: Sequence[str], references: Sequence[str],
                     n_resamples: int = N_RESAMPLES) -> PairedBootstrapResult:
    """Paired bootstrap of ``system`` against ``reference_system``: tokenized texts, one line per sentence."""
    from sacrebleu.significance import PairedTest

    if not (len(system) == len(reference_system) == len(references)):
        raise ValueError(f"paired bootstrap: {len(system)} system lines, {len(reference_system)} reference-system "
                         f"lines and {len(references)} references; they must be the same sentences")
    if not references:
        raise ValueError("paired bootstrap: no sentences")
    metric = tokenized_bleu_metric()
    with _quiet_sacrebleu():
        test = PairedTest([("reference", list(reference_system)), ("system", list(system))], {"BLEU": metric},
                          references=[list(references)], test_type="bs", n_samples=n_resamples)
        signatures, results = test()
    name = next(k for k in results if k != "System")
    reference_result, system_result = results[name]
    seed = test._seed if test._seed else None  # as PairedTest passes it to its resampling
    if seed is None:
        raise ValueError("paired bootstrap: SACREBLEU_SEED is 'none' or 0, so the resamples cannot be drawn again "
                         "for the difference interval; set SACREBLEU_SEED to a number")
    idxs = resample_indices(len(references), n_resamples, seed)
    system_scores = resampled_scores(metric, system, references, idxs)
    reference_scores = resampled_scores(metric, reference_system, references, idxs)
    if not np.isclose(system_scores.mean(), system_result.mean, atol=1e-6):
        raise RuntimeError(f"paired bootstrap: the redrawn resamples give mean BLEU {system_scores.mean():.6f}, "
                           f"sacreBLEU's gave {system_result.mean:.6f}; this sacrebleu draws them differently")
    delta_low, delta_high = percentile_interval(system_scores - reference_scores)
    identical = list(system) == list(reference_system)
    return PairedBootstrapResult(
        bleu=float(system_result.score), reference_bleu=float(reference_result.score),
        mean=float(system_result.mean), ci=float(system_result.ci),
        reference_mean=float(reference_result.mean), reference_ci=float(reference_result.ci),
        delta=float(system_result.score - reference_result.score), delta_low=delta_low, delta_high=delta_high,
        p_value=1.0 if identical else float(system_result.p_value), identical=identical, n_resamples=n_resamples,
        seed=int(seed), signature=str(signatures[name]),
    )


def paired_bootstrap_detokenized(system: List[str], reference_system: List[str], tok_references: List[str],
                                 lang: str, n_resamples: int = N_RESAMPLES) -> PairedBootstrapResult:
    """:func:`paired_bootstrap` on detokenized hypotheses (``fairseq-generate --post-process`` output), which are
    lowercased and Moses-tokenized as ``vlp-mmt-score`` does, against the official tokenized references."""
    from vlp_mmt_fairseq.evaluation.bleu import lowercase_normalize_tokenize

    references = [" ".join(line.split()) for line in tok_references]
    return paired_bootstrap(lowercase_normalize_tokenize(system, lang),
                            lowercase_normalize_tokenize(reference_system, lang), references, n_resamples)
