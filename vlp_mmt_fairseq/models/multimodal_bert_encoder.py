"""The vision-language BERT encoder of Eq. 1: ``BERT(Cat[Emb(Cat[x, t]), FFN(v)])``.

Text input is ``[CLS] x [SEP] t [SEP]`` (source sentence x, object tags t) through BERT's own
embeddings (word, position, segment); the image's regions v enter through :class:`VisualProjection`
(no word or position embedding, as in Eq. 1). One attention mask covers the whole sequence, so
BERT's layers run once over text and regions together. Both ``vlp_mmt`` (translation) and
``vlp_pretrain`` (VLP) use this module.

``region_embedding`` (``--region-embedding``) adds an embedding e_j to region j inside FFN(v), before its
layer norm (``LayerNorm(FFN(v_j) + e_j)``, as BERT normalises word + position + segment):

- ``none``: nothing (Eq. 1, the default);
- ``segment``: BERT's token-type (segment) embedding of segment 1, the segment of the tags: the image side;
- ``position``: BERT's position embedding of the index the region would have if the regions continued the
  row's text, ``len([CLS] x [SEP] t [SEP]) + j``;
- ``type``: a learned vector shared by all regions (a region-type embedding; new, so it trains).

``decoder_memory`` (``--decoder-memory``): ``all`` gives the decoder every position; ``text`` marks the
regions as padding in ``encoder_padding_mask``, so the decoder's cross-attention never attends to them and
the regions reach it only through BERT's self-attention over the text states.

``region_fusion`` (``--region-fusion``): ``bert`` runs BERT's layers over text and regions together (Eq. 1);
``decoder`` runs them over the text alone and appends FFN(v) after BERT,
``Cat[BERT(Emb(Cat[x, t])), FFN(v)]``, so the regions never change the text states and reach the
translation only through the decoder's cross-attention over the text and visual keys/values together.
"""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from fairseq.models import FairseqEncoder

from vlp_mmt_fairseq.modules.text_packing import PositionKind, pack_text
from vlp_mmt_fairseq.modules.visual_projection import VisualProjection

REGION_EMBEDDINGS = ("none", "segment", "position", "type")
DECODER_MEMORIES = ("all", "text")
REGION_FUSIONS = ("bert", "decoder")
#: the segment (token type) that ``--region-embedding segment`` gives the regions: the tags' segment
REGION_SEGMENT = 1


