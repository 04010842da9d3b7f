"""Scoring translations: reading ``fairseq-generate`` output, finding references, BLEU and METEOR."""
