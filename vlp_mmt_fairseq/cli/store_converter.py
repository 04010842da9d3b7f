"""What the converters to a feature store share: the detector-output options (``vlp-mmt-tsv-to-store``,
``vlp-mmt-npz-to-store``) and the run (those and ``vlp-mmt-resnet-to-store``)."""
import sys

from vlp_mmt_fairseq.cli.documented_parser import quiet_logging
from vlp_mmt_fairseq.errors import run_main
from vlp_mmt_fairseq.features.detector_outputs import BOTTOM_UP_EXTRACTOR


def add_store_output_args(parser, vocab_required: bool = False) -> None:
    """The converters' common options: objects vocabulary, output store, dtype, extractor name."""
    parser.add_argument("--objects-vocab", metavar="FILE", required=vocab_required,
                        help="detector class names, line k = class id k (synonyms 'a,b': 'a' is used)")
    parser.add_argument("--output", "-o", required=True, metavar="STORE.h5", help="the feature store to write")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="storage type of the features (default: float16, half the size; "
                             "float32 keeps the detector's values exactly)")
    parser.add_argument("--extractor", default=BOTTOM_UP_EXTRACTOR,
                        help="description of the detector, stored as the store's 'extractor' attribute")


def converter_main(parser, convert, argv=None) -> int:
    """Parse ``argv``; ``convert(args)`` writes the store ``args.output`` and returns how many images it holds."""
    args = parser.parse_args(argv)
    quiet_logging()
    count = convert(args)
    print(f"{parser.prog}: wrote {count} images to {args.output}", file=sys.stderr)
    return 0


def run_converter(parser, convert) -> None:
    """A converter's command line (:func:`converter_main`); the plugin's errors end it with one line, exit status 1."""
    run_main(lambda: converter_main(parser, convert))
