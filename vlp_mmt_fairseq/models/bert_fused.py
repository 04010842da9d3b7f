"""Model ``bert_fused``: the BERT-fused NMT baseline (Zhu et al., ICLR 2020, "Incorporating BERT
into Neural Machine Translation"), written for fairseq 0.12.

A stock transformer whose every encoder layer also attends to BERT's output of the source
(BERT-encoder attention, next to self-attention) and whose every decoder layer also attends to
it (BERT-decoder attention, next to the encoder-decoder attention). The two attentions of a
layer are mixed by *drop-net*: in training, with probability p/2 only the first is used, with
p/2 only the BERT one, otherwise their average; at inference always their average. BERT runs
once per batch, in the encoder, and reaches the decoder through the encoder output. It is
frozen by default. ``--warmstart-from`` copies a text-only ``transformer`` checkpoint into all
matching parameters (the paper's training recipe); the BERT attentions keep their random
initialisation, as in the authors' code.
"""
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch
from fairseq import checkpoint_utils
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import (
    DEFAULT_MAX_SOURCE_POSITIONS,
    DEFAULT_MAX_TARGET_POSITIONS,
    TransformerConfig,
    TransformerEncoderBase,
    TransformerModel,
    base_architecture,
    tiny_architecture,
)
from fairseq.models.transformer.transformer_decoder_aug import AugTransformerDecoderBase
from torch import Tensor

from vlp_mmt_fairseq.bert_loading import load_bert_model
from vlp_mmt_fairseq.dataclass.configs import BertEncoderConfig, add_dataclass_args
from vlp_mmt_fairseq.models.multimodal_bert_encoder import MultimodalBertEncoder
from vlp_mmt_fairseq.modules.beamable_cross_attention import BeamableCrossAttentionMixin
from vlp_mmt_fairseq.modules.bert_fused_layers import BertFusedDecoderLayer, BertFusedEncoderLayer, wrap_layer

logger = logging.getLogger(__name__)


class BertFusedEncoder(TransformerEncoderBase):
    """fairseq's transformer encoder over the text source, with BERT run once per batch.

    Its output adds ``bert_encoder_out`` (S' x B x H) and ``bert_padding_mask`` (B x S') to the
    stock keys; :meth:`reorder_encoder_out` reorders them too, so beam search runs BERT once
    per sentence.
    """

    def __init__(self, cfg, dictionary, embed_tokens, bert: MultimodalBertEncoder, dropnet: float):
        # build_encoder_layer (called by the base __init__) needs these two
        self.bert_dim = bert.bert.config.hidden_size
        self.dropnet = dropnet
        super().__init__(cfg, dictionary, embed_tokens)
        self.bert_encoder = bert

    def build_encoder_layer(self, cfg):
        return wrap_layer(BertFusedEncoderLayer(cfg, self.bert_dim, self.dropnet), cfg)

    def forward_bert(self, bert_tokens: Tensor) -> Tuple[Tensor, Tensor]:
        """BERT's last layer over ``[CLS] x [SEP]`` (B x S'): (S' x B x H, padding mask B x S')."""
        hidden, keep, _ = self.bert_encoder.forward_bert(bert_tokens)
        return hidden.transpose(0, 1), ~keep

    def forward(self, src_tokens, src_lengths: Optional[Tensor] = None, bert_tokens: Optional[Tensor] = None,
                return_all_hiddens: bool = False, token_embeddings: Optional[Tensor] = None):
        if bert_tokens is None:
            raise ValueError("bert_fused needs net_input['bert_tokens']: train it with --task bert_fused_translation")
        bert_out, bert_padding_mask = self.forward_bert(bert_tokens)
        padding_mask = src_tokens.eq(self.padding_idx)
        x, embedding = self.forward_embedding(src_tokens, token_embeddings)
        x = (x * (1 - padding_mask.unsqueeze(-1).type_as(x))).transpose(0, 1)  # T x B x C
        states = [x] if return_all_hiddens else []
        for layer in self.layers:
            x = layer(x, padding_mask, bert_out, bert_padding_mask)
            if return_all_hiddens:
                states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return {
            "encoder_out": [x],  # T x B x C
            "encoder_padding_mask": [padding_mask],  # B x T
            "encoder_embedding": [embedding],  # B x T x C
            "encoder_states": states,  # List[T x B x C]
            "src_tokens": [],
            "src_lengths": [src_tokens.ne(self.padding_idx).sum(dim=1, dtype=torch.int32).reshape(-1, 1)],
            "bert_encoder_out": [bert_out],  # S' x B x H
            "bert_padding_mask": [bert_padding_mask],  # B x S'
        }

    @torch.jit.export
    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order):
        reordered = super().reorder_encoder_out(encoder_out, new_order)
        reordered["bert_encoder_out"] = [encoder_out["bert_encoder_out"][0].index_select(1, new_order)]
        reordered["bert_padding_mask"] = [encoder_out["bert_padding_mask"][0].index_select(0, new_order)]
        return reordered