class MultimodalBertEncoder(FairseqEncoder):
    """A Hugging Face ``BertModel`` over text, tags and regions, plus a projection to ``output_dim``.

    Returns fairseq's encoder-output dict (``encoder_out`` is T x B x C) with an extra
    ``position_kinds`` (B x T, :class:`PositionKind`) so that losses can tell x, t and v apart.
    """

    def __init__(self, dictionary, bert, feature_dim: Optional[int], output_dim: int,
                 frozen: bool = False, frozen_dropout: bool = False, visual_frozen: bool = False,
                 region_embedding: str = "none", decoder_memory: str = "all", region_fusion: str = "bert"):
        super().__init__(dictionary)
        if region_embedding not in REGION_EMBEDDINGS:
            raise ValueError(f"region embedding '{region_embedding}': expected one of {', '.join(REGION_EMBEDDINGS)}")
        if decoder_memory not in DECODER_MEMORIES:
            raise ValueError(f"decoder memory '{decoder_memory}': expected one of {', '.join(DECODER_MEMORIES)}")
        if region_fusion not in REGION_FUSIONS:
            raise ValueError(f"region fusion '{region_fusion}': expected one of {', '.join(REGION_FUSIONS)}")
        if region_embedding == "segment" and bert.config.type_vocab_size <= REGION_SEGMENT:
            raise ValueError(f"--region-embedding segment needs a BERT with {REGION_SEGMENT + 1} segments; this "
                             f"one has {bert.config.type_vocab_size}")
        self.region_embedding = region_embedding
        self.decoder_memory = decoder_memory
        self.region_fusion = region_fusion
        self.bert = bert
        hidden = bert.config.hidden_size
        self.max_text_positions = bert.config.max_position_embeddings
        self.visual = (
            VisualProjection(feature_dim, hidden, bert.config.hidden_dropout_prob, bert.config.layer_norm_eps)
            if feature_dim
            else None
        )
        self.region_type_embedding = None
        if region_embedding == "type" and self.visual is not None:
            self.region_type_embedding = nn.Parameter(torch.empty(hidden).normal_(0, bert.config.initializer_range))
        self.output_projection = nn.Linear(hidden, output_dim) if output_dim != hidden else nn.Identity()
        self.frozen = frozen
        self.frozen_dropout = frozen_dropout
        self.visual_frozen = visual_frozen
        self.cache = None  # stage 1 with --cache-frozen-encoder: a FrozenEncoderCache, used in training
        self.set_frozen(frozen, visual_frozen)

    # ------------------------------------------------------------------ freezing (stage 1)

    def set_frozen(self, frozen: bool, visual_frozen: bool = False) -> None:
        """Freeze BERT (stage 1), and FFN(v) too when it was pre-trained."""
        self.frozen, self.visual_frozen = frozen, visual_frozen and self.visual is not None
        for p in self.bert.parameters():
            p.requires_grad_(not frozen)
        if self.visual is not None:
            for p in self.visual.parameters():
                p.requires_grad_(not (frozen and visual_frozen))
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen and not self.frozen_dropout:
            self.bert.eval()  # frozen BERT runs without dropout: a fixed feature extractor
            if self.visual_frozen:
                self.visual.eval()
        return self

    # ------------------------------------------------------------------ forward

    def embed(self, src_tokens, tag_tokens=None, region_features=None, region_boxes=None, region_mask=None):
        """Eq. 1: ``Cat[Emb(Cat[x, t]), FFN(v)]`` and its padding mask and position kinds."""
        d = self.dictionary
        tokens, segments, kinds = pack_text(src_tokens, tag_tokens, d.pad(), d.eos(), d.bos())
        if tokens.size(1) > self.max_text_positions:
            raise ValueError(
                f"text input of {tokens.size(1)} positions exceeds BERT's {self.max_text_positions}"
            )
        x = self.bert.embeddings(input_ids=tokens, token_type_ids=segments)  # B x L x H
        keep = tokens.ne(d.pad())  # B x L
        return self.append_regions(x, keep, kinds, region_features, region_boxes, region_mask)

    def append_regions(self, x, keep, kinds, region_features=None, region_boxes=None, region_mask=None):
        """``Cat[x, FFN(v)]`` (B x (L + R) x H) with its mask and kinds; ``x`` is B x L x H, text only."""
        if self.visual is None or region_features is None or region_features.size(1) == 0:
            return x, keep, kinds
        v = self.visual(region_features, region_boxes, self.region_input_embedding(keep, region_features.size(1)))
        x = torch.cat([x, v.to(x.dtype)], dim=1)  # B x (L + R) x H
        region_kinds = torch.full_like(region_mask, int(PositionKind.REGION), dtype=kinds.dtype)
        kinds = torch.cat([kinds, region_kinds.masked_fill(~region_mask, int(PositionKind.PAD))], dim=1)
        return x, torch.cat([keep, region_mask], dim=1), kinds

    def region_input_embedding(self, text_keep: torch.Tensor, num_regions: int) -> Optional[torch.Tensor]:
        """e_j of ``--region-embedding`` (B x R x H or 1 x 1 x H), or None; ``text_keep``: B x L."""
        if self.region_embedding == "segment":
            return self.bert.embeddings.token_type_embeddings.weight[REGION_SEGMENT].view(1, 1, -1)
        if self.region_embedding == "type":
            return self.region_type_embedding.view(1, 1, -1)
        if self.region_embedding == "position":
            positions = text_keep.sum(1, keepdim=True) + torch.arange(num_regions, device=text_keep.device)  # B x R
            if int(positions.max()) >= self.max_text_positions:
                raise ValueError(f"--region-embedding position: text and {num_regions} regions need "
                                 f"{int(positions.max()) + 1} positions; BERT has {self.max_text_positions}")
            return self.bert.embeddings.position_embeddings(positions)  # B x R x H
        return None

    def input_trains(self, has_regions: bool) -> bool:
        """Whether anything before BERT's layers trains: a trainable FFN(v) or a learned region-type embedding
        (never with ``--region-fusion decoder``: the regions do not enter BERT)."""
        has_regions = has_regions and self.region_fusion == "bert"
        return has_regions and (not self.visual_frozen or self.region_type_embedding is not None)

    def run_bert(self, embeddings: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """BERT's layers over ready-made embeddings (B x T x H), one mask over all of them."""
        from transformers.masking_utils import create_bidirectional_mask

        # positional: the embeddings' keyword is input_embeds in transformers 5.0, inputs_embeds later
        mask = create_bidirectional_mask(self.bert.config, embeddings, keep)
        return self.bert.encoder(embeddings, attention_mask=mask).last_hidden_state  # B x T x H

    def forward_bert(self, src_tokens, tag_tokens=None, region_features=None, region_boxes=None, region_mask=None):
        """BERT's output before the projection: (hidden B x T x H, keep B x T, kinds B x T)."""
        if self.region_fusion == "decoder":  # BERT over the text alone, FFN(v) after it
            hidden, keep, kinds = self.forward_joint_bert(src_tokens, tag_tokens)
            return self.append_regions(hidden, keep, kinds, region_features, region_boxes, region_mask)
        return self.forward_joint_bert(src_tokens, tag_tokens, region_features, region_boxes, region_mask)

    def forward_joint_bert(self, src_tokens, tag_tokens=None, region_features=None, region_boxes=None,
                           region_mask=None):
        """BERT's layers over ``Cat[Emb(Cat[x, t]), FFN(v)]`` (the text alone without regions)."""
        if self.cache is not None and self.training:
            return self.cache.forward_bert(self, src_tokens, tag_tokens, region_features, region_boxes, region_mask)
        x, keep, kinds = self.embed(src_tokens, tag_tokens, region_features, region_boxes, region_mask)
        has_regions = self.visual is not None and region_features is not None
        if self.frozen and not self.input_trains(has_regions):
            with torch.no_grad():  # nothing before BERT trains: no graph needed
                return self.run_bert(x, keep), keep, kinds
        return self.run_bert(x, keep), keep, kinds

    def forward(self, src_tokens, src_lengths=None, tag_tokens=None, region_features=None, region_boxes=None,
                region_mask=None, **unused) -> Dict[str, List[torch.Tensor]]:
        hidden, keep, kinds = self.forward_bert(src_tokens, tag_tokens, region_features, region_boxes, region_mask)
        out = self.output_projection(hidden).transpose(0, 1)  # T x B x C
        return {
            "encoder_out": [out],  # T x B x C
            "encoder_padding_mask": [self.decoder_padding_mask(keep, kinds)],  # B x T
            "encoder_embedding": [],
            "encoder_states": [],
            "src_tokens": [],
            "src_lengths": [keep.sum(1)],  # B
            "position_kinds": [kinds],  # B x T
        }

    def decoder_padding_mask(self, keep: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """The positions the decoder must not attend to (B x T): padding, and the regions with ``text`` memory."""
        if self.decoder_memory == "text":
            return ~keep | kinds.eq(int(PositionKind.REGION))
        return ~keep

    @torch.jit.export
    def reorder_encoder_out(self, encoder_out: Dict[str, List[torch.Tensor]], new_order):
        """Reorder every key along its batch dimension (beam search)."""
        batch_dim = {"encoder_out": 1}
        return {
            key: [t.index_select(batch_dim.get(key, 0), new_order) for t in tensors]
            for key, tensors in encoder_out.items()
        }

    def max_positions(self):
        return self.max_text_positions
