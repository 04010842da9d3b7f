"""Model ``vlp_pretrain``: the ``vlp_mmt`` encoder with the two pre-training heads.

The encoder is the very :class:`MultimodalBertEncoder` of ``vlp_mmt`` under the attribute name
``encoder``, so a checkpoint holds ``encoder.bert.*`` (BERT) and ``encoder.visual.*`` (FFN(v)),
which ``vlp_mmt --load-vlp`` reads; the heads (``lm_head.*``, ``pair_head.*``) are dropped there.
"""
import logging
import os
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture

from vlp_mmt_fairseq.bert_loading import load_bert_model, resolve_bert_path
from vlp_mmt_fairseq.dataclass.configs import BertInitConfig, add_dataclass_args
from vlp_mmt_fairseq.models.multimodal_bert_encoder import MultimodalBertEncoder
from vlp_mmt_fairseq.modules.text_packing import PositionKind

logger = logging.getLogger(__name__)

TEXT_KINDS = (PositionKind.SPECIAL, PositionKind.SOURCE, PositionKind.TAG)


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head: dense, activation, LayerNorm, then the (tied) word embeddings plus a bias."""

    def __init__(self, config):
        super().__init__()
        from transformers.activations import ACT2FN

        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACT2FN[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(self.activation(self.dense(hidden)))
        return F.linear(x, word_embeddings, self.bias)  # N x V


class PairHead(nn.Module):
    """Paired-image prediction on [CLS]: a tanh pooler and a two-way classifier (0 random, 1 paired)."""

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, 2)

    def forward(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.tanh(self.pooler(cls_hidden))))  # B x 2


def pretrained_mlm_head_state(bert_model: str) -> Optional[Dict[str, torch.Tensor]]:
    """BERT's own masked-LM head (``cls.predictions.*``) from a local ``--bert-model``, if it has one.

    Returns the head in :class:`MaskedLMHead`'s names, or None (e.g. MiniLM, which ships without it).
    """
    try:
        directory = resolve_bert_path(bert_model)
    except ValueError:
        return None
    names = {"transform.dense.weight": "dense.weight", "transform.dense.bias": "dense.bias",
             "transform.LayerNorm.weight": "layer_norm.weight", "transform.LayerNorm.bias": "layer_norm.bias",
             "transform.LayerNorm.gamma": "layer_norm.weight", "transform.LayerNorm.beta": "layer_norm.bias",
             "bias": "bias"}
    state = None
    safetensors_file = os.path.join(directory, "model.safetensors")
    bin_file = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(safetensors_file):
        from safetensors import safe_open

        with safe_open(safetensors_file, framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys() if k.startswith("cls.predictions.")}
    elif os.path.exists(bin_file):
        state = {k: v for k, v in torch.load(bin_file, map_location="cpu", weights_only=True).items()
                 if k.startswith("cls.predictions.")}
    if not state:
        return None
    head = {names[k[len("cls.predictions."):]]: v for k, v in state.items() if k[len("cls.predictions."):] in names}
    return head if len(head) == 5 else None


@register_model("vlp_pretrain")
class VlpPretrainModel(BaseFairseqModel):
    """The multimodal BERT encoder + a masked-LM head tied to BERT's word embeddings + a pair classifier."""

    def __init__(self, encoder: MultimodalBertEncoder, lm_head: MaskedLMHead, pair_head: PairHead):
        super().__init__()
        self.encoder = encoder
        self.lm_head = lm_head
        self.pair_head = pair_head

    @staticmethod
    def add_args(parser):
        parser.add_argument("--bert-dropout", type=float, metavar="D",
                            help="dropout inside BERT and FFN(v) (default: BERT's config)")
        add_dataclass_args(parser, BertInitConfig())

    @classmethod
    def build_model(cls, args, task):
        vlp_pretrain_base(args)
        bert = load_bert_model(task.cfg.bert_model, random_init=args.bert_random_init)
        hidden = bert.config.hidden_size
        encoder = MultimodalBertEncoder(task.source_dictionary, bert, task.feature_dim, output_dim=hidden)
        lm_head = MaskedLMHead(bert.config)
        if not args.bert_random_init:
            head_state = pretrained_mlm_head_state(task.cfg.bert_model)
            if head_state is not None:
                lm_head.load_state_dict(head_state)
                logger.info("masked-LM head initialised from %s", task.cfg.bert_model)
        pair_head = PairHead(hidden, bert.config.hidden_dropout_prob)
        if args.bert_dropout is not None:
            for module in (encoder, pair_head):
                for m in module.modules():
                    if isinstance(m, nn.Dropout):
                        m.p = args.bert_dropout
        return cls(encoder, lm_head, pair_head)

    def forward(self, src_tokens, src_lengths=None, tag_tokens=None, region_features=None, region_boxes=None,
                region_mask=None, masked_tokens: Optional[torch.Tensor] = None, **unused):
        """Masked-LM logits (N x V) and pair logits (B x 2).

        ``masked_tokens`` (B x (S + T), over ``cat([src_tokens, tag_tokens], 1)``) picks the text
        positions to predict; without it, every non-pad text position is predicted, in row order.
        """
        hidden, _, kinds = self.encoder.forward_bert(src_tokens, tag_tokens, region_features, region_boxes,
                                                     region_mask)  # B x T x H
        pair_logits = self.pair_head(hidden[:, 0])
        pad = self.encoder.dictionary.pad()
        text = torch.cat([src_tokens] + ([tag_tokens] if tag_tokens is not None else []), dim=1)
        is_text = torch.zeros_like(kinds, dtype=torch.bool)
        for kind in TEXT_KINDS:
            is_text |= kinds == kind
        # the encoder packs each row's real text tokens in order (captions, then tags), so the
        # text states in row order line up with the real tokens of cat([src, tags]) in row order
        text_hidden = hidden[is_text]  # N_text x H
        if masked_tokens is not None:
            text_hidden = text_hidden[masked_tokens[text.ne(pad)]]
        word_embeddings = self.encoder.bert.get_input_embeddings().weight
        return self.lm_head(text_hidden, word_embeddings), pair_logits

    def max_positions(self):
        return self.encoder.max_positions()


@register_model_architecture("vlp_pretrain", "vlp_pretrain_base")
def vlp_pretrain_base(args):
    """The encoder of --bert-model as it is (the paper's BERT-base), with its own dropout."""
    args.bert_dropout = getattr(args, "bert_dropout", None)
    args.bert_random_init = getattr(args, "bert_random_init", False)


@register_model_architecture("vlp_pretrain", "vlp_pretrain_tiny")
def vlp_pretrain_tiny(args):
    """For tests and toy corpora with a tiny BERT: no dropout."""
    args.bert_dropout = getattr(args, "bert_dropout", 0.0)
    vlp_pretrain_base(args)
