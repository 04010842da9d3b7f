"""The pre-trained encoder as an ordinary Hugging Face BERT, and back.

An exported directory holds::

    config.json, model.safetensors     BERT (``BertModel.save_pretrained``; no pooler)
    vocab.txt, tokenizer*.json         the tokenizer of the ``--bert-model`` it was trained from
    visual_projection.pt               FFN(v): {"feature_dim", "hidden_size", "state_dict"} for
                                       modules.visual_projection.VisualProjection (absent
                                       when the encoder had no image input)
    vlp_export.json                    where the weights came from

``BertModel.from_pretrained(DIR)`` loads it like any BERT, and ``vlp_mmt --load-vlp DIR`` (or
``--bert-model DIR``, BERT only) starts translation from it.
"""
import json
import os
from typing import Dict, Optional, Tuple

import torch

from vlp_mmt_fairseq.errors import PluginError
from vlp_mmt_fairseq.file_utils import atomic_dir

VISUAL_FILE = "visual_projection.pt"
INFO_FILE = "vlp_export.json"


class ExportError(PluginError, ValueError):
    """A checkpoint or export directory cannot be read or written; the message names it."""


def export_encoder(bert, visual: Optional[torch.nn.Module], out_dir: str, bert_model: str,
                   source: str = "", force: bool = False) -> str:
    """Write ``bert`` (a ``BertModel``) and FFN(v) to ``out_dir`` atomically; return ``out_dir``.

    The directory is built beside ``out_dir`` and renamed into place only when complete; an
    existing ``out_dir`` is replaced only with ``force``.
    """
    from vlp_mmt_fairseq.bert_loading import bert_vocab_file, load_bert_tokenizer, read_wordpiece_vocab

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not force:
        raise ExportError(f"{out_dir}: already exists (pass --force to replace it)")
    with atomic_dir(out_dir) as tmp:
        bert.save_pretrained(tmp)
        load_bert_tokenizer(bert_model).save_pretrained(tmp)
        with open(os.path.join(tmp, "vocab.txt"), "w", encoding="utf-8") as f:  # the ids, for --bert-model DIR
            f.writelines(token + "\n" for token in read_wordpiece_vocab(bert_vocab_file(bert_model)))
        if visual is not None:
            torch.save(
                {"feature_dim": visual.feature_dim, "hidden_size": bert.config.hidden_size,
                 "state_dict": {k: v.detach().cpu() for k, v in visual.state_dict().items()}},
                os.path.join(tmp, VISUAL_FILE),
            )
        with open(os.path.join(tmp, INFO_FILE), "w", encoding="utf-8") as f:
            json.dump({"source": source, "bert_model": bert_model, "visual_projection": visual is not None}, f,
                      indent=2)
    return out_dir


def is_export_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def encoder_state_from_export(path: str) -> Dict[str, torch.Tensor]:
    """``bert.*`` and ``visual.*`` weights of an exported directory, in the encoder's names."""
    from transformers import BertModel

    try:
        bert = BertModel.from_pretrained(path, add_pooling_layer=False)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: not a readable BERT directory ({e})") from e
    state = {"bert." + k: v for k, v in bert.state_dict().items()}
    visual_file = os.path.join(path, VISUAL_FILE)
    if os.path.exists(visual_file):
        visual = torch.load(visual_file, map_location="cpu", weights_only=True)
        state.update({"visual." + k: v for k, v in visual["state_dict"].items()})
    return state


def encoder_state_from_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], object]:
    """``bert.*`` and ``visual.*`` weights of a ``vlp_pretrain`` (or ``vlp_mmt``) checkpoint, and its cfg.

    The checkpoint is read with ``torch.load(weights_only=True)`` only.
    """
    from vlp_mmt_fairseq.cli.average_checkpoints import CheckpointError, load_checkpoint_safely

    try:
        checkpoint = load_checkpoint_safely(path)
    except CheckpointError as e:
        raise ExportError(str(e)) from e
    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in checkpoint.get("model", {}).items()
             if k.startswith(prefix + "bert.") or k.startswith(prefix + "visual.")}
    if not any(k.startswith("bert.") for k in state):
        raise ExportError(f"{path}: no encoder.bert.* weights; is it a vlp_pretrain or vlp_mmt checkpoint?")
    return state, checkpoint.get("cfg")


def read_encoder_state(path: str) -> Dict[str, torch.Tensor]:
    """Encoder weights from a checkpoint file or an exported directory."""
    if is_export_dir(path):
        return encoder_state_from_export(path)
    return encoder_state_from_checkpoint(path)[0]
