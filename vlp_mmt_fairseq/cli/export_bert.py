"""Write the BERT of a ``vlp_pretrain`` (or ``vlp_mmt``) checkpoint as a Hugging Face directory.

Example::

    vlp-mmt-export-bert checkpoints/vlp/checkpoint_last.pt --out vlp-bert
    python -c "from transformers import BertModel; BertModel.from_pretrained('vlp-bert')"

The directory (layout in :mod:`vlp_mmt_fairseq.bert_export`) is an ordinary BERT plus FFN(v) in
``visual_projection.pt``; ``vlp_mmt --load-vlp DIR`` reads both back. The tokenizer files come
from ``--bert-model`` (default: the one the checkpoint was trained from).
"""
import argparse
import os
import sys
from typing import List, Optional

from vlp_mmt_fairseq.bert_export import ExportError, encoder_state_from_checkpoint, export_encoder

PROG = "vlp-mmt-export-bert"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a vlp_pretrain or vlp_mmt checkpoint (.pt)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the Hugging Face directory to write")
    parser.add_argument("--bert-model", metavar="NAME_OR_DIR",
                        help="BERT config and tokenizer (default: the checkpoint's --bert-model)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out directory")
    return parser


def checkpoint_bert_model(cfg, path: str) -> str:
    """The ``--bert-model`` a checkpoint was trained with."""
    name = None
    if cfg is not None:
        task = cfg.get("task") if hasattr(cfg, "get") else getattr(cfg, "task", None)
        name = task.get("bert_model") if task is not None and hasattr(task, "get") else None
    if not name:
        raise ExportError(f"{path}: the checkpoint does not name its --bert-model; pass --bert-model")
    return str(name)


def build_encoder_parts(state, bert_model: str, path: str):
    """A ``BertModel`` and FFN(v) (or None) holding ``state``'s weights."""
    from transformers import BertModel

    from vlp_mmt_fairseq.bert_loading import load_bert_config
    from vlp_mmt_fairseq.modules.visual_projection import VisualProjection

    config = load_bert_config(bert_model)
    bert = BertModel(config, add_pooling_layer=False)
    bert_state = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    try:
        bert.load_state_dict(bert_state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{path}: the BERT weights do not fit {bert_model}'s config: {e}") from e
    visual_state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    visual = None
    if visual_state:
        feature_dim = visual_state["ffn.0.weight"].shape[1] - 5  # features + 4 box coordinates + area
        visual = VisualProjection(feature_dim, config.hidden_size, config.hidden_dropout_prob, config.layer_norm_eps)
        visual.load_state_dict(visual_state, strict=True)
    return bert, visual


def main(args) -> str:
    if os.path.exists(args.out) and not args.force:
        raise ExportError(f"{args.out}: already exists (pass --force to replace it)")
    state, cfg = encoder_state_from_checkpoint(args.checkpoint)
    bert_model = args.bert_model or checkpoint_bert_model(cfg, args.checkpoint)
    bert, visual = build_encoder_parts(state, bert_model, args.checkpoint)
    out = export_encoder(bert, visual, args.out, bert_model, source=args.checkpoint, force=args.force)
    print(f"wrote {out} (BERT{' and FFN(v)' if visual is not None else ''} of {args.checkpoint})")
    return out


def cli_main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    try:
        main(args)
    except (ExportError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli_main()
