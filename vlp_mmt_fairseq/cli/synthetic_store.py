"""Write a synthetic feature store with planted concepts (see vlp_mmt_fairseq/features/synthetic_features.py).

Usage::

    # one image per distinct key of the Multi30K image lists, concepts and tags from TSV files
    python preprocess/synthetic_store.py --keys-from image_splits/train.txt image_splits/val.txt \\
        --concepts-tsv concepts.tsv --tags-tsv tags.tsv --output synthetic.h5

    # 1000 images img000000 ... img000999 without concepts
    python preprocess/synthetic_store.py --num-images 1000 --output synthetic.h5

``--concepts-tsv`` and ``--tags-tsv`` lines are ``key<TAB>word word ...`` (the key may also be an
image-index line such as ``1000092795.jpg``).
"""
import argparse
import sys
from typing import Dict, List

from vlp_mmt_fairseq.data.feature_store import FeatureStoreError, image_key_from_line
from vlp_mmt_fairseq.features.synthetic_features import write_synthetic_store


def keys_from_index_files(paths) -> List[str]:
    """The distinct store keys of image-index files, in order of first appearance."""
    keys = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    key = image_key_from_line(line)
                    if not key:
                        raise FeatureStoreError(f"{path}:{lineno}: empty image-index line")
                    keys.setdefault(key, None)
        except OSError as e:
            raise FeatureStoreError(f"{path}: cannot read the image index ({e})") from None
    return list(keys)


def read_words_tsv(path: str) -> Dict[str, List[str]]:
    """``key<TAB>word word ...`` lines as key -> words."""
    table = {}
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if "\t" not in line:
                    raise FeatureStoreError(f"{path}:{lineno}: expected 'key<TAB>word word ...'")
                key, words = line.rstrip("\r\n").split("\t", 1)
                key = image_key_from_line(key)
                if key in table:
                    raise FeatureStoreError(f"{path}:{lineno}: key '{key}' listed twice")
                table[key] = words.split()
    except OSError as e:
        raise FeatureStoreError(f"{path}: cannot read it ({e})") from None
    return table


def _warn_unknown(table: Dict[str, List[str]], keys: List[str], path: str) -> None:
    unknown = set(table) - set(keys)
    if unknown:
        example = sorted(unknown)[0]
        print(f"warning: {path}: {len(unknown)} keys are not among the store's images (e.g. '{example}')",
              file=sys.stderr)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--keys-from", nargs="+", metavar="INDEX",
                       help="image-index file(s); one image per distinct key")
    which.add_argument("--num-images", type=int, metavar="N", help="N images named img000000, img000001, ...")
    parser.add_argument("--concepts-tsv", metavar="FILE", help="lines 'key<TAB>concept concept ...' to plant")
    parser.add_argument("--tags-tsv", metavar="FILE", help="lines 'key<TAB>tag tag ...' to store as tags")
    parser.add_argument("--feature-dim", type=int, default=64, help="feature size D (default: 64)")
    parser.add_argument("--regions", type=int, default=10, help="regions per image (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of prototypes and images (default: 0)")
    parser.add_argument("--noise", type=float, default=0.1, help="norm of the noise added to prototypes (default: 0.1)")
    parser.add_argument("--encode-key", action="store_true", help="write a code of the key into every region")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--output", "-o", required=True, metavar="STORE.h5")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def cli_main():
    args = get_parser().parse_args()
    try:
        if args.num_images is not None:
            if args.num_images <= 0:
                raise FeatureStoreError(f"--num-images must be positive, got {args.num_images}")
            keys = [f"img{i:06d}" for i in range(args.num_images)]
        else:
            keys = keys_from_index_files(args.keys_from)
        concepts = read_words_tsv(args.concepts_tsv) if args.concepts_tsv else None
        tags = read_words_tsv(args.tags_tsv) if args.tags_tsv else None
        for table, path in ((concepts, args.concepts_tsv), (tags, args.tags_tsv)):
            if table is not None:
                _warn_unknown(table, keys, path)
        count = write_synthetic_store(
            args.output, keys, concepts, tags, feature_dim=args.feature_dim, num_regions=args.regions,
            seed=args.seed, noise=args.noise, encode_key=args.encode_key, dtype=args.dtype,
            progress=not args.no_progress,
        )
    except (FeatureStoreError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {count} synthetic images to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    cli_main()
