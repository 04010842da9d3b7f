"""Object tags to WordPiece ids, with the BERT tokenizer loaded lazily (and not pickled to data workers)."""
from typing import List


class TagEncoder:
    """``encoder(tag)``: WordPiece ids of one object tag, without special tokens."""

    def __init__(self, bert_model: str):
        self.bert_model = bert_model
        self._tokenizer = None

    def __call__(self, tag: str) -> List[int]:
        if self._tokenizer is None:
            from vlp_mmt_fairseq.bert_loading import load_bert_tokenizer

            self._tokenizer = load_bert_tokenizer(self.bert_model)
        return self._tokenizer(tag, add_special_tokens=False)["input_ids"]

    def __getstate__(self):
        return {"bert_model": self.bert_model, "_tokenizer": None}  # each data worker loads its own
