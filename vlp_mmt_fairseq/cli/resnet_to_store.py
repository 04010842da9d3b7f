"""Convert the Multi30K/WMT organisers' ResNet-50 feature arrays into a feature store keyed by image.

Example (the organisers' arrays and Multi30K's image lists; one store for all splits)::

    vlp-mmt-resnet-to-store \\
        --split train-resnet50-res4frelu.npy ../shared/multi30k/image_splits/train.txt \\
        --split val-resnet50-res4frelu.npy ../shared/multi30k/image_splits/val.txt \\
        --output multi30k-res4frelu.h5

Each array has one row per line of its split ([N, 2048] avgpool or [N, 1024, 14, 14] res4frelu); the store
holds every image once. Train with ``--max-regions 196`` to use every cell of the grid (the default 36 keeps
the 36 cells with the largest feature norm). See docs/images.md.
"""
import argparse
from typing import List, Optional

from vlp_mmt_fairseq.cli.documented_parser import documented_parser
from vlp_mmt_fairseq.cli.store_converter import converter_main, run_converter

PROG = "vlp-mmt-resnet-to-store"


def get_parser() -> argparse.ArgumentParser:
    parser = documented_parser(PROG, __doc__)
    parser.add_argument("--split", nargs=2, action="append", required=True, metavar=("ARRAY.npy", "IMAGE_LIST"),
                        help="one split's feature array and its image list (line i names the image of row i); "
                             "repeat for more splits")
    parser.add_argument("--output", "-o", required=True, metavar="STORE.h5", help="the feature store to write")
    parser.add_argument("--image-dir", metavar="DIR",
                        help="the images, to record their real sizes (default: the network input, 224 x 224)")
    parser.add_argument("--atol", type=float, default=0.0,
                        help="largest difference allowed between lines that name the same image (default 0)")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="storage type of the features (default float16)")
    parser.add_argument("--extractor", help="the store's extractor attribute (default: names the layer and size)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def convert(args) -> int:
    """Write the store of ``args.split``; return how many images it holds."""
    from vlp_mmt_fairseq.features.resnet_arrays import convert_resnet_arrays

    return convert_resnet_arrays([tuple(pair) for pair in args.split], args.output, extractor=args.extractor,
                                 dtype=args.dtype, image_dir=args.image_dir, atol=args.atol,
                                 progress=not args.no_progress)


def main(argv: Optional[List[str]] = None) -> int:
    return converter_main(get_parser(), convert, argv)


def cli_main():
    run_converter(get_parser(), convert)


if __name__ == "__main__":
    cli_main()
