"""Task ``vlp_mmt``: translation whose source is BERT WordPiece ids plus the sentence's image.

Data (written by ``preprocess/prepare_multi30k.py``, see docs/data.md):
``{split}.{src}-{tgt}.{src}`` holds ``[CLS] x [SEP]`` as BERT ids, ``{split}.{src}-{tgt}.{tgt}`` the
target, and ``{split}.img.npy`` (or ``.txt``) the image index: line i names the image of sentence i.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from fairseq import utils
from fairseq.data import Dictionary, LanguagePairDataset, data_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask, load_langpair_dataset

from vlp_mmt_fairseq.bert_loading import bert_vocab_file
from vlp_mmt_fairseq.data.bert_dictionary import BertDictionary
from vlp_mmt_fairseq.data.feature_store import FeatureStore
from vlp_mmt_fairseq.data.image_dataset import ImageDataset, log_lost_tags
from vlp_mmt_fairseq.data.multimodal_pair_dataset import MultimodalPairDataset
from vlp_mmt_fairseq.data.tag_encoder import TagEncoder
from vlp_mmt_fairseq.dataclass.configs import BertConfig, ImageConfig
from vlp_mmt_fairseq.tasks.image_task import ImageTaskMixin

logger = logging.getLogger(__name__)


@dataclass
class VlpMmtConfig(TranslationConfig, BertConfig, ImageConfig):
    no_images: bool = field(
        default=False,
        metadata={"help": "text only: no regions and no tags (the BERT-encoder baseline; also the "
                          "'no image' probe of a multimodal model)"},
    )
    no_regions: bool = field(
        default=False,
        metadata={"help": "tags only: the image's object tags t but no regions v (the model then has no FFN(v); "
                          "--no-tags gives regions only)"},
    )
    shuffle_images_seed: Optional[int] = field(
        default=None,
        metadata={"help": "probe: pair each sentence with another sentence's image (image index "
                          "permuted with this seed; incongruent images, after Elliott 2018)"},
    )
    left_pad_source: bool = field(default=False, metadata={"help": "must stay False: BERT uses absolute positions"})
    max_source_positions: int = field(default=512, metadata={"help": "max source length in BERT positions"})


@register_task("vlp_mmt", dataclass=VlpMmtConfig)
class VlpMmtTask(ImageTaskMixin, TranslationTask):
    """Multimodal translation with a BERT vision-language encoder.

    The source dictionary is BERT's own vocabulary (:class:`BertDictionary`, index == BERT id);
    each batch's ``net_input`` adds to ``src_tokens``/``src_lengths`` the image's
    ``region_features`` (B x R x D), ``region_boxes`` (B x R x 4), ``region_mask`` (B x R) and
    ``tag_tokens`` (B x T, WordPieces of the tags followed by ``[SEP]``).
    """

    cfg: VlpMmtConfig

    def __init__(self, cfg: VlpMmtConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self.store = None
        self.feature_dim = None
        if self.use_images and cfg.image_features:  # (without one, a trained model takes stores per call)
            self.store = self.open_store(cfg.image_features)
            self.feature_dim = self.store.feature_dim
        self.tag_encoder = TagEncoder(cfg.bert_model)

    def open_store(self, path: str) -> FeatureStore:
        return FeatureStore(path, max_regions=self.cfg.max_regions, max_tags=self.cfg.max_tags,
                            memory_mb=self.cfg.image_memory_mb)

    @property
    def use_images(self) -> bool:
        return not self.cfg.no_images

    @property
    def use_regions(self) -> bool:
        return self.use_images and not self.cfg.no_regions

    @classmethod
    def setup_task(cls, cfg: VlpMmtConfig, **kwargs):
        if cfg.left_pad_source:
            raise ValueError("--left-pad-source must be False for a BERT encoder")
        paths = utils.split_paths(cfg.data)
        if cfg.source_lang is None or cfg.target_lang is None:
            cfg.source_lang, cfg.target_lang = data_utils.infer_language_pair(paths[0])
        if cfg.source_lang is None or cfg.target_lang is None:
            raise ValueError(f"{paths[0]}: cannot infer the language pair; pass --source-lang/--target-lang")
        src_dict = BertDictionary(bert_vocab_file(cfg.bert_model))
        tgt_dict = Dictionary.load(os.path.join(paths[0], f"dict.{cfg.target_lang}.txt"))
        logger.info("[%s] BERT vocabulary (%s): %d types", cfg.source_lang, cfg.bert_model, len(src_dict))
        logger.info("[%s] dictionary: %d types", cfg.target_lang, len(tgt_dict))
        return cls(cfg, src_dict, tgt_dict)

    # ------------------------------------------------------------------ data

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        paths = utils.split_paths(self.cfg.data)
        data_path = paths[(epoch - 1) % len(paths)]
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        if self.cfg.truncate_source and self.cfg.num_batch_buckets > 0:
            raise ValueError("--truncate-source with --num-batch-buckets is not supported for a BERT source")
        pair = load_langpair_dataset(
            data_path, split, src, self.tgt_dict, tgt, self.tgt_dict,  # target's pad/eos on both sides,
            combine=combine, dataset_impl=self.cfg.dataset_impl,  # see MultimodalPairDataset
            upsample_primary=self.cfg.upsample_primary, left_pad_source=False,
            left_pad_target=self.cfg.left_pad_target, max_source_positions=self.cfg.max_source_positions,
            max_target_positions=self.cfg.max_target_positions, load_alignments=False,
            truncate_source=False, num_buckets=self.cfg.num_batch_buckets,  # BERT ids: see truncate_bert_source
            shuffle=(split != "test"), pad_to_multiple=self.cfg.required_seq_len_multiple,
        )
        if self.cfg.truncate_source:
            truncate_bert_source(pair, self.max_text_positions, self.src_dict.eos())
        images = self.build_image_dataset(split, len(pair))
        if images is not None and images.tag_encoder is not None:
            log_lost_tags(split, pair.src_sizes, images, self.max_text_positions)
        self.datasets[split] = MultimodalPairDataset(pair, self.src_dict.pad(), images, self.max_text_positions)

    @property
    def max_text_positions(self) -> int:
        """BERT's text positions that caption and tags share: its position embeddings, at most
        ``--max-source-positions``."""
        if getattr(self, "_max_text_positions", None) is None:
            from vlp_mmt_fairseq.bert_loading import load_bert_config

            self._max_text_positions = min(self.cfg.max_source_positions,
                                           load_bert_config(self.cfg.bert_model).max_position_embeddings)
        return self._max_text_positions

    def build_image_dataset(self, split: str, num_sentences: int) -> Optional[ImageDataset]:
        """The images of a split, checked against the number of sentences."""
        if not self.use_images:
            return None
        if self.store is None:
            raise ValueError("--image-features is required unless --no-images is given")
        keys = self.split_image_keys(utils.split_paths(self.cfg.data)[0], split, num_sentences,
                                     f"split '{split}' has {num_sentences} sentences")
        if self.cfg.shuffle_images_seed is not None:
            keys = keys[np.random.RandomState(self.cfg.shuffle_images_seed).permutation(len(keys))]
        return self.image_dataset(keys, self.store)

    def image_dataset(self, keys: np.ndarray, store: FeatureStore) -> ImageDataset:
        """The images of ``keys`` (one per sentence) from ``store``."""
        tag_encoder = None if self.cfg.no_tags else self.tag_encoder
        return ImageDataset(keys, store, tag_encoder, sep=self.src_dict.eos(), pad=self.src_dict.pad(),
                            regions=self.use_regions)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        # the modality loss's gate is sized after the decoder: (embedding dim, hidden dim)
        self.decoder_dims = (model.decoder.embed_tokens.embedding_dim, model.decoder.embed_dim)
        self.decoder_memory = getattr(cfg, "decoder_memory", "all")
        return model

    def build_criterion(self, cfg):
        criterion = super().build_criterion(cfg)
        if getattr(criterion, "modality_layers", "off") != "off":
            if not self.use_regions:
                raise ValueError("the modality loss needs regions: pass --modality-loss off with --no-regions")
            if getattr(self, "decoder_memory", "all") == "text":
                raise ValueError("the modality loss attends over the regions, which --decoder-memory text hides "
                                 "from the decoder: pass --modality-loss off (or --decoder-memory all)")
        return criterion

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None, image_keys=None, store=None):
        """Sentences (BERT ids) to translate and, unless ``--no-images``, the key of each one's image in ``store``
        (default: ``--image-features``); used by ``VlpMmtModel.from_pretrained(...).translate``."""
        pair = LanguagePairDataset(src_tokens, np.asarray(src_lengths), self.tgt_dict, left_pad_source=False,
                                   constraints=constraints)  # target's pad/eos on both sides, see MultimodalPairDataset
        images = None
        if self.use_images:
            store = store if store is not None else self.store
            if store is None or image_keys is None or len(image_keys) != len(src_tokens):
                raise ValueError("this model translates sentences with their images: give one image per sentence")
            images = self.image_dataset(np.array([str(k).encode("utf-8") for k in image_keys]), store)
        return MultimodalPairDataset(pair, self.src_dict.pad(), images, self.max_text_positions)


def truncate_bert_source(pair: LanguagePairDataset, max_positions: int, sep: int) -> None:
    """``--truncate-source`` for BERT ids: cut ``[CLS] x [SEP]`` to ``max_positions``, ``[SEP]`` kept last.

    (fairseq's own truncation strips and appends the *target* dictionary's end-of-sentence id, which is
    another token in BERT's vocabulary.)
    """
    from fairseq.data import AppendTokenDataset, StripTokenDataset, TruncateDataset

    sizes = np.minimum(pair.src_sizes, max_positions)
    pair.src = AppendTokenDataset(TruncateDataset(StripTokenDataset(pair.src, sep), max_positions - 1), sep)
    pair.src_sizes = sizes

