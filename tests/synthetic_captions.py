"""A synthetic image-caption corpus whose images determine some caption words (tests, demos).

Every image has an *object* and a *place*. The object is planted in the image's region features
(as a concept of :mod:`synthetic_features`) and is never a tag; the place is told only by a tag
(``PLACE_TAGS[place]``, listed with a random distractor tag). Captions such as
``"a red dog on the beach"`` name both, with a color drawn per caption that no image tells. So a
masked object word can be recovered from the regions only, a masked place word from the tags
only, and neither from a wrong image: with shuffled images their accuracy falls to chance.
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from vlp_mmt_fairseq.features.synthetic_features import write_synthetic_store
from vlp_mmt_fairseq.file_utils import atomic_output

OBJECTS = ("dog", "cat", "horse", "bird", "cow", "sheep")
PLACES = ("beach", "street", "grass", "snow", "road", "lake", "field", "river", "park", "forest")
PLACE_TAGS = {"beach": "sand", "street": "building", "grass": "tree", "snow": "ice", "road": "asphalt",
              "lake": "water", "field": "fence", "river": "bridge", "park": "bench", "forest": "leaf"}
DISTRACTOR_TAGS = ("sky", "cloud", "light", "shadow", "wall")
COLORS = ("red", "blue", "green", "black", "white", "brown")
TEMPLATES = ("a {color} {object} on the {place}", "the {object} is {color} near the {place}")


@dataclass
class PlantedImage:
    key: str
    object: str
    place: str
    tags: List[str]


def planted_images(prefix: str, count: int, rng: np.random.Generator, objects: Sequence[str] = OBJECTS,
                   places: Sequence[str] = PLACES) -> List[PlantedImage]:
    """``count`` images ``{prefix}{i:06d}`` with a uniform random object and place."""
    images = []
    for i in range(count):
        place = places[rng.integers(len(places))]
        tags = [PLACE_TAGS[place], DISTRACTOR_TAGS[rng.integers(len(DISTRACTOR_TAGS))]]
        rng.shuffle(tags)
        images.append(PlantedImage(f"{prefix}{i:06d}", objects[rng.integers(len(objects))], place, tags))
    return images


def planted_captions(images: Sequence[PlantedImage], per_image: int, rng: np.random.Generator):
    """``per_image`` captions of each image: (caption, image key) pairs, image by image."""
    pairs = []
    for image in images:
        for _ in range(per_image):
            template = TEMPLATES[rng.integers(len(TEMPLATES))]
            caption = template.format(color=COLORS[rng.integers(len(COLORS))], object=image.object,
                                      place=image.place)
            pairs.append((caption, image.key))
    return pairs


def write_lines(path: str, lines) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")


def write_planted_corpus(out_dir: str, splits: Dict[str, Sequence[int]], feature_dim: int = 32,
                         num_regions: int = 6, seed: int = 0, objects: Sequence[str] = OBJECTS,
                         places: Sequence[str] = PLACES) -> Dict[str, List[PlantedImage]]:
    """Write ``{split}.captions.txt``, ``{split}.images.txt`` and one ``features.h5`` into ``out_dir``.

    ``splits`` maps a split name to (number of images, captions per image); every split has its
    own images, each with an object of ``objects`` and a place of ``places``. Returns the images
    of each split.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    images_per_split = {}
    for split, (num_images, per_image) in splits.items():
        images = planted_images(f"{split}_", num_images, rng, objects, places)
        pairs = planted_captions(images, per_image, rng)
        write_lines(os.path.join(out_dir, f"{split}.captions.txt"), (c for c, _ in pairs))
        write_lines(os.path.join(out_dir, f"{split}.images.txt"), (k for _, k in pairs))
        images_per_split[split] = images
    every = [image for images in images_per_split.values() for image in images]
    write_synthetic_store(
        os.path.join(out_dir, "features.h5"), [i.key for i in every],
        concepts_per_key={i.key: [i.object] for i in every}, tags_per_key={i.key: i.tags for i in every},
        feature_dim=feature_dim, num_regions=num_regions, seed=seed,
    )
    return images_per_split
