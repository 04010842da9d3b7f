"""Model ``vlp_mmt``: the multimodal BERT encoder plus fairseq's transformer decoder.

By default the model is the paper's (``--region-fusion bert --cross-attention joint``): one BERT pass over text,
tags and FFN(v) of the regions (Eq. 1), and one softmax over all encoder positions (source, tags and regions)
in each decoder layer's cross-attention. Unlike the paper's stage 1, FFN(v) keeps training while BERT is frozen
(``--train-visual-projection``, the stage-1 ablation's best row; ``--no-train-visual-projection`` freezes a
pre-trained FFN(v) with BERT). ``--region-fusion decoder`` appends FFN(v) after BERT instead, and
``--cross-attention gated`` adds the regions through a per-head gate that starts closed
(:mod:`~vlp_mmt_fairseq.modules.gated_cross_attention`). For the modality loss, the decoder can also return the
query that each layer's cross-attention received (``return_cross_attn_queries=True``); translation never asks
for it.
"""
import argparse
import logging

import torch
from fairseq.models import FairseqEncoderDecoderModel, register_model, register_model_architecture
from fairseq.models.transformer import TransformerDecoder, TransformerModel, base_architecture

from vlp_mmt_fairseq.bert_export import export_encoder, read_encoder_state
from vlp_mmt_fairseq.bert_loading import load_bert_model
from vlp_mmt_fairseq.dataclass.configs import BertEncoderConfig, add_dataclass_args
from vlp_mmt_fairseq.models.multimodal_bert_encoder import (
    DECODER_MEMORIES,
    REGION_EMBEDDINGS,
    REGION_FUSIONS,
    MultimodalBertEncoder,
)
from vlp_mmt_fairseq.modules import feature_record
from vlp_mmt_fairseq.modules.beamable_cross_attention import BeamableCrossAttentionMixin
from vlp_mmt_fairseq.modules.frozen_encoder_cache import FrozenEncoderCache
from vlp_mmt_fairseq.modules.gated_cross_attention import GatedCrossAttention
from vlp_mmt_fairseq.modules.text_packing import PositionKind

logger = logging.getLogger(__name__)

#: joint: one softmax over all encoder positions (the paper); gated: regions behind a closed gate
CROSS_ATTENTIONS = ("joint", "gated")


class CrossAttentionQueryDecoder(BeamableCrossAttentionMixin, TransformerDecoder):
    """fairseq's TransformerDecoder that can also return each layer's cross-attention query.

    With the queries come the keys and values the layer projected from the encoder output, so the
    modality loss attends with them without projecting the encoder output again.

    In beam search the cross-attention projects the keys and values once per sentence rather than
    once per hypothesis (:class:`BeamableCrossAttentionMixin`).

    ``return_cross_attn_queries`` is True (all layers) or the indices of the layers whose queries the caller
    differentiates: with ``--checkpoint-activations`` those layers run unwrapped while grad is on (fairseq
    runs a checkpointed layer under no_grad, so its captured query would carry no graph); the others stay
    checkpointed. Gradients are the same as without checkpointing; the memory of those layers is not saved.
    """

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__(args, dictionary, embed_tokens)
        self._captured = None
        self.gated = getattr(args, "cross_attention", "joint") == "gated"  # older checkpoints: joint
        for layer in self.layers:
            if self.gated:
                stock = layer.encoder_attn
                layer.encoder_attn = GatedCrossAttention(stock.embed_dim, stock.num_heads, kdim=stock.kdim,
                                                         vdim=stock.vdim, dropout=stock.dropout_module.p)
            layer.encoder_attn.register_forward_pre_hook(self._capture_query, with_kwargs=True)
            layer.encoder_attn.k_proj.register_forward_hook(self._capture_projection("cross_attn_keys"))
            layer.encoder_attn.v_proj.register_forward_hook(self._capture_projection("cross_attn_values"))

    def _capture_query(self, module, args, kwargs):
        if self._captured is not None:
            self._captured["cross_attn_queries"].append(kwargs["query"] if "query" in kwargs else args[0])

    def _capture_projection(self, name):
        def capture(module, args, output):
            if self._captured is not None:
                self._captured[name].append(output)  # S x B x C
        return capture

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, features_only=False,
                return_cross_attn_queries: bool = False, **kwargs):
        self.use_beamable_cross_attention(prev_output_tokens, [encoder_out], incremental_state)
        if self.gated:
            regions = encoder_out["position_kinds"][0].eq(int(PositionKind.REGION))  # B x S
            for layer in self.layers:
                layer.encoder_attn.gated_positions = regions
        if not return_cross_attn_queries:
            return super().forward(prev_output_tokens, encoder_out=encoder_out,
                                   incremental_state=incremental_state, features_only=features_only, **kwargs)
        self._captured = {"cross_attn_queries": [], "cross_attn_keys": [], "cross_attn_values": []}
        wanted = range(len(self.layers)) if return_cross_attn_queries is True else return_cross_attn_queries
        # checkpoint_wrapper keeps the plain forward as precheckpoint_forward; run the wanted layers with it
        unwrapped = [self.layers[i] for i in wanted
                     if torch.is_grad_enabled() and hasattr(self.layers[i], "precheckpoint_forward")]
        saved = [layer.forward for layer in unwrapped]
        try:
            for layer in unwrapped:
                layer.forward = layer.precheckpoint_forward
            x, extra = super().forward(prev_output_tokens, encoder_out=encoder_out,
                                       incremental_state=incremental_state, features_only=features_only, **kwargs)
            extra.update(self._captured)  # per layer: queries T x B x C, projected keys and values S x B x C
        finally:
            self._captured = None
            for layer, forward in zip(unwrapped, saved):
                layer.forward = forward
        return x, extra


