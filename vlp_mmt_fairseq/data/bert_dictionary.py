"""A fairseq Dictionary whose indices are exactly a BERT WordPiece vocabulary's ids.

fairseq's own Dictionary puts ``<s> <pad> </s> <unk>`` at 0-3, which would shift every BERT id.
This one is built from ``vocab.txt`` (or a WordPiece ``tokenizer.json``) in order, with BERT's special tokens in
fairseq's roles:
``pad=[PAD]``, ``bos=[CLS]``, ``eos=[SEP]``, ``unk=[UNK]``. A binarized source is therefore the
exact id sequence ``[CLS] x [SEP]`` that BERT expects, with no fairseq end-of-sentence token.
"""
from fairseq.data import Dictionary

from vlp_mmt_fairseq.errors import PluginError

BERT_SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")


class BertVocabularyError(PluginError, ValueError):
    """A vocabulary file that is not BERT's; the message names it."""


class BertDictionary(Dictionary):
    """fairseq Dictionary over a BERT ``vocab.txt`` or WordPiece ``tokenizer.json``, index == BERT id."""

    def __init__(self, vocab_file: str):
        from vlp_mmt_fairseq.bert_loading import read_wordpiece_vocab

        super().__init__()
        self.symbols, self.count, self.indices = [], [], {}
        for token in read_wordpiece_vocab(vocab_file):
            self.indices.setdefault(token, len(self.symbols))
            self.symbols.append(token)
            self.count.append(1)
        missing = [t for t in BERT_SPECIALS if t not in self.indices]
        if missing:
            raise BertVocabularyError(f"{vocab_file}: not a BERT vocabulary, missing {missing}")
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
        """The dictionary of a BERT directory or ``--bert-model`` name (vocab.txt, else tokenizer.json)."""
        from vlp_mmt_fairseq.bert_loading import bert_vocab_file

        return cls(bert_vocab_file(bert_dir))

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
