"""MultimodalPairDataset: a LanguagePairDataset plus the image of each sentence."""
from typing import Optional

import torch
from fairseq.data import FairseqDataset, LanguagePairDataset, data_utils

from vlp_mmt_fairseq.compat import restore_dropped_sentences
from vlp_mmt_fairseq.data.image_dataset import ImageDataset


class MultimodalPairDataset(FairseqDataset):
    """BERT-id sources, targets and images, aligned through the sample ids.

    fairseq's LanguagePairDataset collates source and target with *one* pad and eos, but BERT's
    ``[PAD]``/``[SEP]`` are not the target dictionary's. So ``pair`` is built with the target
    dictionary on both sides (target padding and shifting stay fairseq's own), and this collater
    re-pads the sources with BERT's ``[PAD]`` on the right (BERT uses absolute positions).
    LanguagePairDataset re-sorts a batch by source length; sources and images are collated in the
    order of the batch's ``id``, so row b of every tensor belongs to the same sentence.
    Without images it is the text pair alone (the text-only mode), still batched without loss.
    """

    def __init__(self, pair: LanguagePairDataset, src_pad: int, images: Optional[ImageDataset] = None):
        super().__init__()
        if images is not None and len(images) != len(pair):
            raise ValueError(f"{len(pair)} sentences but {len(images)} images")
        self.pair = pair
        self.src_pad = src_pad
        self.images = images

    def __getitem__(self, index):
        item = self.pair[index]
        if self.images is not None:
            item["image"] = self.images[index]
        return item

    def __len__(self):
        return len(self.pair)

    def collater(self, samples, pad_to_length=None):
        batch = self.pair.collater(samples, pad_to_length=pad_to_length)
        if len(batch) == 0:
            return batch
        by_id = {s["id"]: s for s in samples}
        ordered = [by_id[i] for i in batch["id"].tolist()]
        net_input = batch["net_input"]
        net_input["src_tokens"] = data_utils.collate_tokens(
            [s["source"] for s in ordered], self.src_pad, left_pad=False
        )  # B x S: [CLS] x [SEP] [PAD]...
        net_input["src_lengths"] = torch.LongTensor([s["source"].numel() for s in ordered])
        if self.images is not None:
            net_input.update(self.images.collater([s["image"] for s in ordered]))
        return batch

    # everything about sizes and order is the text pair's
    @property
    def sizes(self):
        return self.pair.sizes

    def num_tokens(self, index):
        return self.pair.num_tokens(index)

    def num_tokens_vec(self, indices):
        return self.pair.num_tokens_vec(indices)

    def size(self, index):
        return self.pair.size(index)

    def ordered_indices(self):
        return self.pair.ordered_indices()

    @property
    def supports_prefetch(self):
        return self.pair.supports_prefetch

    def prefetch(self, indices):
        self.pair.prefetch(indices)

    def filter_indices_by_size(self, indices, max_sizes):
        return self.pair.filter_indices_by_size(indices, max_sizes)

    def get_batch_shapes(self):
        return self.pair.get_batch_shapes()

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        """fairseq's batching, with the sentences it would drop put back (see compat)."""
        batches = self.pair.batch_by_size(indices, max_tokens, max_sentences, required_batch_size_multiple)
        return restore_dropped_sentences(batches, indices, self.num_tokens, max_tokens, max_sentences)

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return True

    def set_epoch(self, epoch):
        self.pair.set_epoch(epoch)
