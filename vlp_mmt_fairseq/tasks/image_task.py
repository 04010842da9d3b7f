"""What the tasks that read a feature store share (``vlp_mmt``, ``vlp_pretrain``); not a registered task."""
import numpy as np

from vlp_mmt_fairseq.data.feature_store import read_split_image_keys, reads_in_the_main_thread


class ImageTaskMixin:
    """Image keys per split, from ``--image-index-dir`` or the data directory, and batches that read the store
    in the main thread under ``--num-workers 0``. Put it before the fairseq task class in the bases."""

    def split_image_keys(self, directory: str, split: str, count: int, counted: str) -> np.ndarray:
        """The image key of each of the split's ``count`` lines (``counted``: what they are, for the error)."""
        return read_split_image_keys(self.cfg.image_index_dir or directory, split, count, counted)

    def get_batch_iterator(self, dataset, **kwargs):
        """fairseq's batches, with the images read in the main thread under ``--num-workers 0``."""
        return super().get_batch_iterator(dataset, **reads_in_the_main_thread(kwargs))
