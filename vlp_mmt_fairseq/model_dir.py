"""A model directory: a trained ``vlp_mmt`` checkpoint with everything it needs to translate new inputs.

Layout (written by ``vlp-mmt-export-model``, read by ``vlp-mmt-translate`` and ``VlpMmtModel.from_pretrained``)::

    MODEL_DIR/
      model.pt                  the checkpoint: weights and options, without the optimizer state
      dict.<tgt>.txt            the target dictionary
      sentencepiece.bpe.model   the target SentencePiece model (detokenizes the output)
      bert/                     the BERT config and tokenizer files (the weights are in model.pt)
      model.json                languages, the feature record (D, extractor) and whether images are needed
"""
import json
import os
import shutil
from typing import Optional

from vlp_mmt_fairseq.errors import PluginError
from vlp_mmt_fairseq.file_utils import atomic_dir

CHECKPOINT, MANIFEST, SPM, BERT_DIR = "model.pt", "model.json", "sentencepiece.bpe.model", "bert"
BERT_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
FORMAT = "vlp_mmt_model"


class ModelDirError(PluginError, ValueError):
    """A checkpoint that cannot be exported, or a model directory that cannot be read; names the file."""


def _get(node, key, default=None):
    if node is None:
        return default
    return node.get(key, default) if hasattr(node, "get") else getattr(node, key, default)


def export_model_dir(checkpoint: str, data_dir: str, out: str, spm_model: Optional[str] = None,
                     bert_model: Optional[str] = None, force: bool = False) -> dict:
    """Write the model directory ``out`` for ``checkpoint`` (trained on ``data_dir``); return its manifest."""
    import torch
    from fairseq import checkpoint_utils

    from vlp_mmt_fairseq.bert_loading import VOCAB_FILES, resolve_bert_path
    from vlp_mmt_fairseq.modules.feature_record import BUFFER_NAME, FeatureRecord

    if os.path.exists(out) and not force:
        raise ModelDirError(f"{out}: already exists; pass --force to replace it")
    state = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)
    cfg = state.get("cfg")
    task, model = _get(cfg, "task"), _get(cfg, "model")
    if _get(task, "_name") != "vlp_mmt":
        raise ModelDirError(f"{checkpoint}: not a vlp_mmt checkpoint (task {_get(task, '_name')!r})")
    src, tgt = _get(task, "source_lang"), _get(task, "target_lang")
    if src is None or tgt is None:  # fairseq-train infers them from the data directory's file names
        from fairseq.data import data_utils

        src, tgt = data_utils.infer_language_pair(data_dir)
    if src is None or tgt is None:
        raise ModelDirError(f"{data_dir}: cannot tell the language pair from its files")
    if BUFFER_NAME in state["model"]:
        record = FeatureRecord.from_tensor(state["model"][BUFFER_NAME])
    elif _get(model, "image_feature_dim") is not None:
        record = FeatureRecord(int(_get(model, "image_feature_dim")), str(_get(model, "image_extractor") or ""))
    else:
        raise ModelDirError(f"{checkpoint}: the checkpoint does not record its image features (trained before "
                            "the record existed); train or fine-tune it again")
    dictionary = os.path.join(data_dir, f"dict.{tgt}.txt")
    spm_model = spm_model or os.path.join(os.path.dirname(os.path.abspath(data_dir)), "spm", f"spm.{tgt}.model")
    bert = resolve_bert_path(bert_model or _get(task, "bert_model"))
    for path, what in ((dictionary, "target dictionary"), (spm_model, "target SentencePiece model (--spm)")):
        if not os.path.isfile(path):
            raise ModelDirError(f"{path}: {what} not found")
    if not any(os.path.isfile(os.path.join(bert, name)) for name in VOCAB_FILES):
        raise ModelDirError(f"{bert}: not a local BERT directory with vocab.txt or tokenizer.json (pass --bert-model)")
    manifest = {
        "format": FORMAT, "version": 1, "source_lang": src, "target_lang": tgt,
        "images": not _get(task, "no_images", False),
        "feature_dim": record.feature_dim, "extractor": record.extractor,
        "checkpoint": os.path.abspath(checkpoint),
    }
    # what belongs to the training run, not to the model: its data, store and optimizer
    kept = {k: v for k, v in state.items() if k not in ("last_optimizer_state", "optimizer_history_cpu")}
    kept["extra_state"] = {}
    with atomic_dir(out) as tmp:
        torch.save(kept, os.path.join(tmp, CHECKPOINT))
        shutil.copy(dictionary, os.path.join(tmp, f"dict.{tgt}.txt"))
        shutil.copy(spm_model, os.path.join(tmp, SPM))
        os.makedirs(os.path.join(tmp, BERT_DIR))
        for name in BERT_FILES:
            if os.path.isfile(os.path.join(bert, name)):
                shutil.copy(os.path.join(bert, name), os.path.join(tmp, BERT_DIR, name))
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
    return manifest


def read_manifest(model_dir: str) -> dict:
    path = os.path.join(model_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{path}: not a model directory written by vlp-mmt-export-model ({e})") from e
    if manifest.get("format") != FORMAT:
        raise ModelDirError(f"{path}: not a vlp_mmt model directory (format {manifest.get('format')!r})")
    return manifest
