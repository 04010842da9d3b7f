"""PairDatasetWrapper: a LanguagePairDataset with extra per-sentence inputs, batched without loss."""
from typing import List

from fairseq.data import FairseqDataset, LanguagePairDataset

from vlp_mmt_fairseq.compat import restore_dropped_sentences


def in_batch_order(samples: List[dict], batch: dict) -> List[dict]:
    """``samples`` in the row order of ``batch``.

    LanguagePairDataset's collater re-sorts a batch by source length; its ``id`` tensor says
    which sample each row holds. Collating extra inputs in this order keeps row b of every
    tensor on the same sentence.
    """
    by_id = {s["id"]: s for s in samples}
    return [by_id[i] for i in batch["id"].tolist()]


class PairDatasetWrapper(FairseqDataset):
    """Base of datasets that add inputs to a LanguagePairDataset's batches.

    Everything about sizes, order, filtering and batching is the text pair's, except that
    :meth:`batch_by_size` puts back the sentences fairseq's batching drops (see compat).
    Subclasses add their inputs per sentence in :meth:`extra_inputs` and per batch in
    :meth:`collate_extra_inputs`.
    """

    def __init__(self, pair: LanguagePairDataset):
        super().__init__()
        self.pair = pair

    def extra_inputs(self, index: int) -> dict:
        """What sentence ``index`` carries beside the text pair (keys added to its sample)."""
        return {}

    def collate_extra_inputs(self, batch: dict, ordered: List[dict]) -> None:
        """Add the extra inputs of ``ordered`` (the samples in the batch's row order) to ``batch``."""

    def __getitem__(self, index):
        item = self.pair[index]
        item.update(self.extra_inputs(index))
        return item

    def __len__(self):
        return len(self.pair)

    def collater(self, samples, pad_to_length=None):
        batch = self.pair.collater(samples, pad_to_length=pad_to_length)
        if len(batch) > 0:
            self.collate_extra_inputs(batch, in_batch_order(samples, batch))
        return batch

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
        return self.pair.can_reuse_epoch_itr_across_epochs

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self.pair.set_epoch(epoch)