# ---------------------------------------------------------------------------------------- decoder


def bert_memory(encoder_out: Optional[Dict[str, List[Tensor]]]) -> Dict[str, List[Tensor]]:
    """BERT's output, from :class:`BertFusedEncoder`'s output, as a second encoder output."""
    if encoder_out is None or "bert_encoder_out" not in encoder_out:
        raise ValueError("the bert_fused decoder needs BertFusedEncoder's output (with bert_encoder_out)")
    return {"encoder_out": encoder_out["bert_encoder_out"], "encoder_padding_mask": encoder_out["bert_padding_mask"]}


class BertFusedDecoder(BeamableCrossAttentionMixin, AugTransformerDecoderBase):
    """fairseq's transformer decoder whose layers also attend to BERT (:class:`BertFusedDecoderLayer`).

    BERT's output comes from the encoder output (:func:`bert_memory`); incremental decoding
    caches its keys and values like the encoder's, once per sentence in beam search.
    """

    def __init__(self, cfg, dictionary, embed_tokens, bert_dim: int, dropnet: float):
        # build_decoder_layer (called by the base __init__) needs these two
        self.bert_dim = bert_dim
        self.dropnet = dropnet
        super().__init__(cfg, dictionary, embed_tokens, encoder_attn_merge_type="parallel", dropnet_ratio=dropnet / 2)

    def build_decoder_layer(self, cfg, *unused_args, **unused_kwargs):
        return wrap_layer(BertFusedDecoderLayer(cfg, self.bert_dim, self.dropnet), cfg)

    def extract_features(self, prev_output_tokens, encoder_out=None, encoder_out_aug=None, incremental_state=None,
                         **kwargs):
        if encoder_out_aug is None:
            encoder_out_aug = bert_memory(encoder_out)
        self.use_beamable_cross_attention(prev_output_tokens, [encoder_out, encoder_out_aug], incremental_state)
        return super().extract_features(prev_output_tokens, encoder_out, encoder_out_aug, incremental_state, **kwargs)


# ---------------------------------------------------------------------------------------- model


def is_bert_fusion_parameter(name: str) -> bool:
    """Whether a state-dict key belongs to what BERT-fused adds to a transformer (BERT, BERT attentions)."""
    return name.startswith("encoder.bert_encoder.") or ".bert_attn." in name or ".encoder_attn2." in name


@register_model("bert_fused")
class BertFusedModel(TransformerModel):
    """BERT-fused NMT: a transformer with BERT-encoder and BERT-decoder attentions in every layer.

    Needs ``--task bert_fused_translation`` (its batches carry ``bert_tokens``; its
    ``--bert-model`` is the BERT).
    """

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)  # fairseq's transformer options
        add_dataclass_args(parser, BertEncoderConfig())
        parser.add_argument("--dropnet", type=float, metavar="P",
                            help="drop-net rate p_net in [0, 1]: in training, each layer uses only its own "
                                 "attention with probability P/2 and only the BERT attention with P/2, else "
                                 "their average; inference always averages (default 1.0, the authors' published "
                                 "recipe; their --encoder-bert-dropout-ratio is P/2)")
        parser.add_argument("--finetune-bert", action="store_true",
                            help="train BERT too (default: BERT is frozen, as in the authors' code)")
        parser.add_argument("--warmstart-from", metavar="PATH", default=None,
                            help="initialise every parameter a text-only transformer checkpoint has (same "
                                 "sizes and layer counts) from it; BERT and the BERT attentions stay as built")

    @classmethod
    def build_model(cls, args, task):
        bert_fused_base(args)
        if not hasattr(task, "bert_dictionary"):
            raise ValueError("--arch bert_fused_* needs --task bert_fused_translation (batches with bert_tokens)")
        if not 0.0 <= args.dropnet <= 1.0:
            raise ValueError(f"--dropnet {args.dropnet}: must lie in [0, 1]")
        bert_model = load_bert_model(task.cfg.bert_model, random_init=args.bert_random_init)
        bert = MultimodalBertEncoder(  # its text-only mode: BERT over [CLS] x [SEP], no projection
            task.bert_dictionary, bert_model, feature_dim=None, output_dim=bert_model.config.hidden_size,
            frozen=not args.finetune_bert, frozen_dropout=args.frozen_bert_dropout,
        )
        cfg = TransformerConfig.from_namespace(args)
        if cfg.offload_activations:
            cfg.checkpoint_activations = True  # offloading implies checkpointing
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        encoder_embed = cls.build_embedding(cfg, src_dict, cfg.encoder.embed_dim, cfg.encoder.embed_path)
        if cfg.share_all_embeddings:
            if src_dict != tgt_dict:
                raise ValueError("--share-all-embeddings requires a joined dictionary")
            decoder_embed = encoder_embed
            cfg.share_decoder_input_output_embed = True
        else:
            decoder_embed = cls.build_embedding(cfg, tgt_dict, cfg.decoder.embed_dim, cfg.decoder.embed_path)
        encoder = BertFusedEncoder(cfg, src_dict, encoder_embed, bert, args.dropnet)
        decoder = BertFusedDecoder(cfg, tgt_dict, decoder_embed, encoder.bert_dim, args.dropnet)
        model = cls(cfg, encoder, decoder)
        if args.warmstart_from:
            warm_start(model, args.warmstart_from)
            # from here on the weights live in this model's own checkpoints: fairseq-generate
            # rebuilds the model from their configuration without reading the text-only one again
            args.warmstart_from = None
        return model

    def set_beam_size(self, beam_size):
        """Beam search: the decoder projects each sentence's memories once, not once per hypothesis."""
        self.decoder.set_beam_size(beam_size)

    def forward(self, src_tokens, src_lengths, prev_output_tokens, bert_tokens: Optional[Tensor] = None,
                return_all_hiddens: bool = True, features_only: bool = False,
                alignment_layer: Optional[int] = None, alignment_heads: Optional[int] = None):
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths, bert_tokens=bert_tokens,
                                   return_all_hiddens=return_all_hiddens)
        return self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=features_only,
                            alignment_layer=alignment_layer, alignment_heads=alignment_heads,
                            src_lengths=src_lengths, return_all_hiddens=return_all_hiddens)


