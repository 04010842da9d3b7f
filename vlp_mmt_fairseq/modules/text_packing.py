"""The text half of Eq. 1's input: ``[CLS] x [SEP] t [SEP]`` packed, with segment ids and position kinds."""
from enum import IntEnum
from typing import Optional

import torch


class PositionKind(IntEnum):
    """What an encoder position holds; recorded per position in the encoder output."""

    PAD = 0
    SPECIAL = 1  # [CLS], [SEP]
    SOURCE = 2  # a WordPiece of the source sentence x
    TAG = 3  # a WordPiece of an object tag t
    REGION = 4  # an image region v


def pack_text(src_tokens: torch.Tensor, tag_tokens: Optional[torch.Tensor], pad: int, sep: int, cls: int):
    """Build right-padded ``[CLS] x [SEP] t [SEP]`` ids with their segment ids and position kinds.

    ``src_tokens`` (B x S) already hold ``[CLS] x [SEP]`` right-padded; ``tag_tokens`` (B x T) hold
    ``t [SEP]`` right-padded (all pad for an image without tags).
    """
    src_kinds = torch.full_like(src_tokens, int(PositionKind.SOURCE))
    src_kinds[(src_tokens == cls) | (src_tokens == sep)] = int(PositionKind.SPECIAL)
    parts = [(src_tokens, src_kinds, torch.zeros_like(src_tokens))]
    if tag_tokens is not None and tag_tokens.numel() > 0:
        tag_kinds = torch.full_like(tag_tokens, int(PositionKind.TAG))
        tag_kinds[tag_tokens == sep] = int(PositionKind.SPECIAL)
        parts.append((tag_tokens, tag_kinds, torch.ones_like(tag_tokens)))
    tokens = torch.cat([p[0] for p in parts], dim=1)  # B x L
    kinds = torch.cat([p[1] for p in parts], dim=1)
    segments = torch.cat([p[2] for p in parts], dim=1)
    is_pad = tokens.eq(pad)
    if len(parts) > 1:
        # move every row's padding to its end, keeping the order of the real tokens
        order = torch.argsort(is_pad.to(torch.int8), dim=1, stable=True)
        tokens, kinds, segments, is_pad = (t.gather(1, order) for t in (tokens, kinds, segments, is_pad))
        width = int((~is_pad).sum(1).max())
        tokens, kinds, segments, is_pad = (t[:, :width] for t in (tokens, kinds, segments, is_pad))
    kinds = kinds.masked_fill(is_pad, int(PositionKind.PAD))
    segments = segments.masked_fill(is_pad, 0)
    return tokens, segments, kinds
