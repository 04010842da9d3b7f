"""The layers of BERT-fused NMT (Zhu et al., 2020): fairseq's encoder and decoder layers with an extra
attention over BERT's output, mixed with the layer's own attention by drop-net."""
from typing import Optional, Tuple

import torch
from fairseq.distributed import fsdp_wrap
from fairseq.modules import MultiheadAttention
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
from fairseq.modules.transformer_layer_aug import AugTransformerDecoderLayerBase
from torch import Tensor


def dropnet_weights(p: float, training: bool) -> Tuple[float, float]:
    """Drop-net: the weights of (the layer's own attention, its BERT attention).

    Training: (1, 0) with probability p/2, (0, 1) with probability p/2, else (0.5, 0.5).
    Inference: (0.5, 0.5). One draw per layer and forward pass, as in the paper.
    """
    if training and p > 0:
        u = float(torch.rand(()))
        if u < p / 2:
            return 1.0, 0.0
        if u >= 1 - p / 2:
            return 0.0, 1.0
    return 0.5, 0.5


def bert_attention(embed_dim: int, heads: int, bert_dim: int, cfg) -> MultiheadAttention:
    """Attention from the NMT's states (queries) to BERT's output (keys and values)."""
    return MultiheadAttention(
        embed_dim, heads, kdim=bert_dim, vdim=bert_dim, dropout=cfg.attention_dropout,
        encoder_decoder_attention=True, q_noise=cfg.quant_noise.pq, qn_block_size=cfg.quant_noise.pq_block_size,
    )


def wrap_layer(layer, cfg):
    """Activation checkpointing and FSDP wrapping, as fairseq's transformer does for its layers."""
    if cfg.checkpoint_activations:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    min_params_to_wrap = cfg.min_params_to_wrap if not cfg.checkpoint_activations else 0
    return fsdp_wrap(layer, min_num_params=min_params_to_wrap)


class BertFusedEncoderLayer(TransformerEncoderLayerBase):
    """fairseq's encoder layer whose self-attention is mixed with a BERT-encoder attention.

    ``h = drop-net(self_attn(x), bert_attn(x, BERT))``, then the residual, layer norm and FFN of
    the stock layer.
    """

    def __init__(self, cfg, bert_dim: int, dropnet: float):
        super().__init__(cfg)
        self.bert_attn = bert_attention(self.embed_dim, cfg.encoder.attention_heads, bert_dim, cfg)
        self.dropnet = dropnet

    def forward(self, x, encoder_padding_mask: Optional[Tensor], bert_out: Tensor,
                bert_padding_mask: Optional[Tensor]):
        """x: T x B x C; bert_out: S' x B x H; masks: B x T and B x S', True at padding."""
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        own, _ = self.self_attn(query=x, key=x, value=x, key_padding_mask=encoder_padding_mask, need_weights=False)
        fused, _ = self.bert_attn(query=x, key=bert_out, value=bert_out, key_padding_mask=bert_padding_mask,
                                  need_weights=False)
        w_own, w_bert = dropnet_weights(self.dropnet, self.training)
        x = w_own * self.dropout_module(own) + w_bert * self.dropout_module(fused)
        x = self.residual_connection(x, residual)
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)
        return self.feed_forward(x)

    def feed_forward(self, x):
        """The stock layer's FFN block: FFN, dropout, residual, layer norm."""
        residual = x
        if self.normalize_before:
            x = self.final_layer_norm(x)
        x = self.activation_dropout_module(self.activation_fn(self.fc1(x)))
        x = self.dropout_module(self.fc2(x))
        x = self.residual_connection(x, residual)
        if not self.normalize_before:
            x = self.final_layer_norm(x)
        return x


class BertFusedDecoderLayer(AugTransformerDecoderLayerBase):
    """fairseq's decoder layer with a second, parallel cross-attention over BERT's output.

    fairseq's "augmented" layer in ``parallel`` mode computes
    ``w1 * encoder_attn(x, encoder) + w2 * encoder_attn2(x, memory2)`` with drop-net weights;
    here ``encoder_attn2`` (alias :attr:`bert_attn`) attends to BERT (kdim/vdim = BERT's hidden
    size) and the weights follow the paper (:func:`dropnet_weights`).
    """

    def __init__(self, cfg, bert_dim: int, dropnet: float):
        super().__init__(cfg, encoder_attn_merge_type="parallel", dropnet_ratio=dropnet / 2)
        self.encoder_attn2 = bert_attention(self.embed_dim, cfg.decoder.attention_heads, bert_dim, cfg)
        self.dropnet = dropnet

    @property
    def bert_attn(self) -> MultiheadAttention:
        return self.encoder_attn2

    def get_dropnet_ratio(self):
        return list(dropnet_weights(self.dropnet, self.training))
