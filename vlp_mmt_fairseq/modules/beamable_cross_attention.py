"""Beam search that projects each sentence's memory once, for fairseq decoders.

fairseq's ``SequenceGenerator`` expands every sentence's encoder output to ``beam`` identical
rows before the first step. fairseq's ``MultiheadAttention`` can then project the cross-attention
keys and values of one row per sentence and leave that cache alone while hypotheses move within
their sentence's beam ("beamable" encoder-decoder attention), but it is switched on only through
``model.set_beam_size``, which stock fairseq models other than BART do not have.
"""
from typing import Dict, List, Optional

import torch
from torch import Tensor


def rows_are_beam_copies(memory: Tensor, beam: int) -> bool:
    """Whether each run of ``beam`` consecutive rows of ``memory`` (S x N x C) holds one tensor."""
    if memory.size(1) % beam:
        return False
    grouped = memory.reshape(memory.size(0), -1, beam, memory.size(2))  # S x N/beam x beam x C
    return torch.equal(grouped, grouped[:, :, :1].expand_as(grouped))


class BeamableCrossAttentionMixin:
    """For a ``FairseqIncrementalDecoder``: call :meth:`use_beamable_cross_attention` at the start of
    each forward with the encoder outputs its cross-attentions read (fairseq's dicts, whose
    ``encoder_out`` is ``[S x N x C]``).

    The per-sentence projection applies only while decoding incrementally, and only when the first
    step finds that the memory rows really are ``beam`` copies; later steps keep that answer. A full
    forward (training, validation loss, scoring) always attends row by row.
    """

    generation_beam_size = 1

    def set_beam_size(self, beam_size: int):
        """Called by fairseq's SequenceGenerator (through the model) before it decodes."""
        self.generation_beam_size = beam_size

    def use_beamable_cross_attention(self, prev_output_tokens: Tensor,
                                     encoder_outs: List[Optional[Dict[str, List[Tensor]]]],
                                     incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]]):
        if incremental_state is None:
            beam = 1
        elif prev_output_tokens.size(1) > 1:
            beam = getattr(self, "_beam_size", 1)  # what the first step chose
        else:
            beam = self.generation_beam_size
            present = [out["encoder_out"][0] for out in encoder_outs if out and out["encoder_out"]]
            if beam > 1 and not (present and all(rows_are_beam_copies(m, beam) for m in present)):
                beam = 1
        # fairseq's FairseqIncrementalDecoder.set_beam_size hands it to every MultiheadAttention
        super().set_beam_size(beam)
