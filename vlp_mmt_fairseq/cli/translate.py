"""Translate new sentences and their images with a model directory (written by vlp-mmt-export-model).

Examples::

    printf 'A man rides a bike.\tphotos/bike.jpg\n' | vlp-mmt-translate my-model
    vlp-mmt-translate my-model --input pairs.tsv --image-features photos.h5 --beam 5 --batch-size 32

Each input line is ``source<TAB>image``: an image file (its features come from the model's recorded extractor,
when it is a built-in one) or, with --image-features, an image-index entry of that store (``1000092795.jpg``
or a key). A text-only model takes lines without images. One detokenized translation is printed per line, in
order. Decoding is fairseq's SequenceGenerator, as in fairseq-generate; --beam, --lenpen, --max-len-a/b,
--batch-size, --max-tokens and the other generation options are fairseq's own.
"""
import argparse
import sys
import time
import warnings
from typing import List, Optional

from vlp_mmt_fairseq.cli.documented_parser import documented_parser, quiet_logging

PROG = "vlp-mmt-translate"
GENERATION_OPTIONS = ("beam", "nbest", "max_len_a", "max_len_b", "min_len", "lenpen", "unkpen", "no_repeat_ngram_size",
                      "sampling", "sampling_topk", "sampling_topp", "temperature")


def get_parser() -> argparse.ArgumentParser:
    from fairseq import options

    parser = documented_parser(PROG, __doc__)
    parser.add_argument("model_dir", help="a model directory written by vlp-mmt-export-model")
    parser.add_argument("--input", default="-", metavar="FILE", help="source<TAB>image lines (default: stdin)")
    parser.add_argument("--image-features", metavar="STORE.h5",
                        help="take each line's image from this store, by key, instead of extracting it")
    parser.add_argument("--buffer-size", type=int, default=256, metavar="N",
                        help="lines read, extracted and translated at a time (default 256)")
    parser.add_argument("--extract-batch-size", type=int, default=8, help="images per extractor batch (default 8)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even if a GPU is present")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    dataset = parser.add_argument_group("batching (fairseq's options)")
    dataset.add_argument("--batch-size", "--max-sentences", type=int, default=16, help="sentences per batch (16)")
    dataset.add_argument("--max-tokens", type=int, default=None, help="source tokens per batch")
    options.add_generation_args(parser)  # fairseq's own generation options: --beam, --lenpen, ...
    return parser


def read_pairs(stream, where: str, with_images: bool):
    """(line number, source, image) of each input line."""
    for lineno, line in enumerate(stream, 1):
        line = line.rstrip("\n").rstrip("\r")
        source, tab, image = line.partition("\t")
        if not source.strip():
            raise ValueError(f"{where}:{lineno}: empty source sentence")
        if with_images and not image.strip():
            raise ValueError(f"{where}:{lineno}: no image after a tab (the model translates with images)")
        if not with_images and image.strip():
            raise ValueError(f"{where}:{lineno}: an image, but the model is text only")
        yield lineno, source, image.strip() or None


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    import torch

    from vlp_mmt_fairseq.data.feature_store import image_key_from_line
    from vlp_mmt_fairseq.models.vlp_mmt import VlpMmtModel

    quiet_logging()
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true")  # fairseq's loader, on a CPU
    if args.threads:
        torch.set_num_threads(args.threads)
    generation = {name: getattr(args, name) for name in GENERATION_OPTIONS if hasattr(args, name)}
    beam = generation.pop("beam")
    hub = VlpMmtModel.from_pretrained(args.model_dir, image_features=args.image_features, batch_size=args.batch_size,
                                      max_tokens=args.max_tokens, extract_batch_size=args.extract_batch_size)
    hub.eval()
    if torch.cuda.is_available() and not args.cpu:
        hub.cuda()
    stream = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
    where = "stdin" if args.input == "-" else args.input
    count, start = 0, time.perf_counter()
    try:
        pairs = read_pairs(stream, where, hub.uses_images)
        while True:
            chunk = [pair for _, pair in zip(range(args.buffer_size), pairs)]
            if not chunk:
                break
            sources = [source for _, source, _ in chunk]
            images = None
            if hub.uses_images:
                images = [image_key_from_line(image) if args.image_features else image for _, _, image in chunk]
            for translation in hub.translate(sources, images=images, beam=beam, **generation):
                print(translation, flush=False)
            sys.stdout.flush()
            count += len(chunk)
    finally:
        if stream is not sys.stdin:
            stream.close()
    seconds = time.perf_counter() - start
    print(f"{PROG}: translated {count} sentences in {seconds:.1f} s ({count / max(seconds, 1e-9):.2f} sentences/s)",
          file=sys.stderr)
    return 0


def cli_main():
    from vlp_mmt_fairseq.errors import run_main

    run_main(main)


if __name__ == "__main__":
    cli_main()
