"""MultimodalPairDataset: a LanguagePairDataset plus the image of each sentence."""
from typing import Optional

import torch
from fairseq.data import LanguagePairDataset, data_utils

from vlp_mmt_fairseq.data.image_dataset import ImageDataset, fit_tags
from vlp_mmt_fairseq.data.pair_dataset_wrapper import PairDatasetWrapper


class MultimodalPairDataset(PairDatasetWrapper):
    """BERT-id sources, targets and images, aligned through the sample ids.

    fairseq's LanguagePairDataset collates source and target with *one* pad and eos, but BERT's
    ``[PAD]``/``[SEP]`` are not the target dictionary's. So ``pair`` is built with the target
    dictionary on both sides (target padding and shifting stay fairseq's own), and this collater
    re-pads the sources with BERT's ``[PAD]`` on the right (BERT uses absolute positions).
    LanguagePairDataset re-sorts a batch by source length; sources and images are collated in the
    order of the batch's ``id``, so row b of every tensor belongs to the same sentence.
    Without images it is the text pair alone (the text-only mode), still batched without loss.
    With ``max_text_positions``, a sentence whose caption and tags would exceed BERT's positions keeps only
    its best-scored tags that fit (see :func:`fit_tags`).
    """

    def __init__(self, pair: LanguagePairDataset, src_pad: int, images: Optional[ImageDataset] = None,
                 max_text_positions: Optional[int] = None):
        super().__init__(pair)
        if images is not None and len(images) != len(pair):
            raise ValueError(f"{len(pair)} sentences but {len(images)} images")
        self.src_pad = src_pad
        self.images = images
        self.max_text_positions = max_text_positions

    def extra_inputs(self, index):
        if self.images is None:
            return {}
        image = self.images[index]
        if self.max_text_positions is not None:
            image = fit_tags(image, self.max_text_positions - int(self.pair.src_sizes[index]))
        return {"image": image}

    def collate_extra_inputs(self, batch, ordered):
        net_input = batch["net_input"]
        net_input["src_tokens"] = data_utils.collate_tokens(
            [s["source"] for s in ordered], self.src_pad, left_pad=False
        )  # B x S: [CLS] x [SEP] [PAD]...
        net_input["src_lengths"] = torch.LongTensor([s["source"].numel() for s in ordered])
        if self.images is not None:
            net_input.update(self.images.collater([s["image"] for s in ordered]))
