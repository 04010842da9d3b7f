"""Generate the toy *ambiguity* corpus: the image, and only the image, decides a word's translation.

Each English sentence holds one ambiguous word (bank, bat, glasses, ...) whose German translation
depends on its sense; the sense is planted in the image's region features as a concept vector.
The object tags name only the sentence's unambiguous objects, so they never give the sense away:
a model must read the regions themselves.

Output, in the layout of Multi30K's ``data/task1`` (so ``prepare_multi30k.py`` reads it)::

    OUT/raw/{train,val,test_2016_flickr}.{en,de}.gz
    OUT/image_splits/{split}.txt          one image per sentence: toy_<split>_<i>.jpg
    OUT/features.h5                       the synthetic feature store (vlp_mmt format)
    OUT/senses.tsv                        per test line: ambiguous word, correct German word, all senses
"""
import argparse
import gzip
import os

import numpy as np

from vlp_mmt_fairseq.features.synthetic_features import write_synthetic_store
from vlp_mmt_fairseq.file_utils import atomic_output

# ambiguous English word -> {sense concept: German translation}; k = 2 senses each
AMBIGUOUS = {
    "bank": {"riverbank": "ufer", "bench": "sitzbank"},
    "bat": {"animal-bat": "fledermaus", "baseball-bat": "schläger"},
    "glasses": {"spectacles": "brille", "drinking-glasses": "gläser"},
    "mouse": {"animal-mouse": "maus", "computer-mouse": "computermaus"},
    "seal": {"animal-seal": "robbe", "stamp-seal": "siegel"},
    "letter": {"mail-letter": "brief", "alphabet-letter": "buchstabe"},
}
SUBJECTS = {"man": "mann", "woman": "frau", "child": "kind", "dog": "hund", "boy": "junge", "girl": "mädchen"}
VERBS = {"sees": "sieht", "finds": "findet", "watches": "beobachtet", "paints": "malt"}
PLACES = {"park": "park", "street": "straße", "garden": "garten", "house": "haus", "beach": "strand"}
SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}


def make_sentence(rng: np.random.RandomState):
    """One (English, German, sense concept, ambiguous word, German sense word, tags) example."""
    subject = rng.choice(sorted(SUBJECTS))
    verb = rng.choice(sorted(VERBS))
    place = rng.choice(sorted(PLACES))
    word = rng.choice(sorted(AMBIGUOUS))
    concept = rng.choice(sorted(AMBIGUOUS[word]))
    german_word = AMBIGUOUS[word][concept]
    en = f"the {subject} {verb} the {word} in the {place} ."
    de = f"der {SUBJECTS[subject]} {VERBS[verb]} {german_word} im {PLACES[place]} ."
    return en, de, concept, word, german_word, [subject, place]


def write_lines(path: str, lines, gz: bool = False) -> None:
    with atomic_output(path) as tmp:
        opener = gzip.open if gz else open
        with opener(tmp, "wt", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")


def generate(out: str, train: int = 2000, valid: int = 200, test: int = 200, feature_dim: int = 64,
             regions: int = 8, seed: int = 1) -> None:
    """Write the toy corpus and its feature store into ``out``."""
    rng = np.random.RandomState(seed)
    keys, concepts, tags = [], {}, {}
    for split, size in (("train", train), ("val", valid), ("test", test)):
        name = SPLITS[split]
        rows = [make_sentence(rng) for _ in range(size)]
        split_keys = [f"toy_{split}_{i:06d}" for i in range(size)]
        write_lines(os.path.join(out, "raw", f"{name}.en.gz"), [r[0] for r in rows], gz=True)
        write_lines(os.path.join(out, "raw", f"{name}.de.gz"), [r[1] for r in rows], gz=True)
        write_lines(os.path.join(out, "image_splits", f"{name}.txt"), [k + ".jpg" for k in split_keys])
        if split == "test":
            write_lines(os.path.join(out, "senses.tsv"),
                        [f"{r[3]}\t{r[4]}\t{','.join(AMBIGUOUS[r[3]].values())}" for r in rows])
        for key, row in zip(split_keys, rows):
            keys.append(key)
            concepts[key] = [row[2]]
            tags[key] = row[5]  # subject and place: never the sense
    write_synthetic_store(os.path.join(out, "features.h5"), keys, concepts_per_key=concepts, tags_per_key=tags,
                          feature_dim=feature_dim, num_regions=regions, seed=seed)


def cli_main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (Multi30K task1 layout)")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--valid", type=int, default=200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--feature-dim", type=int, default=64)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    generate(args.out, args.train, args.valid, args.test, args.feature_dim, args.regions, args.seed)


if __name__ == "__main__":
    cli_main()
