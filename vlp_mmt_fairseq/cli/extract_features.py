"""Extract image features into a feature store, offline, on the CPU (default: EfficientNet-Lite0, ImageNet).

Examples::

    vlp-mmt-extract-features photos/ --output photos.h5
    vlp-mmt-extract-features data/multi30k.en-de/bert/test2016.img.txt --image-dir flickr30k-images/ \\
        --output flickr30k.h5 --num-workers 2
    vlp-mmt-extract-features my_images.txt --output mine.h5 --extractor my_detector.py:build --skip-bad

The input is a folder (its image files), a prepared split's image index (``{split}.img.txt`` or ``.npy``, with
``--image-dir``) or a list file (one image path per line). An interrupted run continues from
``OUTPUT.partial/`` when restarted with the same arguments. See docs/images.md.
"""
import argparse
import os
import sys
import time
from typing import List, Optional

from vlp_mmt_fairseq.cli.documented_parser import documented_parser, quiet_logging

PROG = "vlp-mmt-extract-features"


def get_parser() -> argparse.ArgumentParser:
    from vlp_mmt_fairseq.features.extractor import BUILTIN_EXTRACTORS, DEFAULT_EXTRACTOR

    parser = documented_parser(PROG, __doc__)
    parser.add_argument("input", help="a folder of images, a split's image index (*.img.txt, *.npy) or a list file")
    parser.add_argument("--output", "-o", required=True, metavar="STORE.h5", help="the feature store to write")
    parser.add_argument("--image-dir", metavar="DIR",
                        help="where the images of an image index or list file are (default for a list file: its "
                             "folder)")
    parser.add_argument("--extractor", default=DEFAULT_EXTRACTOR,
                        help=f"a built-in extractor ({', '.join(BUILTIN_EXTRACTORS)}) or module:factory / "
                             f"file.py:factory returning an ImageFeatureExtractor (default: {DEFAULT_EXTRACTOR})")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size in pixels of the built-in extractor, a multiple of 32 (default 224: 7 x 7 "
                             "regions; 320 gives 10 x 10)")
    parser.add_argument("--top-k", type=int, default=None, help="ImageNet tags per image (built-in; default 10)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader processes that decode the images (default 0: in the main process)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the network (default: torch's)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out images that cannot be read and list them in --bad-report, instead of stopping")
    parser.add_argument("--bad-report", metavar="FILE",
                        help="where --skip-bad lists the images left out (default: OUTPUT.bad.tsv)")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="storage type of the features (default float16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    quiet_logging()
    from vlp_mmt_fairseq.features.extraction import extract_to_store, write_report
    from vlp_mmt_fairseq.features.extractor import build_extractor
    from vlp_mmt_fairseq.features.image_files import find_images

    if args.batch_size < 1 or args.num_workers < 0:
        raise SystemExit(f"{PROG}: error: --batch-size must be >= 1 and --num-workers >= 0")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = {name: value for name, value in (("image_size", args.image_size), ("top_k", args.top_k))
               if value is not None}
    images = find_images(args.input, args.image_dir)
    extractor = build_extractor(args.extractor, **options)
    print(f"{PROG}: {len(images)} images, extractor '{extractor.name}' (D = {extractor.feature_dim})", file=sys.stderr)
    start = time.perf_counter()
    result = extract_to_store(images, args.output, extractor, batch_size=args.batch_size,
                              num_workers=args.num_workers, skip_bad=args.skip_bad, dtype=args.dtype,
                              progress=not args.no_progress)
    seconds = time.perf_counter() - start
    speed = f", {result.extracted / seconds:.2f} images/s" if result.extracted else ""
    print(f"{PROG}: wrote {result.written} images to {args.output} ({result.extracted} extracted now, "
          f"{result.resumed} from an earlier run{speed})", file=sys.stderr)
    report = args.bad_report or args.output + ".bad.tsv"
    if result.bad:
        write_report(report, result.bad)
        print(f"{PROG}: left out {len(result.bad)} unreadable images, listed in {report}", file=sys.stderr)
    elif args.skip_bad and os.path.exists(report):
        os.unlink(report)  # a report of an earlier run would no longer be true
    return 0


def cli_main():
    from vlp_mmt_fairseq.errors import run_main

    run_main(main, interrupted=f"{PROG}: interrupted; rerun the same command to continue")


if __name__ == "__main__":
    cli_main()
