"""BertSourcePairDataset: a text translation pair plus the BERT ids of each source sentence."""
from fairseq.data import FairseqDataset, LanguagePairDataset, data_utils

from vlp_mmt_fairseq.data.pair_dataset_wrapper import PairDatasetWrapper


class BertSourcePairDataset(PairDatasetWrapper):
    """The stock translation pair (its own source and target) and a second, BERT-id source.

    Line i of ``bert_source`` is ``[CLS] x [SEP]`` of sentence i. Each batch's ``net_input``
    gets ``bert_tokens`` (B x S'), right-padded with ``bert_pad`` (BERT uses absolute positions),
    in the row order of the batch's ``src_tokens``.
    """

    def __init__(self, pair: LanguagePairDataset, bert_source: FairseqDataset, bert_pad: int):
        super().__init__(pair)
        if len(bert_source) != len(pair):
            raise ValueError(f"{len(pair)} sentence pairs but {len(bert_source)} BERT sources")
        self.bert_source = bert_source
        self.bert_pad = bert_pad

    def extra_inputs(self, index):
        return {"bert_source": self.bert_source[index]}

    def collate_extra_inputs(self, batch, ordered):
        batch["net_input"]["bert_tokens"] = data_utils.collate_tokens(
            [s["bert_source"] for s in ordered], self.bert_pad, left_pad=False
        )  # B x S': [CLS] x [SEP] [PAD]...
