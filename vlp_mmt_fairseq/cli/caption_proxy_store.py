"""Write a caption-proxy feature store: image content from the *other* Multi30K task-2 descriptions of each image.

Example::

    vlp-mmt-caption-proxy-store --task2-dir ../shared/multi30k-task2 --task1-dir ../shared/multi30k \\
        --objects-vocab ../shared/bottom-up-attention/objects_vocab.txt --output caption_proxy.h5

Per image: one whole-image region per description that does not match (up to case, whitespace and punctuation)
the task-1 source sentence of a line showing the image, holding its mean-pooled sentence embedding; tags are the
detector-vocabulary classes those descriptions mention. See docs/feature_store.md, "Caption-proxy features".
The store is written atomically; an interrupted run continues from ``OUTPUT.partial`` when started again.
"""
import argparse
import json
import logging
import signal
import sys
from typing import List, Optional

from vlp_mmt_fairseq.bert_loading import BUNDLED_MINILM, BertModelNotFound
from vlp_mmt_fairseq.data.feature_store import FeatureStoreError
from vlp_mmt_fairseq.features.caption_proxy import TASK1_SPLITS, CaptionProxyError, build_caption_proxy_store
from vlp_mmt_fairseq.file_utils import atomic_output

PROG = "vlp-mmt-caption-proxy-store"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task2-dir", required=True, metavar="DIR",
                        help="Multi30K task 2 folder: raw/{split}.{1..5}.en.gz, image_splits/{split}_images.txt")
    parser.add_argument("--task1-dir", required=True, metavar="DIR",
                        help="Multi30K task 1 folder: raw/{split}.en.gz (the source sentences), image_splits/")
    parser.add_argument("--objects-vocab", required=True, metavar="FILE",
                        help="the detector's class names (objects_vocab.txt: line k = class k, synonyms "
                        "comma-separated, the first is the tag)")
    parser.add_argument("--bert-model", default=BUNDLED_MINILM, metavar="NAME_OR_DIR",
                        help=f"the sentence encoder of the region vectors (default: {BUNDLED_MINILM})")
    parser.add_argument("--splits", nargs="+", default=list(TASK1_SPLITS), choices=list(TASK1_SPLITS),
                        help="task-2 splits (test_2016 is task 1's test_2016_flickr); default: all three")
    parser.add_argument("--output", "-o", required=True, metavar="STORE.h5", help="the feature store to write")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N lines of each split (tests)")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="region-vector precision (default: float16)")
    parser.add_argument("--max-tokens", type=int, default=4096,
                        help="padded tokens per encoder batch (default: 4096)")
    parser.add_argument("--summary-json", metavar="FILE", help="also write what the build did as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cli_main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # as Ctrl-C: the finished embeddings are saved for the rerun
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    log = logging.getLogger("vlp_mmt_fairseq.features.caption_proxy")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    if args.limit is not None and args.limit <= 0:
        sys.exit(f"{PROG}: error: --limit must be positive, got {args.limit}")
    try:
        summary = build_caption_proxy_store(
            args.output, args.task2_dir, args.task1_dir, args.objects_vocab, bert_model=args.bert_model,
            splits=args.splits, limit=args.limit, dtype=args.dtype, max_tokens=args.max_tokens,
            progress=not args.no_progress,
        )
    except (CaptionProxyError, FeatureStoreError, BertModelNotFound) as e:
        sys.exit(f"{PROG}: error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"{PROG}: interrupted; run the same command again to continue")
    record = json.dumps(summary.as_dict(), indent=1)
    if args.summary_json:
        with atomic_output(args.summary_json) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(record + "\n")
    print(record)


if __name__ == "__main__":
    cli_main()
