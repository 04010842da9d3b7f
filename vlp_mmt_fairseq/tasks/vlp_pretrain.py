"""Task ``vlp_pretrain``: vision-language pre-training of the ``vlp_mmt`` encoder (Algorithm 1, steps 1-4).

Data, in the formats of ``vlp_mmt`` (see docs/vlp_pretrain.md)::

    DIR/{split}.{lang}.bin/.idx            captions as BERT ids [CLS] x [SEP] (preprocess/prepare_captions.py)
      or {split}.{lang}-{other}.{lang}     the source side of a prepared vlp_mmt data dir (steps 3-4)
    DIR/{split}.img.npy (or .txt)          image index: line i names the image of caption i

``--data`` may join several such directories with ':'; unlike fairseq's sharding, they are read
together as one corpus (each with its image index; ``--image-features`` is one store for all, or
one per directory, joined with ':').
"""
import glob
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

from fairseq import utils
from fairseq.data import data_utils
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from vlp_mmt_fairseq.bert_loading import bert_vocab_file, load_bert_config
from vlp_mmt_fairseq.data.bert_dictionary import BertDictionary
from vlp_mmt_fairseq.data.feature_store import FeatureStore, FeatureStoreError
from vlp_mmt_fairseq.data.image_dataset import ImageDataset
from vlp_mmt_fairseq.data.tag_encoder import TagEncoder
from vlp_mmt_fairseq.data.vlp_pretrain_dataset import VlpPretrainDataset, concat_vlp_datasets
from vlp_mmt_fairseq.dataclass.configs import BertConfig, ImageConfig
from vlp_mmt_fairseq.tasks.image_task import ImageTaskMixin

logger = logging.getLogger(__name__)


@dataclass
class VlpPretrainConfig(BertConfig, ImageConfig):
    data: Optional[str] = field(
        default=None,
        metadata={"help": "caption data directories, joined with ':' (all are read, as one corpus)"},
    )
    source_lang: Optional[str] = field(
        default=None,
        metadata={"help": "language suffix of the caption files: {split}.{lang} or {split}.{lang}-{other}.{lang} "
                          "(default: the only one in the directory)"},
    )
    mask_prob: float = field(default=0.15, metadata={"help": "share of the text tokens selected for masked LM"})
    mask_caption_only: bool = field(
        default=False, metadata={"help": "select caption tokens only for masked LM (default: caption and tags)"}
    )
    leave_unmasked_prob: float = field(default=0.1, metadata={"help": "share of selected tokens left as they are"})
    random_token_prob: float = field(
        default=0.1, metadata={"help": "share of selected tokens replaced by a random token"}
    )
    negative_prob: float = field(
        default=0.5, metadata={"help": "probability that a caption gets a random image of its batch (with "
                                       "a different key) for paired-image prediction"}
    )
    max_source_positions: int = field(default=512, metadata={"help": "max caption length in BERT positions"})
    dataset_impl: Optional[str] = II("dataset.dataset_impl")
    seed: int = II("common.seed")


def caption_prefix(directory: str, split: str, lang: Optional[str]) -> Optional[str]:
    """Path prefix of a split's captions in ``directory`` (without .bin/.idx), or None if absent.

    ``{split}.{lang}`` is preferred; else the source side ``{split}.{lang}-{other}.{lang}`` of a
    prepared translation dir. Without ``lang``, the one candidate of either form; several are an error.
    """
    if lang is not None:
        plain = os.path.join(directory, f"{split}.{lang}")
        if os.path.exists(plain + ".idx"):
            return plain
        pairs = sorted(glob.glob(os.path.join(glob.escape(directory), f"{glob.escape(split)}.{lang}-*.{lang}.idx")))
        if len(pairs) > 1:
            raise FileNotFoundError(f"{directory}: several caption files for {split}.{lang}: {pairs}")
        return pairs[0][: -len(".idx")] if pairs else None
    candidates = []
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), f"{glob.escape(split)}.*.idx"))):
        parts = os.path.basename(path)[len(split) + 1: -len(".idx")].split(".")
        if len(parts) == 1 and "-" not in parts[0]:
            candidates.append(parts[0])  # {split}.{lang}
        elif len(parts) == 2 and parts[0].split("-")[0] == parts[1]:
            candidates.append(parts[1])  # {split}.{lang}-{other}.{lang}
    if len(set(candidates)) > 1:
        raise FileNotFoundError(
            f"{directory}: captions of split '{split}' in several languages {sorted(set(candidates))}; "
            "pass --source-lang"
        )
    return caption_prefix(directory, split, candidates[0]) if candidates else None