@register_model("vlp_mmt")
class VlpMmtModel(FairseqEncoderDecoderModel):
    """VLP-MMT: a (vision-language pre-trained) BERT encoder and a transformer decoder.

    The BERT and its tokenizer come from the task's ``--bert-model``. With the task's
    ``--no-images`` the same model is the text-only BERT-encoder baseline.
    """

    @staticmethod
    def add_args(parser):
        TransformerModel.add_args(parser)  # the decoder's options, as fairseq's transformer has them
        add_dataclass_args(parser, BertEncoderConfig())
        parser.add_argument("--freeze-bert", action="store_true",
                            help="stage 1: freeze BERT (FFN(v) keeps training unless --no-train-visual-projection)")
        parser.add_argument("--train-visual-projection", action=argparse.BooleanOptionalAction, default=True,
                            help="stage 1: keep FFN(v) training while BERT is frozen (default: the stage-1 "
                                 "ablation's best row, examples/ablations); --no-train-visual-projection freezes "
                                 "FFN(v) from --load-vlp with BERT, as the paper's stage 1 freezes the whole "
                                 "encoder, and is what --cache-frozen-encoder needs when the regions enter BERT "
                                 "(a fresh FFN(v), without --load-vlp, always trains)")
        parser.add_argument("--region-embedding", choices=REGION_EMBEDDINGS, default="none",
                            help="what is added to FFN(v) of each region, before its layer norm: none (Eq. 1, "
                                 "default); segment: BERT's segment embedding of segment 1 (the tags' segment); "
                                 "position: BERT's position embedding, the regions numbered on after the text; "
                                 "type: a learned region-type vector (it trains, so no --cache-frozen-encoder)")
        parser.add_argument("--decoder-memory", choices=DECODER_MEMORIES, default="all",
                            help="what the decoder's cross-attention sees: all encoder positions (default), or "
                                 "text: the regions are hidden from it and shape the text states only through "
                                 "BERT's self-attention (the modality loss then cannot run)")
        parser.add_argument("--region-fusion", choices=REGION_FUSIONS, default="bert",
                            help="where the regions meet the text: bert (default): BERT's layers run over text and "
                                 "FFN(v) together (Eq. 1, the paper); decoder: BERT runs over the text (and tags) "
                                 "alone and FFN(v) is appended after it, so the regions leave the text states "
                                 "untouched and reach the translation through the decoder's cross-attention; FFN(v) "
                                 "then sits after the frozen BERT, and --cache-frozen-encoder still applies")
        parser.add_argument("--cross-attention", choices=CROSS_ATTENTIONS, default="joint",
                            help="how the decoder attends to the encoder: joint (default): one softmax over text, "
                                 "tag and region positions (the paper); gated: per head, text (and tags) and "
                                 "regions attended apart from the same query and summed as a_x + tanh(g) a_v with "
                                 "g = 0 at the start, so training starts from the text-only model and opens the "
                                 "gate only as far as the regions help")
        parser.add_argument("--load-vlp", metavar="PATH", default=None,
                            help="initialise BERT and FFN(v) from a vlp_pretrain checkpoint (or a directory "
                                 "written by vlp-mmt-export-bert); the pre-training heads are dropped")
        parser.add_argument("--export-vlp-bert", metavar="DIR", default=None,
                            help="with --load-vlp: also write the loaded encoder as a Hugging Face BERT "
                                 "directory (see vlp-mmt-export-bert)")
        parser.add_argument("--cache-frozen-encoder", action="store_true",
                            help="stage 1: compute the frozen BERT's output once per sentence and reuse it in "
                                 "later epochs (needs --freeze-bert, and nothing trainable before BERT: --no-images, "
                                 "--no-regions, --region-fusion decoder, or --load-vlp with "
                                 "--no-train-visual-projection)")
        parser.add_argument("--cache-frozen-encoder-mem-mb", type=float, metavar="MB", default=2048,
                            help="memory for --cache-frozen-encoder; the rest spills to disk (default: 2048)")
        parser.add_argument("--cache-frozen-encoder-dir", metavar="DIR", default=None,
                            help="where --cache-frozen-encoder spills and keeps its entries across runs "
                                 "(default: a temporary directory, removed at exit)")
        parser.add_argument("--image-feature-dim", type=int, metavar="D", default=None,
                            help="recorded in the checkpoint: the region feature size D the model was trained on "
                                 "(0: none); filled from --image-features, and checked against it later")
        parser.add_argument("--image-extractor", metavar="TEXT", default=None,
                            help="recorded in the checkpoint: the 'extractor' of the store it was trained on")

    @classmethod
    def build_model(cls, args, task):
        vlp_mmt_base(args)
        bert = load_bert_model(task.cfg.bert_model, random_init=getattr(args, "bert_random_init", False))
        record = feature_record.record_for_task(args, task)  # a store unlike the recorded one stops here
        feature_dim = record.feature_dim or None
        encoder = MultimodalBertEncoder(task.source_dictionary, bert, feature_dim, args.decoder_embed_dim,
                                        region_embedding=getattr(args, "region_embedding", "none"),
                                        decoder_memory=getattr(args, "decoder_memory", "all"),
                                        # a checkpoint from before the option was trained with Eq. 1
                                        region_fusion=getattr(args, "region_fusion", "bert"))
        loaded_visual = False
        if getattr(args, "load_vlp", None):
            loaded_visual = load_vlp_encoder(encoder, args.load_vlp)
            if getattr(args, "export_vlp_bert", None) and is_first_rank():
                export_encoder(encoder.bert, encoder.visual if loaded_visual else None, args.export_vlp_bert,
                               task.cfg.bert_model, source=args.load_vlp, force=True)
                logger.info("exported the VLP encoder to %s", args.export_vlp_bert)
            # from here on the weights live in this model's own checkpoints: fairseq-generate and
            # resumed runs rebuild the model from them without reading the VLP file again
            args.load_vlp = None
            args.export_vlp_bert = None
        elif getattr(args, "export_vlp_bert", None):
            raise ValueError("--export-vlp-bert needs --load-vlp")
        encoder.frozen_dropout = getattr(args, "frozen_bert_dropout", False)
        # with --region-fusion decoder FFN(v) sits after the frozen BERT, and nothing cached depends on it
        visual_trains = getattr(args, "train_visual_projection", True) or encoder.region_fusion == "decoder"
        visual_frozen = loaded_visual and not visual_trains
        encoder.set_frozen(getattr(args, "freeze_bert", False), visual_frozen=visual_frozen)
        if getattr(args, "cache_frozen_encoder", False):
            encoder.cache = FrozenEncoderCache(args.cache_frozen_encoder_mem_mb, args.cache_frozen_encoder_dir)
        embed_tokens = TransformerModel.build_embedding(args, task.target_dictionary, args.decoder_embed_dim)
        decoder = CrossAttentionQueryDecoder(args, task.target_dictionary, embed_tokens)
        model = cls(encoder, decoder)
        model.register_buffer(feature_record.BUFFER_NAME, record.to_tensor())  # checked when resuming
        model.feature_record = record
        return model

    def forward(self, src_tokens, src_lengths, prev_output_tokens, tag_tokens=None, region_features=None,
                region_boxes=None, region_mask=None, return_cross_attn_queries: bool = False, **kwargs):
        encoder_out = self.encoder(src_tokens, src_lengths, tag_tokens=tag_tokens, region_features=region_features,
                                   region_boxes=region_boxes, region_mask=region_mask)
        decoder_out = self.decoder(prev_output_tokens, encoder_out=encoder_out,
                                   return_cross_attn_queries=return_cross_attn_queries, **kwargs)
        if return_cross_attn_queries:
            decoder_out[1]["encoder_out"] = encoder_out  # the memory the queries attended to
        return decoder_out

    @classmethod
    def from_pretrained(cls, model_dir, image_features=None, **kwargs):
        """A model directory (``vlp-mmt-export-model``) as fairseq's GeneratorHubInterface, whose
        ``translate(sentences, images=...)`` takes image paths, keys of ``image_features`` or ready features."""
        from vlp_mmt_fairseq.hub_interface import from_pretrained

        return from_pretrained(model_dir, image_features=image_features, **kwargs)

    def set_beam_size(self, beam_size):
        """Beam search: the decoder projects each sentence's memory once, not once per hypothesis."""
        self.decoder.set_beam_size(beam_size)

    def upgrade_state_dict_named(self, state_dict, name):
        """The checkpoint must have been trained on the features this model was built for (see
        :mod:`~vlp_mmt_fairseq.modules.feature_record`; a multimodal model keeps FFN(v) under ``--no-images``)."""
        super().upgrade_state_dict_named(state_dict, name)
        record = getattr(self, "feature_record", None)
        if record is not None:
            feature_record.check_state_dict(record, state_dict, name + "." if name else "")

    def max_positions(self):
        return (self.encoder.max_positions(), self.decoder.max_positions())


