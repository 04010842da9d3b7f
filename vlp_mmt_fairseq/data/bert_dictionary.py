"""A fairseq Dictionary whose indices are exactly a BERT WordPiece vocabulary's ids.

fairseq's own Dictionary puts ``<s> <pad> </s> <unk>`` at 0-3, which would shift every BERT id.
This one is built from ``vocab.txt`` in order, with BERT's special tokens in fairseq's roles:
``pad=[PAD]``, ``bos=[CLS]``, ``eos=[SEP]``, ``unk=[UNK]``. A binarized source is therefore the
exact id sequence ``[CLS] x [SEP]`` that BERT expects, with no fairseq end-of-sentence token.
"""
import os

from fairseq.data import Dictionary

BERT_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")


class BertDictionary(Dictionary):
    """fairseq Dictionary over a BERT ``vocab.txt``, index == BERT id."""

    def __init__(self, vocab_file: str):
        super().__init__()
        self.symbols, self.count, self.indices = [], [], {}
        with open(vocab_file, encoding="utf-8") as f:
            for line in f:
                token = line.rstrip("\n")
                self.indices.setdefault(token, len(self.symbols))
                self.symbols.append(token)
                self.count.append(1)
        missing = [t for t in BERT_SPECIALS if t not in self.indices]
        if missing:
            raise ValueError(f"{vocab_file}: not a BERT vocabulary, missing {missing}")
        self.pad_word, self.bos_word, self.eos_word, self.unk_word = "[PAD]", "[CLS]", "[SEP]", "[UNK]"
        self.pad_index = self.indices["[PAD]"]
        self.bos_index = self.indices["[CLS]"]
        self.eos_index = self.indices["[SEP]"]
        self.unk_index = self.indices["[UNK]"]
        self.mask_index = self.indices["[MASK]"]
        self.nspecial = 0
        self.vocab_file = vocab_file

    @classmethod
    def from_bert_dir(cls, bert_dir: str) -> "BertDictionary":
        return cls(os.path.join(bert_dir, "vocab.txt"))

    def string(self, tensor, bpe_symbol=None, escape_unk=False, extra_symbols_to_ignore=None,
               unk_string=None, include_eos=False, separator=" "):
        """Readable text: specials dropped and WordPieces (``##x``) joined to their word."""
        if tensor.dim() == 2:
            return "\n".join(self.string(t) for t in tensor)
        specials = {self.pad_index, self.bos_index, self.eos_index}
        pieces = [self.symbols[i] for i in tensor.tolist() if i not in specials]
        return " ".join(pieces).replace(" ##", "")

    def save(self, f):
        """Write the vocabulary in id order, one token per line (the file BERT reads)."""
        if isinstance(f, str):
            with open(f, "w", encoding="utf-8") as fd:
                return self.save(fd)
        for token in self.symbols:
            print(token, file=f)
