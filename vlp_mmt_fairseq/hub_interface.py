"""Translating new sentence-image pairs from Python: ``VlpMmtModel.from_pretrained(MODEL_DIR)``.

It returns :class:`VlpMmtHubInterface`, fairseq's ``GeneratorHubInterface`` (the SequenceGenerator that
``fairseq-generate`` runs), whose ``translate(sentences, images=...)`` takes for each sentence an image path
(features from the model's built-in extractor), a key of the ``image_features`` store, or ready features
(``ImageFeatures`` or a dict with ``features``, ``boxes`` and optional ``tags``, ``tag_scores``).
"""
import os
import tempfile
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from fairseq.hub_utils import GeneratorHubInterface

from vlp_mmt_fairseq.data.feature_store import FeatureStore, FeatureStoreError, FeatureStoreWriter, ImageFeatures
from vlp_mmt_fairseq.modules.feature_record import FeatureRecord, FeatureRecordError


def from_pretrained(model_dir: str, image_features: Optional[str] = None, batch_size: int = 16,
                    max_tokens: Optional[int] = None, extract_batch_size: int = 8, **overrides):
    """The hub interface of a model directory (see :mod:`vlp_mmt_fairseq.model_dir`); ``overrides`` are fairseq
    options (e.g. ``max_len_b=50``)."""
    from fairseq import hub_utils

    from vlp_mmt_fairseq import model_dir as layout

    manifest = layout.read_manifest(model_dir)
    model_dir = os.path.abspath(model_dir)
    loaded = hub_utils.from_pretrained(
        model_dir, checkpoint_file=layout.CHECKPOINT, data_name_or_path=".", bpe="sentencepiece",
        sentencepiece_model=os.path.join(model_dir, layout.SPM), bert_model=os.path.join(model_dir, layout.BERT_DIR),
        bert_random_init=True, load_vlp=None, image_features=image_features, source_lang=manifest["source_lang"],
        target_lang=manifest["target_lang"], batch_size=batch_size, max_tokens=max_tokens, **overrides,
    )
    return VlpMmtHubInterface(loaded["args"], loaded["task"], loaded["models"], extract_batch_size)


