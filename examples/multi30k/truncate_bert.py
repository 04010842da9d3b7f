#!/usr/bin/env python
"""Write a BERT that keeps only the bottom N layers of a pre-trained one (smoke budgets on the CPU).

The embeddings and the first ``--layers`` transformer layers keep their pre-trained weights; the
vocabulary and tokenizer are unchanged, so data prepared for the full model fits. The directory is
a plain Hugging Face BERT (``--bert-model DIR``), built beside ``--out`` and renamed when complete.
"""
import argparse
import os
import shutil
import sys
import tempfile

from vlp_mmt_fairseq.bert_loading import BertModelNotFound, load_bert_model, load_bert_tokenizer


def write_vocab(tokenizer, path: str) -> None:
    """``vocab.txt``: one WordPiece per line in id order (what BERT directories hold)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise ValueError("the tokenizer's ids are not 0..N-1; cannot write vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(token + "\n" for token, _ in vocab)


def truncate(bert_model: str, layers: int, out: str) -> int:
    """Save the bottom ``layers`` layers of ``bert_model`` to ``out``; return the original layer count."""
    model = load_bert_model(bert_model)
    total = model.config.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"--layers must be between 1 and {total} (the layers of {bert_model}), got {layers}")
    model.encoder.layer = model.encoder.layer[:layers]
    model.config.num_hidden_layers = layers
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".", suffix=".tmp", dir=parent)
    try:
        model.save_pretrained(tmp)
        tokenizer = load_bert_tokenizer(bert_model)
        tokenizer.save_pretrained(tmp)
        write_vocab(tokenizer, os.path.join(tmp, "vocab.txt"))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bert-model", default="bundled-minilm", help="the BERT to cut (default bundled-minilm)")
    parser.add_argument("--layers", type=int, required=True, help="layers to keep, from the bottom")
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    args = parser.parse_args()
    if os.path.exists(args.out):
        sys.exit(f"error: {args.out} exists")
    try:
        total = truncate(args.bert_model, args.layers, args.out)
    except (BertModelNotFound, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.out}: the bottom {args.layers} of {total} layers of {args.bert_model}", file=sys.stderr)


if __name__ == "__main__":
    main()
