"""Accuracy on the ambiguous words of the toy corpus (``preprocess/make_toy_ambiguity.py``)."""
from typing import List


def read_senses(path: str) -> List[tuple]:
    """Per test line: (ambiguous word, correct translation, all translations of its senses)."""
    senses = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise ValueError(f"{path}:{line_number}: expected 'word<TAB>correct<TAB>sense,sense,...'")
            senses.append((fields[0], fields[1], fields[2].split(",")))
    return senses


def sense_accuracy(hypotheses: List[str], senses_path: str) -> float:
    """Share of hypotheses that use the correct sense's word and no other sense's word."""
    senses = read_senses(senses_path)
    if len(senses) != len(hypotheses):
        raise ValueError(f"{senses_path}: {len(senses)} lines but {len(hypotheses)} hypotheses")
    correct = 0
    for hypothesis, (_, right, options) in zip(hypotheses, senses):
        words = set(hypothesis.split())
        correct += right in words and not any(o in words for o in options if o != right)
    return correct / max(1, len(senses))