@register_task("vlp_pretrain", dataclass=VlpPretrainConfig)
class VlpPretrainTask(ImageTaskMixin, FairseqTask):
    """Masked LM over ``[CLS] x [SEP] t [SEP]`` and paired-image prediction, on image-caption pairs.

    Batches carry the ``net_input`` of ``vlp_mmt`` (``src_tokens``, ``tag_tokens``, regions) with
    the text masked, plus ``target`` (masked-LM targets over caption and tags, pad elsewhere) and
    ``pair_label``.
    """

    cfg: VlpPretrainConfig

    def __init__(self, cfg: VlpPretrainConfig, dictionary: BertDictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.data_dirs = utils.split_paths(cfg.data)
        self.stores = self._open_stores()
        self.feature_dim = self.stores[0].feature_dim
        self.tag_encoder = TagEncoder(cfg.bert_model)

    @classmethod
    def setup_task(cls, cfg: VlpPretrainConfig, **kwargs):
        if not cfg.data:
            raise ValueError("vlp_pretrain needs a data directory")
        dictionary = BertDictionary(bert_vocab_file(cfg.bert_model))
        logger.info("BERT vocabulary (%s): %d types", cfg.bert_model, len(dictionary))
        return cls(cfg, dictionary)

    def _open_stores(self) -> List[FeatureStore]:
        """One store per data directory (the same object where they share one)."""
        if not self.cfg.image_features:
            raise ValueError("--image-features is required for vlp_pretrain")
        paths = self.cfg.image_features.split(":")
        if len(paths) == 1:
            paths = paths * len(self.data_dirs)
        if len(paths) != len(self.data_dirs):
            raise ValueError(
                f"--image-features names {len(paths)} stores for {len(self.data_dirs)} data directories; "
                "give one store, or one per directory"
            )
        opened, memory_mb = {}, self.cfg.image_memory_mb / len(set(paths))  # shared between the stores
        for path in paths:
            if path not in opened:
                opened[path] = FeatureStore(path, max_regions=self.cfg.max_regions, max_tags=self.cfg.max_tags,
                                            memory_mb=memory_mb)
        dims = {p: s.feature_dim for p, s in opened.items()}
        if len(set(dims.values())) > 1:
            raise FeatureStoreError(f"the feature stores differ in feature size D: {dims}")
        return [opened[p] for p in paths]

    def has_sharded_data(self, split):
        return False  # ':' joins corpora here: the trainer must not reload them per epoch

    # ------------------------------------------------------------------ data

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        parts = []
        for directory, store in zip(self.data_dirs, self.stores):
            prefix = caption_prefix(directory, split, self.cfg.source_lang)
            if prefix is None:
                logger.warning("%s: no captions of split '%s'; skipping this directory", directory, split)
                continue
            parts.append(self.build_caption_dataset(directory, split, prefix, store))
        if not parts:
            lang = self.cfg.source_lang or "LANG"
            raise FileNotFoundError(
                f"no captions of split '{split}' in {self.cfg.data}: expected {split}.{lang}.bin/.idx or "
                f"{split}.{lang}-OTHER.{lang}.bin/.idx (preprocess/prepare_captions.py writes the first)"
            )
        self.datasets[split] = concat_vlp_datasets(parts)
        logger.info("%s: %d image-caption pairs from %d corpora", split, len(self.datasets[split]), len(parts))

    def build_caption_dataset(self, directory: str, split: str, prefix: str, store: FeatureStore):
        captions = data_utils.load_indexed_dataset(prefix, None, self.cfg.dataset_impl)
        if captions is None:
            raise FileNotFoundError(f"{prefix}: cannot read the indexed captions (.bin/.idx)")
        if len(captions) == 0:
            raise ValueError(f"{prefix}: no captions")
        first = captions[0]
        if int(first[0]) != self.dictionary.bos() or int(first[-1]) != self.dictionary.eos():
            raise ValueError(f"{prefix}: caption 1 is not [CLS] x [SEP] in BERT ids (was it written for "
                             "this BERT vocabulary?)")
        keys = self.split_image_keys(directory, split, len(captions), f"{prefix} has {len(captions)} captions")
        tag_encoder = None if self.cfg.no_tags else self.tag_encoder
        images = ImageDataset(keys, store, tag_encoder, sep=self.dictionary.eos(), pad=self.dictionary.pad())
        max_text_positions = min(self.cfg.max_source_positions,
                                 load_bert_config(self.cfg.bert_model).max_position_embeddings)
        # each batch fits its captions' tags to BERT's positions (a caption may be paired with another image,
        # so no count at load time: that pass would read every image's tags of a corpus of millions)
        return VlpPretrainDataset(
            captions, images, self.dictionary, mask_prob=self.cfg.mask_prob,
            mask_caption_only=self.cfg.mask_caption_only, negative_prob=self.cfg.negative_prob,
            random_token_prob=self.cfg.random_token_prob, leave_unmasked_prob=self.cfg.leave_unmasked_prob,
            seed=self.cfg.seed, shuffle=(split != "test"), max_text_positions=max_text_positions,
        )

    # ------------------------------------------------------------------ fairseq interface

    def max_positions(self):
        return self.cfg.max_source_positions

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary
