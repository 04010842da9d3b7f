"""Export a trained vlp_mmt checkpoint as a model directory that translates new inputs on its own.

Example::

    vlp-mmt-export-model ckpt/stage2/checkpoint_best.pt --data data/multi30k.en-de/bert --out my-model
    vlp-mmt-translate my-model < pairs.tsv

The directory holds the checkpoint (without its optimizer state), the target dictionary and SentencePiece model,
the BERT tokenizer files and the record of the image features (size and extractor); see
vlp_mmt_fairseq/model_dir.py and docs/images.md.
"""
import argparse
import sys
from typing import List, Optional

from vlp_mmt_fairseq.cli.documented_parser import documented_parser, quiet_logging

PROG = "vlp-mmt-export-model"


def get_parser() -> argparse.ArgumentParser:
    parser = documented_parser(PROG, __doc__)
    parser.add_argument("checkpoint", help="a vlp_mmt checkpoint (.pt)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="the data directory it was trained on (holds dict.<tgt>.txt)")
    parser.add_argument("--spm", metavar="MODEL",
                        help="the target SentencePiece model (default: DIR/../spm/spm.<tgt>.model, as "
                             "vlp-mmt-prepare-multi30k writes it)")
    parser.add_argument("--bert-model", metavar="DIR", help="BERT config and tokenizer (default: the checkpoint's)")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="the model directory to write")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    quiet_logging()
    from vlp_mmt_fairseq.model_dir import export_model_dir

    manifest = export_model_dir(args.checkpoint, args.data, args.out, spm_model=args.spm, bert_model=args.bert_model,
                                force=args.force)
    images = f"features D = {manifest['feature_dim']} from '{manifest['extractor']}'" if manifest["images"] \
        else "text only"
    print(f"{PROG}: wrote {args.out} ({manifest['source_lang']}-{manifest['target_lang']}, {images})", file=sys.stderr)
    return 0


def cli_main():
    from vlp_mmt_fairseq.errors import run_main

    run_main(main)


if __name__ == "__main__":
    cli_main()
