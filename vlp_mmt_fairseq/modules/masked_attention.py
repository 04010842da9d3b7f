"""One cross-attention, several key masks: h_x and h_v of the modality loss from the same query."""
from typing import List

import torch
from fairseq import utils


def attend_masked(attention, query, memory, keeps, keys=None, values=None) -> List[torch.Tensor]:
    """fairseq MultiheadAttention ``attention`` from ``query`` over ``memory``, once per mask in ``keeps``.

    Equal to ``attention(query=query, key=memory, value=memory, key_padding_mask=~keep, static_kv=True)``
    for each ``keep`` (B x S, True = attend), but the projections and scores are computed once, and
    ``keys``/``values`` (``attention``'s own projections of ``memory``, S x B x C) are used when given.
    """
    tgt_len, bsz, dim = query.shape
    heads, head_dim = attention.num_heads, attention.head_dim

    def split_heads(x):  # L x B x C -> (B * heads) x L x head_dim
        return x.contiguous().view(x.size(0), bsz * heads, head_dim).transpose(0, 1)

    q = split_heads(attention.q_proj(query) * attention.scaling)
    k = split_heads(attention.k_proj(memory) if keys is None else keys)
    v = split_heads(attention.v_proj(memory) if values is None else values)
    scores = torch.bmm(q, k.transpose(1, 2)).view(bsz, heads, tgt_len, -1)  # B x heads x T x S
    outputs = []
    for keep in keeps:
        masked = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        probs = attention.dropout_module(utils.softmax(masked, dim=-1).type_as(scores))
        attended = torch.bmm(probs.view(bsz * heads, tgt_len, -1), v)  # (B * heads) x T x head_dim
        outputs.append(attention.out_proj(attended.transpose(0, 1).contiguous().view(tgt_len, bsz, dim)))
    return outputs
