"""Task ``bert_fused_translation``: stock translation data plus the BERT ids of every source sentence.

Data (written by ``preprocess/prepare_multi30k.py``, see docs/data.md): the data directory is
``OUT/text`` (fairseq-preprocess'ed SentencePiece source and target, as for ``--task translation``);
the BERT-id sources ``{split}.{src}-{tgt}.{src}.bin|idx`` (``[CLS] x [SEP]``) are read from
``--bert-data``, by default ``OUT/bert`` beside it.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq import utils
from fairseq.data import data_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from vlp_mmt_fairseq.bert_loading import bert_vocab_file
from vlp_mmt_fairseq.data.bert_dictionary import BertDictionary
from vlp_mmt_fairseq.data.bert_source_pair_dataset import BertSourcePairDataset
from vlp_mmt_fairseq.dataclass.configs import BertConfig

logger = logging.getLogger(__name__)


@dataclass
class BertFusedTranslationConfig(TranslationConfig, BertConfig):
    bert_data: Optional[str] = field(
        default=None,
        metadata={"help": "directory of the BERT-id sources {split}.{src}-{tgt}.{src}.bin/.idx "
                          "(default: the 'bert' directory beside the data directory)"},
    )


@register_task("bert_fused_translation", dataclass=BertFusedTranslationConfig)
class BertFusedTranslationTask(TranslationTask):
    """Translation whose batches also carry the source as BERT ids.

    Source and target are the stock ``translation`` task's; each batch's ``net_input`` adds
    ``bert_tokens`` (B x S', ``[CLS] x [SEP]`` right-padded with BERT's ``[PAD]``), row b being
    the same sentence as row b of ``src_tokens``.
    """

    cfg: BertFusedTranslationConfig

    def __init__(self, cfg: BertFusedTranslationConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.bert_dictionary = BertDictionary(bert_vocab_file(cfg.bert_model))

    def bert_data_dir(self, data_path: str) -> str:
        """Where the BERT-id sources of the data directory ``data_path`` are."""
        if self.cfg.bert_data:
            return self.cfg.bert_data
        return os.path.normpath(os.path.join(data_path, os.pardir, "bert"))

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        paths = utils.split_paths(self.cfg.data)
        if split != self.cfg.train_subset:
            paths = paths[:1]  # as TranslationTask does
        data_path = paths[(epoch - 1) % len(paths)]
        pair = self.datasets[split]
        bert_source = self.load_bert_source(split, data_path, len(pair))
        self.datasets[split] = BertSourcePairDataset(pair, bert_source, self.bert_dictionary.pad())

    def load_bert_source(self, split: str, data_path: str, num_sentences: int):
        """The BERT-id source of ``split``, checked against the text source and ``--bert-model``."""
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        bert_dir = self.bert_data_dir(data_path)
        prefix = os.path.join(bert_dir, f"{split}.{src}-{tgt}.{src}")
        self.check_bert_vocabulary(os.path.join(bert_dir, f"dict.{src}.txt"))
        dataset = data_utils.load_indexed_dataset(prefix, self.bert_dictionary, self.cfg.dataset_impl)
        if dataset is None:
            raise FileNotFoundError(
                f"{prefix}.bin/.idx: no BERT-id source for split '{split}' (preprocess/prepare_multi30k.py "
                "writes them to OUT/bert; point --bert-data at that directory)"
            )
        if len(dataset) != num_sentences:
            raise ValueError(
                f"{prefix}.bin has {len(dataset)} sentences but the text source "
                f"{text_source_prefix(data_path, split, src, tgt)}.bin has {num_sentences}: the two sources "
                "must come from the same preparation"
            )
        logger.info("%s: %d BERT-id sources", prefix, len(dataset))
        return dataset

    def check_bert_vocabulary(self, dict_path: str) -> None:
        """Fail when the BERT sources were tokenized with another vocabulary than ``--bert-model``'s."""
        if not os.path.exists(dict_path):
            return  # the vocabulary copy is informational; nothing to compare with
        with open(dict_path, encoding="utf-8") as f:
            written = [line.rstrip("\n") for line in f]
        if written != self.bert_dictionary.symbols:
            raise ValueError(
                f"{dict_path}: the BERT sources were written with another vocabulary than --bert-model "
                f"{self.cfg.bert_model} ({self.bert_dictionary.vocab_file}); use the BERT that prepared them"
            )

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        raise NotImplementedError(
            "bert_fused_translation needs the BERT-id source too: use fairseq-generate on a prepared split"
        )


def text_source_prefix(data_path: str, split: str, src: str, tgt: str) -> str:
    """The path prefix of the binarized text source, in whichever direction fairseq-preprocess named it."""
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        prefix = os.path.join(data_path, f"{split}.{pair}.{src}")
        if os.path.exists(prefix + ".bin") or os.path.exists(prefix + ".idx"):
            return prefix
    return os.path.join(data_path, f"{split}.{src}-{tgt}.{src}")
