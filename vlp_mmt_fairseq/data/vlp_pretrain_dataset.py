"""VlpPretrainDataset: captions and their images, batched for vision-language pre-training.

Each batch is built in the collater, with no second pass over the data:

* paired-image prediction: each caption keeps its own image, or, with ``negative_prob``, takes the
  image of another caption of the same batch whose image key differs (regions and tags together);
  ``pair_label`` is 1 for the paired image and 0 for the random one;
* masked LM: ``mask_prob`` of the text tokens (caption and tags, or the caption only) are selected
  per sequence, then replaced by ``[MASK]`` (80%), a random token (10%) or kept (10%). Only the
  selected tokens of *paired* captions are predicted: a random image says nothing about them.

Captions are a fairseq indexed dataset (memory-mapped) and the image keys a memory-mapped ``.npy``,
so the dataset holds no per-caption Python objects; features are read lazily from the store.
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
from fairseq.data import ConcatDataset, FairseqDataset, data_utils

from vlp_mmt_fairseq.compat import restore_dropped_sentences
from vlp_mmt_fairseq.data.image_dataset import ImageDataset, fit_tags


def random_token_ids(dictionary) -> np.ndarray:
    """Ids a random replacement may take: every vocabulary entry that is not ``[...]``-special."""
    return np.array(
        [i for i, s in enumerate(dictionary.symbols) if not (s.startswith("[") and s.endswith("]"))],
        dtype=np.int64,
    )


class VlpPretrainDataset(FairseqDataset):
    """Line i -> caption i (``[CLS] x [SEP]`` BERT ids) and the image of line i.

    Args:
        captions: indexed dataset of BERT ids, one caption per line
        images: the image of each line (regions and tags)
        dictionary: the BERT dictionary (pad, ``[CLS]``, ``[SEP]``, ``[MASK]``)
        mask_prob: fraction of the maskable tokens of a sequence selected for prediction
        mask_caption_only: select caption tokens only, never tags
        negative_prob: probability that a caption gets a random image instead of its own
        random_token_prob, leave_unmasked_prob: shares of the selected tokens replaced by a random
            token and left as they are (the rest become ``[MASK]``)
        seed: seed of masking and negatives (with the epoch and the batch's ids)
        shuffle: shuffle the order of equal-length captions (training)
        max_text_positions: BERT's text positions; a caption keeps only as many of its image's (or the
            random image's) best-scored tags as fit beside it
    """

    def __init__(self, captions, images: ImageDataset, dictionary, mask_prob: float = 0.15,
                 mask_caption_only: bool = False, negative_prob: float = 0.5, random_token_prob: float = 0.1,
                 leave_unmasked_prob: float = 0.1, seed: int = 1, shuffle: bool = True,
                 max_text_positions: Optional[int] = None):
        super().__init__()
        if len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions but {len(images)} images")
        if not 0.0 <= mask_prob <= 1.0 or not 0.0 <= negative_prob <= 1.0:
            raise ValueError("mask_prob and negative_prob must lie in [0, 1]")
        if random_token_prob + leave_unmasked_prob > 1.0:
            raise ValueError("random_token_prob + leave_unmasked_prob must not exceed 1")
        self.captions = captions
        self.images = images
        self.pad, self.cls, self.sep = dictionary.pad(), dictionary.bos(), dictionary.eos()
        self.mask_index = dictionary.index("[MASK]")
        self.random_ids = random_token_ids(dictionary)
        self.mask_prob = mask_prob
        self.mask_caption_only = mask_caption_only
        self.negative_prob = negative_prob
        self.random_token_prob = random_token_prob
        self.leave_unmasked_prob = leave_unmasked_prob
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 1
        self.max_text_positions = max_text_positions

    def __getitem__(self, index):
        key = self.images.key(index)
        return {"id": index, "caption": self.captions[index].long(), "image": self.images[index], "key": key}

    def __len__(self):
        return len(self.captions)

    # ------------------------------------------------------------------ batch construction

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        ids = [int(s["id"]) for s in samples]
        rng = np.random.default_rng([self.seed, self.epoch, *ids])
        image_rows = self.draw_images(np.array([s["key"] for s in samples]), rng)
        pair_label = torch.from_numpy(image_rows == np.arange(len(samples))).long()  # B
        captions = data_utils.collate_tokens([s["caption"] for s in samples], self.pad, left_pad=False)  # B x S
        chosen = [samples[j]["image"] for j in image_rows]
        if self.max_text_positions is not None:
            chosen = [fit_tags(image, self.max_text_positions - samples[i]["caption"].numel())
                      for i, image in enumerate(chosen)]
        images = self.images.collater(chosen)
        tags = images.pop("tag_tokens")  # B x T
        text = torch.cat([captions, tags], dim=1)  # B x (S + T)
        maskable = text.ne(self.pad) & text.ne(self.cls) & text.ne(self.sep)
        if self.mask_caption_only:
            maskable[:, captions.size(1):] = False
        masked_text, target = self.mask_tokens(text, maskable, rng)
        target[pair_label.eq(0)] = self.pad  # only paired captions are predicted
        return {
            "id": torch.LongTensor(ids),
            "nsentences": len(samples),
            "ntokens": int(text.ne(self.pad).sum()),
            "net_input": {
                "src_tokens": masked_text[:, : captions.size(1)],
                "src_lengths": captions.ne(self.pad).sum(1),
                "tag_tokens": masked_text[:, captions.size(1):],
                **images,  # region_features, region_boxes, region_mask
            },
            "target": target,  # B x (S + T): the original id where predicted, else pad
            "pair_label": pair_label,  # B: 1 = the caption's own image, 0 = a random one
        }

    def draw_images(self, keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Row of the batch whose image each caption gets: its own, or one with a different key."""
        rows = np.arange(len(keys))
        negative = rng.random(len(keys)) < self.negative_prob
        for i in np.flatnonzero(negative):
            others = np.flatnonzero(keys != keys[i])
            if len(others) > 0:  # a batch of one image keeps its positives
                rows[i] = others[rng.integers(len(others))]
        return rows

    def mask_tokens(self, tokens: torch.Tensor, maskable: torch.Tensor, rng: np.random.Generator):
        """Select ``mask_prob`` of each row's maskable tokens; return (input, target) B x L."""
        maskable_np = maskable.numpy()
        count = maskable_np.sum(1)  # B
        # probabilistic rounding keeps the expected share at mask_prob for short sequences
        num_selected = np.floor(self.mask_prob * count + rng.random(len(count))).astype(np.int64)
        scores = np.where(maskable_np, rng.random(maskable_np.shape), np.inf)
        rank = scores.argsort(1).argsort(1)  # rank of each position among its row's maskable ones
        selected = (rank < num_selected[:, None]) & maskable_np
        choice = rng.random(maskable_np.shape)
        to_random = selected & (choice < self.random_token_prob)
        to_mask = selected & (choice >= self.random_token_prob + self.leave_unmasked_prob)
        masked = tokens.clone()
        masked[torch.from_numpy(to_mask)] = self.mask_index
        random_ids = self.random_ids[rng.integers(len(self.random_ids), size=int(to_random.sum()))]
        masked[torch.from_numpy(to_random)] = torch.from_numpy(random_ids)
        target = tokens.masked_fill(~torch.from_numpy(selected), self.pad)
        return masked, target

    # ------------------------------------------------------------------ sizes and order

    @property
    def sizes(self):
        return self.captions.sizes

    def num_tokens(self, index):
        return int(self.captions.sizes[index])

    def num_tokens_vec(self, indices):
        return self.captions.sizes[indices]

    def size(self, index):
        return int(self.captions.sizes[index])

    def ordered_indices(self):
        """By caption length; equal lengths in random order when shuffling (fairseq seeds numpy)."""
        order = np.random.permutation(len(self)) if self.shuffle else np.arange(len(self))
        return order[np.argsort(self.sizes[order], kind="mergesort")]

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        """fairseq's batching, with the captions it would drop put back (see compat)."""
        batches = super().batch_by_size(indices, max_tokens, max_sentences, required_batch_size_multiple)
        return restore_dropped_sentences(batches, indices, self.num_tokens, max_tokens, max_sentences)

    @property
    def supports_prefetch(self):
        return False

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return True

    def set_epoch(self, epoch):
        self.epoch = epoch


class ConcatVlpPretrainDataset(ConcatDataset):
    """Several caption corpora read as one: global ids, one size array, fairseq's lossless batching."""

    def __init__(self, datasets: Sequence[VlpPretrainDataset]):
        super().__init__(list(datasets))
        self._sizes = np.concatenate([d.sizes for d in self.datasets])
        self.shuffle = self.datasets[0].shuffle

    def __getitem__(self, idx):
        item = super().__getitem__(idx)
        item["id"] = idx
        return item

    @property
    def sizes(self):
        return self._sizes

    def num_tokens(self, index):
        return int(self._sizes[index])

    def num_tokens_vec(self, indices):
        return self._sizes[indices]

    def size(self, index):
        return int(self._sizes[index])

    def ordered_indices(self):
        order = np.random.permutation(len(self)) if self.shuffle else np.arange(len(self))
        return order[np.argsort(self._sizes[order], kind="mergesort")]

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        batches = FairseqDataset.batch_by_size(self, indices, max_tokens, max_sentences, required_batch_size_multiple)
        return restore_dropped_sentences(batches, indices, self.num_tokens, max_tokens, max_sentences)


def concat_vlp_datasets(datasets: List[VlpPretrainDataset]):
    """One dataset, or several read as one."""
    return datasets[0] if len(datasets) == 1 else ConcatVlpPretrainDataset(datasets)
