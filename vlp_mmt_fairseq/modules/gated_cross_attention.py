"""A decoder cross-attention whose image positions enter through a gate that starts closed.

From one query, each head attends to the text positions alone (a_x) and to the gated positions
alone (a_v: the regions), with the same projections; the layer returns

    out_proj(a_x + tanh(g_h) a_v)            g_h: one learned scalar per head, 0 at the start

so a freshly built model translates as its text-only twin (the regions contribute exactly nothing),
and training opens a head's gate only where the regions lower the loss (the gradient of g_h at 0 is
that of the loss along a_v). ``--cross-attention joint`` is the paper's single softmax over all
positions (fairseq's ``MultiheadAttention``).

The returned attention weights, for the attention-mass tools and alignment, are the share of each
position in the output: (p_x + |tanh g_h| p_v) / (1 + |tanh g_h|), averaged over heads unless
``need_head_weights``.
"""
from typing import Dict, Optional, Tuple

import torch
from fairseq import utils
from fairseq.modules import MultiheadAttention
from torch import Tensor


class GatedCrossAttention(MultiheadAttention):
    """fairseq's encoder-decoder ``MultiheadAttention`` with the gate above.

    Before each forward, the decoder sets :attr:`gated_positions` (N x S, True at the encoder positions behind
    the gate, N the query batch). Keys and values are cached in fairseq's incremental state under fairseq's own
    names, so beam reordering and the per-sentence ("beamable") projection work as for the stock module.
    """

    def __init__(self, embed_dim, num_heads, kdim=None, vdim=None, dropout=0.0):
        super().__init__(embed_dim, num_heads, kdim=kdim, vdim=vdim, dropout=dropout,
                         encoder_decoder_attention=True)
        self.gate = torch.nn.Parameter(torch.zeros(num_heads))
        self.gated_positions: Optional[Tensor] = None

    def gate_values(self) -> Tensor:
        """tanh(g_h) per head."""
        return torch.tanh(self.gate)

    def _keys_values(self, key: Tensor, incremental_state) -> Tuple[Tensor, Tensor]:
        """Projected keys and values, M x heads x S x head_dim (M = N, or N / beam when beamable)."""
        saved = self._get_input_buffer(incremental_state) if incremental_state is not None else {}
        if saved.get("prev_key") is not None:
            return saved["prev_key"], saved["prev_value"]
        if incremental_state is not None and self.beam_size > 1:
            key = key.view(key.size(0), -1, self.beam_size, key.size(2))[:, :, 0, :]  # S x N/beam x C
        src_len, rows, _ = key.shape

        def split_heads(x):  # S x M x C -> M x heads x S x head_dim
            return x.contiguous().view(src_len, rows, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

        k, v = split_heads(self.k_proj(key)), split_heads(self.v_proj(key))
        if incremental_state is not None:
            saved["prev_key"], saved["prev_value"] = k, v
            self._set_input_buffer(incremental_state, saved)
        return k, v

    def forward(self, query: Tensor, key: Optional[Tensor], value: Optional[Tensor],
                key_padding_mask: Optional[Tensor] = None,
                incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
                need_weights: bool = True, static_kv: bool = False, attn_mask: Optional[Tensor] = None,
                before_softmax: bool = False, need_head_weights: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        if self.gated_positions is None:
            raise RuntimeError("GatedCrossAttention needs gated_positions: set them from the encoder output")
        if attn_mask is not None or before_softmax:
            raise NotImplementedError("GatedCrossAttention has no attn_mask / before_softmax")
        tgt_len, bsz, _ = query.shape  # T x N x C
        k, v = self._keys_values(key, incremental_state)  # M x heads x S x head_dim
        rows, src_len = k.size(0), k.size(2)
        group = bsz // rows  # hypotheses per projected row (beam, or 1)
        q = (self.q_proj(query) * self.scaling).view(tgt_len, rows, group, self.num_heads, self.head_dim)
        scores = torch.einsum("tmghd,mhsd->mghts", q, k).reshape(bsz, self.num_heads, tgt_len, src_len)

        gated = self.gated_positions.bool()  # N x S
        keep = torch.ones_like(gated) if key_padding_mask is None else ~key_padding_mask.bool()
        text_keep, image_keep = keep & ~gated, keep & gated

        def attend(keep_mask):  # N x heads x T x S probabilities, 0 on rows with no kept position
            empty = ~keep_mask.any(1, keepdim=True)  # N x 1: such a row attends anywhere, then counts 0
            masked = scores.masked_fill(~(keep_mask | empty)[:, None, None, :], float("-inf"))
            return utils.softmax(masked, dim=-1).masked_fill(empty[:, :, None, None], 0.0).type_as(scores)

        p_x, p_v = attend(text_keep), attend(image_keep)
        gate = self.gate_values().type_as(scores)[None, :, None, None]  # 1 x heads x 1 x 1
        mixed = self.dropout_module(p_x) + gate * self.dropout_module(p_v)  # N x heads x T x S
        attended = torch.einsum("mghts,mhsd->tmghd", mixed.view(rows, group, self.num_heads, tgt_len, src_len), v)
        attn = self.out_proj(attended.reshape(tgt_len, bsz, self.embed_dim))  # T x N x C

        weights = None
        if need_weights or need_head_weights:
            share = gate.abs()
            weights = ((p_x + share * p_v) / (1.0 + share)).float().transpose(0, 1)  # heads x N x T x S
            if not need_head_weights:
                weights = weights.mean(dim=0)  # N x T x S
        return attn, weights
