"""Options that several tasks or models share. Each is defined once here and extended by the configs.

Tasks extend the dataclasses (``class VlpMmtConfig(TranslationConfig, BertConfig, ImageConfig)``); models,
which fairseq 0.12 still builds from ``add_args``, generate their options from :class:`BertEncoderConfig` with
fairseq's ``gen_parser_from_dataclass``, as fairseq's own ``TransformerModel.add_args`` does.
"""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import FairseqDataclass

from vlp_mmt_fairseq.bert_loading import BUNDLED_MINILM


@dataclass
class BertConfig(FairseqDataclass):
    bert_model: str = field(
        default=BUNDLED_MINILM,
        metadata={"help": "BERT for the encoder's weights and the source tokenizer: a local directory, a hub "
                          f"name (e.g. bert-base-uncased), or '{BUNDLED_MINILM}' (offline MiniLM-L6-H384); "
                          "it must be the one whose vocabulary prepared the BERT-id data"},
    )


@dataclass
class ImageConfig(FairseqDataclass):
    image_features: Optional[str] = field(
        default=None,
        metadata={"help": "HDF5 image-feature store (docs/feature_store.md); needed unless --no-images "
                          "(vlp_pretrain: one store, or one per data directory joined with ':')"},
    )
    image_index_dir: Optional[str] = field(
        default=None,
        metadata={"help": "directory of the image indexes {split}.img.npy or {split}.img.txt "
                          "(default: each data directory)"},
    )
    max_regions: int = field(default=36, metadata={"help": "keep at most this many regions per image, "
                                                            "highest-scoring first"})
    max_tags: int = field(default=20, metadata={"help": "keep at most this many object tags per image"})
    image_memory_mb: float = field(
        default=1024, metadata={"help": "hold up to this many MB of the images read in each process's memory, so "
                                        "that later epochs do not read them from the store again (0: read every "
                                        "time)"}
    )
    no_tags: bool = field(default=False, metadata={"help": "do not give the object tags t to the encoder"})


@dataclass
class BertInitConfig(FairseqDataclass):
    bert_random_init: bool = field(
        default=False, metadata={"help": "BERT's config from --bert-model, but random weights (tests, timing)"}
    )


@dataclass
class BertEncoderConfig(BertInitConfig):
    frozen_bert_dropout: bool = field(
        default=False,
        metadata={"help": "keep dropout on inside a frozen BERT (default: a frozen BERT runs without dropout, "
                          "as a fixed feature extractor)"},
    )


def add_dataclass_args(parser, config: FairseqDataclass) -> None:
    """A model's argparse options generated from ``config``, as fairseq's ``TransformerModel.add_args`` does."""
    from fairseq.dataclass.utils import gen_parser_from_dataclass

    gen_parser_from_dataclass(parser, config)