def is_first_rank() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0


def load_vlp_encoder(encoder: MultimodalBertEncoder, path: str) -> bool:
    """Copy BERT and FFN(v) from a ``vlp_pretrain`` checkpoint or an exported directory.

    The pre-training heads are not read. Returns whether FFN(v) was loaded.
    """
    wanted = read_encoder_state(path)
    has_visual = any(k.startswith("visual.") for k in wanted)
    if has_visual and encoder.visual is None:  # a text-only model takes BERT alone
        wanted = {k: v for k, v in wanted.items() if not k.startswith("visual.")}
        has_visual = False
    own = encoder.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in wanted.items()
                  if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(
            f"{path}: the pre-trained encoder does not fit this model ({'; '.join(mismatched[:3])}): was it "
            "pre-trained from another --bert-model or with features of another size?"
        )
    missing, unexpected = encoder.load_state_dict(wanted, strict=False)
    missing = [k for k in missing if k.startswith("bert.") or (has_visual and k.startswith("visual."))]
    if missing or unexpected:
        raise ValueError(f"{path}: encoder weights do not match (missing {missing[:5]}, unexpected {unexpected[:5]})")
    logger.info("loaded BERT%s from VLP checkpoint %s", " and FFN(v)" if has_visual else "", path)
    return has_visual


@register_model_architecture("vlp_mmt", "vlp_mmt_base")
def vlp_mmt_base(args):
    """BERT-base-sized encoder (from --bert-model) and a 6-layer decoder.

    The paper does not give the decoder's width; d=512 is our assumption.
    """
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 512)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", 2048)
    args.decoder_layers = getattr(args, "decoder_layers", 6)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 8)
    args.share_decoder_input_output_embed = getattr(args, "share_decoder_input_output_embed", True)
    args.dropout = getattr(args, "dropout", 0.3)
    args.encoder_embed_dim = args.decoder_embed_dim  # the projection after BERT maps to this width
    args.max_source_positions = getattr(args, "max_source_positions", 512)
    base_architecture(args)
    args.encoder_embed_dim = args.decoder_embed_dim


@register_model_architecture("vlp_mmt", "vlp_mmt_tiny")
def vlp_mmt_tiny(args):
    """A small decoder for tests: 2 layers of width 64."""
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 64)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", 128)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    args.dropout = getattr(args, "dropout", 0.1)
    vlp_mmt_base(args)