def warm_start(model: BertFusedModel, path: str) -> List[str]:
    """Load a text-only transformer checkpoint into ``model``; returns the keys left as built.

    Every weight of the checkpoint must exist in the model with the same shape, and every model
    weight it lacks must be a BERT-fusion one (:func:`is_bert_fusion_parameter`).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--warmstart-from {path}: no such checkpoint")
    state = checkpoint_utils.load_checkpoint_to_cpu(path)["model"]
    for names in tied_weights(model):
        values = [state[n] for n in names if n in state]
        if any(not torch.equal(values[0], v) for v in values[1:]):
            raise ValueError(f"--warmstart-from {path}: {' and '.join(names)} are one weight in this model but "
                             "differ in the checkpoint; use the same embedding-sharing options as the text model")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"--warmstart-from {path}: weights do not fit this architecture: {e}") from e
    lacking = [k for k in result.missing_keys if not is_bert_fusion_parameter(k)]
    if result.unexpected_keys or lacking:
        raise ValueError(
            f"--warmstart-from {path}: not a text-only transformer of this architecture (weights the model "
            f"lacks: {result.unexpected_keys[:5]}; model weights the checkpoint lacks: {lacking[:5]})"
        )
    logger.info("warm start from %s: %d weights loaded, %d BERT-fusion weights left as built",
                path, len(state), len(result.missing_keys))
    return result.missing_keys


def tied_weights(model) -> List[List[str]]:
    """Groups of state-dict keys that name one tensor (e.g. shared input/output embeddings)."""
    groups: Dict[int, List[str]] = {}
    for name, value in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(value), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


@register_model_architecture("bert_fused", "bert_fused_base")
def bert_fused_base(args):
    """fairseq's ``transformer`` (base: 6+6 layers, d=512, FFN 2048, 8 heads) plus BERT fusion."""
    args.dropnet = getattr(args, "dropnet", 1.0)
    args.finetune_bert = getattr(args, "finetune_bert", False)
    args.frozen_bert_dropout = getattr(args, "frozen_bert_dropout", False)
    args.bert_random_init = getattr(args, "bert_random_init", False)
    args.warmstart_from = getattr(args, "warmstart_from", None)
    if getattr(args, "max_source_positions", None) is None:
        args.max_source_positions = DEFAULT_MAX_SOURCE_POSITIONS
    if getattr(args, "max_target_positions", None) is None:
        args.max_target_positions = DEFAULT_MAX_TARGET_POSITIONS
    base_architecture(args)


@register_model_architecture("bert_fused", "bert_fused_tiny")
def bert_fused_tiny(args):
    """fairseq's ``transformer_tiny`` sizes (for tests): its checkpoints warm-start this model."""
    tiny_architecture(args)
    bert_fused_base(args)