class VlpMmtHubInterface(GeneratorHubInterface):
    """fairseq's generator interface, with BERT-tokenized sources and one image per sentence."""

    def __init__(self, cfg, task, models, extract_batch_size: int = 8):
        super().__init__(cfg, task, models)
        from vlp_mmt_fairseq.bert_loading import load_bert_tokenizer

        self.bert_tokenizer = load_bert_tokenizer(task.cfg.bert_model)
        self.record: FeatureRecord = models[0].feature_record
        self.extract_batch_size = extract_batch_size
        self._extractor = None
        self._images = None  # (keys, store) of the sentences being translated

    @property
    def uses_images(self) -> bool:
        return self.task.use_images

    def encode(self, sentence: str) -> torch.LongTensor:
        """``[CLS] x [SEP]`` as BERT ids, exactly as ``vlp-mmt-prepare-multi30k`` writes the source."""
        return torch.LongTensor(self.bert_tokenizer(" ".join(sentence.split()))["input_ids"])

    def translate(self, sentences: Union[str, List[str]], images=None, beam: int = 5, verbose: bool = False,
                  **kwargs):
        """Translations of ``sentences``; ``images`` holds one image per sentence (path, store key or features)
        unless the model is text only."""
        if isinstance(sentences, str):
            return self.translate([sentences], None if images is None else [images], beam, verbose, **kwargs)[0]
        with tempfile.TemporaryDirectory(prefix="vlp-mmt-translate-") as tmp:
            self._images = self.image_inputs(images, len(sentences), tmp)
            try:
                return super().translate(sentences, beam, verbose, **kwargs)
            finally:
                if self._images is not None and self._images[1] is not self.task.store:
                    self._images[1].close()
                self._images = None

    def check_store(self, store: FeatureStore) -> None:
        found = FeatureRecord(store.feature_dim if self.record.feature_dim else 0, store.extractor)
        if found != self.record:
            raise FeatureRecordError(f"{store.path}: the model was trained on {self.record.describe()}, but this "
                                     f"store holds {FeatureRecord(store.feature_dim, store.extractor).describe()}")

    def image_inputs(self, images: Optional[Sequence], count: int, tmp: str):
        """(keys, store) for ``images``: keys of ``image_features`` as they are; image files and ready features
        through a temporary store."""
        if not self.uses_images:
            if images is not None and any(image is not None for image in images):
                raise ValueError("this model is text only: translate without images")
            return None
        if images is None or len(images) != count:
            raise ValueError(f"this model translates sentences with images: give {count} images, one per sentence")
        if all(isinstance(image, (str, os.PathLike)) for image in images):
            store = self.task.store
            if store is not None and all(str(image) in store for image in images):
                return [str(image) for image in images], store
            unknown = [str(image) for image in images if not os.path.isfile(image)]
            if unknown:
                where = f"not a key of {store.path} and " if store is not None else ""
                raise FeatureStoreError(f"image '{unknown[0]}': {where}no such image file "
                                        f"({len(unknown)} of {len(images)} images)")
            paths = list(dict.fromkeys(os.path.abspath(image) for image in images))  # each file extracted once
            position = {path: str(i) for i, path in enumerate(paths)}
            store = self.extract(paths, os.path.join(tmp, "images.h5"))
            return [position[os.path.abspath(image)] for image in images], store
        store = self.write_features(images, os.path.join(tmp, "images.h5"))
        return [str(i) for i in range(count)], store

    @property
    def extractor(self):
        if self._extractor is None:
            from vlp_mmt_fairseq.features.extractor import builtin_from_record

            self._extractor = builtin_from_record(self.record.extractor)
            if self._extractor is None:
                raise FeatureRecordError(
                    f"the model was trained on {self.record.describe()}, which is not a built-in extractor: give "
                    "the images as keys of a store made by it (image_features=STORE, --image-features)"
                )
        return self._extractor

    def extract(self, paths: List[str], out: str) -> FeatureStore:
        """Features of the image files ``paths`` (store key = position) from the model's extractor."""
        from vlp_mmt_fairseq.features.extraction import extract_to_store
        from vlp_mmt_fairseq.features.image_files import ImageFile

        files = [ImageFile(str(i), path) for i, path in enumerate(paths)]
        extract_to_store(files, out, self.extractor, batch_size=self.extract_batch_size, progress=False)
        return self.task.open_store(out)

    def write_features(self, images: Sequence, out: str) -> FeatureStore:
        """Ready features (``ImageFeatures`` or dicts), read back as the task reads any store."""
        first = images[0]
        dim = np.asarray(first.features if isinstance(first, ImageFeatures) else first["features"]).shape[1]
        with FeatureStoreWriter(out, feature_dim=dim, extractor=self.record.extractor, dtype="float32") as writer:
            for i, image in enumerate(images):
                item = image if isinstance(image, ImageFeatures) else ImageFeatures(
                    np.asarray(image["features"]), np.asarray(image["boxes"]), list(image.get("tags", [])),
                    np.asarray(image.get("tag_scores", np.ones(len(image.get("tags", [])))), np.float32))
                count = len(item.features)
                writer.add(str(i), item.features, item.boxes, width=item.width or 1, height=item.height or 1,
                           scores=np.linspace(1.0, 0.5, count, dtype=np.float32),  # keep the given order
                           tags=item.tags, tag_scores=item.tag_scores)
        store = self.task.open_store(out)
        self.check_store(store)
        return store

    def _build_batches(self, tokens, skip_invalid_size_inputs):
        keys, store = self._images if self._images is not None else (None, None)
        if store is not None:
            self.check_store(store)
        lengths = torch.LongTensor([t.numel() for t in tokens])
        dataset = self.task.build_dataset_for_inference(tokens, lengths, image_keys=keys, store=store)
        return self.task.get_batch_iterator(
            dataset=dataset, max_tokens=self.cfg.dataset.max_tokens, max_sentences=self.cfg.dataset.batch_size,
            max_positions=self.max_positions, ignore_invalid_inputs=skip_invalid_size_inputs,
            disable_iterator_cache=True,
        ).next_epoch_itr(shuffle=False)
