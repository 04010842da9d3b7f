"""BLEU two ways: sacreBLEU on detokenized text, and the tokenized, lowercased BLEU of MMT papers.

Multi30K's official tokenized references (``*.lc.norm.tok.*``) were made by lowercasing, Moses
``normalize-punctuation.perl`` and Moses ``tokenizer.perl`` (with XML escaping). Hypotheses go
through the same steps (with ``sacremoses``) and are scored with sacreBLEU's ``tokenize="none"``,
which counts the given tokens exactly as ``multi-bleu.perl`` does.
"""

import functools
from typing import List, Tuple


def _sacrebleu_bleu(**kwargs):
    from sacrebleu.metrics import BLEU

    return BLEU(**kwargs)


def detokenized_bleu(hypotheses: List[str], references: List[str]) -> Tuple[float, str]:
    """Cased sacreBLEU (default 13a tokenization) and its signature."""
    bleu = _sacrebleu_bleu()
    score = bleu.corpus_score(hypotheses, [references])
    return score.score, str(bleu.get_signature())


def detokenized_bleu_parts(hypotheses: List[str], references: List[str]) -> dict:
    """Cased sacreBLEU and its parts: the n-gram precisions, the brevity penalty and the length ratio."""
    score = _sacrebleu_bleu().corpus_score(hypotheses, [references])
    return {"bleu": score.score, "precisions": list(score.precisions), "bp": score.bp,
            "ratio": score.sys_len / score.ref_len if score.ref_len else 0.0}


@functools.lru_cache(maxsize=None)
def _moses(lang: str):
    try:
        from sacremoses import MosesPunctNormalizer, MosesTokenizer
    except ImportError as e:
        raise ImportError(
            "tokenized BLEU and METEOR need sacremoses: pip install sacremoses "
            "(or pip install 'vlp_mmt_fairseq[eval]')"
        ) from e
    return MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang)


def moses_version() -> str:
    """The installed sacremoses version, for reports."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sacremoses")
    except PackageNotFoundError:
        return "unknown"


def lowercase_normalize_tokenize(lines: List[str], lang: str) -> List[str]:
    """Lowercase, Moses-normalize punctuation, Moses-tokenize (escaped), like Multi30K's ``tok/`` files."""
    normalizer, tokenizer = _moses(lang)
    return [
        " ".join(tokenizer.tokenize(normalizer.normalize(line.lower()), return_str=True, escape=True).split())
        for line in lines
    ]


def tokenized_bleu_metric():
    """sacreBLEU's BLEU over whitespace tokens, no further tokenization or smoothing (``multi-bleu.perl``)."""
    return _sacrebleu_bleu(tokenize="none", smooth_method="none", lowercase=True, force=True)


def tokenized_bleu(hypotheses: List[str], references: List[str]) -> Tuple[float, str]:
    """BLEU over whitespace tokens, no further tokenization or smoothing (``multi-bleu.perl``)."""
    bleu = tokenized_bleu_metric()
    score = bleu.corpus_score(hypotheses, [references])
    return score.score, str(bleu.get_signature())
