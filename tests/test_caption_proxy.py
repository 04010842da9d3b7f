"""vlp-mmt-caption-proxy-store on the shared Multi30K data: no line's image holds its own source sentence (checked on
the full val and test2016 by an independent computation over the text files, and on a built store through the
region vectors themselves), every tag is a detector class, and the store passes the reader's checks and loads into
the vlp_mmt task's image dataset."""
import gzip
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from utils import SHARED_DIR, console_script, run_cli
from vlp_mmt_fairseq.data.feature_store import FeatureStore, read_image_index
from vlp_mmt_fairseq.features.caption_proxy import (
    TASK1_SPLITS,
    SentenceEncoder,
    TagVocabulary,
    collect_images,
    read_split,
)

TASK2 = SHARED_DIR / "multi30k-task2"
VOCAB = SHARED_DIR / "bottom-up-attention" / "objects_vocab.txt"
#: lines per split in the built store: test2016 line 75 (two descriptions match its source) is among them
LIMIT = 76
#: the splits of the built store (the full splits' text is checked without building one)
STORE_SPLITS = ("val", "test_2016")


@pytest.fixture(scope="module")
def task1_dir(multi30k_dir) -> Path:
    if not (TASK2 / "raw" / "val.1.en.gz").exists():
        pytest.fail(f"Multi30K task 2 not found at {TASK2}")
    return multi30k_dir


def gz_lines(path: Path) -> list:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def independent_key(text: str) -> str:
    """A sentence up to case, whitespace and punctuation, computed another way than the library's match_key."""
    return re.sub(r"[\W_]+", "", text.lower())


def independent_kept(task1_dir: Path, split: str, limit=None) -> list:
    """Per line (in order): the image key and the descriptions that do not match the line's source."""
    sources = gz_lines(task1_dir / "raw" / f"{TASK1_SPLITS[split]}.en.gz")
    images = (TASK2 / "image_splits" / f"{split}_images.txt").read_text(encoding="utf-8").splitlines()
    columns = [gz_lines(TASK2 / "raw" / f"{split}.{k}.en.gz") for k in range(1, 6)]
    rows = []
    for i in range(len(sources) if limit is None else limit):
        own = independent_key(sources[i])
        rows.append((images[i].rsplit(".", 1)[0], sources[i],
                     [c[i].strip() for c in columns if independent_key(c[i]) != own]))
    return rows


@pytest.fixture(scope="module")
def built_store(task1_dir, tmp_path_factory):
    """The real console script on the first LIMIT lines of val and test_2016."""
    out = tmp_path_factory.mktemp("caption_proxy")
    result = run_cli([console_script("vlp-mmt-caption-proxy-store"), "--task2-dir", TASK2, "--task1-dir", task1_dir,
                      "--objects-vocab", VOCAB, "--output", out / "proxy.h5", "--limit", LIMIT,
                      "--splits", *STORE_SPLITS, "--summary-json", out / "summary.json", "--no-progress"])
    assert not (out / "proxy.h5.partial").exists()  # the resume file goes once the store is published
    return out / "proxy.h5", json.loads((out / "summary.json").read_text()), result.stdout


# ----------------------------------------------------------------------------- the source never enters its image


@pytest.mark.parametrize("split", ["val", "test_2016"])
def test_no_line_keeps_a_description_matching_its_source_on_the_full_split(task1_dir, split):
    expected = independent_kept(task1_dir, split)
    images = collect_images(read_split(str(TASK2), str(task1_dir), split))
    assert len(images) == len(expected)  # every image is on exactly one line of these splits
    for key, source, kept in expected:
        assert images[key].kept == kept, key
        assert all(independent_key(d) != independent_key(source) for d in images[key].kept)
    dropped = sum(5 - len(kept) for _, _, kept in expected)
    assert sum(im.dropped for im in images.values()) == dropped
    assert all(1 <= 5 - len(kept) for _, _, kept in expected)  # the source is one of the five on every line
    if split == "test_2016":
        assert dropped == 1001  # 999 lines drop one description; line 75 drops two
        assert len(images[expected[74][0]].kept) == 3 and "swimming in a pool" in expected[74][1]


def test_an_image_shared_by_lines_drops_every_lines_source(task1_dir):
    lines = read_split(str(TASK2), str(task1_dir), "val", limit=2)
    first, second = lines
    second.key = first.key  # as if line 2 showed line 1's image, with its own source sentence
    second.descriptions = list(first.descriptions)
    other = next(d for d in first.descriptions if independent_key(d) != independent_key(first.source))
    second.source = other.upper() + " !"  # matches that description up to case and punctuation
    image = collect_images([first, second])[first.key]
    assert image.lines == 2 and image.sources == 2 and image.dropped == 4  # 2 per line
    assert image.kept == [d for d in first.descriptions
                          if independent_key(d) not in {independent_key(first.source), independent_key(other)}]
    assert len(image.kept) == 3


@pytest.mark.slow
def test_built_store_regions_are_the_other_descriptions_and_pass_the_readers_checks(built_store, task1_dir):
    from sentence_transformers import SentenceTransformer

    from vlp_mmt_fairseq.bert_loading import BUNDLED_MINILM, resolve_bert_path

    path, summary, _ = built_store
    store = FeatureStore(str(path))  # the reader's checks: format, version, checksums, attributes
    assert store.extractor.startswith("caption-proxy: MiniLM") and store.feature_dim == 384
    assert summary["images"] == len(store) == len(STORE_SPLITS) * LIMIT
    assert summary["lines_with_two_or_more_dropped"] == 1 and summary["lines_with_none_dropped"] == 0
    assert summary["descriptions_dropped"] == len(STORE_SPLITS) * LIMIT + 1

    lines = [row for split in STORE_SPLITS for row in independent_kept(task1_dir, split, LIMIT)]
    # a second implementation of the encoder: sentence-transformers' own pipeline for this MiniLM
    encoder = SentenceTransformer(resolve_bert_path(BUNDLED_MINILM), device="cpu")
    texts = [source for _, source, _ in lines] + [d for _, _, kept in lines for d in kept]
    vectors = iter(encoder.encode(texts, batch_size=128, normalize_embeddings=True))
    sources = [next(vectors) for _ in lines]
    vocabulary = {line.split(",")[0].strip() for line in VOCAB.read_text(encoding="utf-8").splitlines()}
    for (key, _, kept), own in zip(lines, sources):
        image = store.get(key)
        assert image.features.shape == (len(kept), 384)
        assert np.array_equal(image.boxes, np.tile([0, 0, 1, 1], (len(kept), 1)).astype(np.float32))
        assert image.width == image.height == 1
        expected = np.stack([next(vectors) for _ in kept])
        # each region is the embedding of one kept description (float16 storage), none is the source's
        assert np.abs(image.features - expected).max() < 2e-3, key
        assert (image.features @ own).max() < 0.999, key
        assert set(image.tags) <= vocabulary and len(set(image.tags)) == len(image.tags)
        assert all(s == int(s) and 1 <= s <= len(kept) for s in image.tag_scores)
        assert list(image.tag_scores) == sorted(image.tag_scores, reverse=True)
    regions = sum(len(kept) for _, _, kept in lines)
    assert summary["regions_mean"] == pytest.approx(regions / len(lines), abs=1e-3)


@pytest.mark.slow
def test_the_vlp_mmt_image_dataset_reads_the_store(built_store, task1_dir, tmp_path):
    from vlp_mmt_fairseq.bert_loading import BUNDLED_MINILM
    from vlp_mmt_fairseq.data.image_dataset import ImageDataset
    from vlp_mmt_fairseq.data.tag_encoder import TagEncoder

    path, _, _ = built_store
    index = tmp_path / "test2016.img.txt"
    index.write_text("\n".join((task1_dir / "image_splits" / "test_2016_flickr.txt").read_text().splitlines()[:LIMIT])
                     + "\n")
    dataset = ImageDataset(read_image_index(str(index)), FeatureStore(str(path), max_regions=36, max_tags=20),
                           TagEncoder(BUNDLED_MINILM), sep=102, pad=0)
    batch = dataset.collater([dataset[i] for i in range(LIMIT)])
    assert batch["region_features"].shape == (LIMIT, 4, 384)  # up to 4 descriptions per image
    assert batch["region_mask"].sum().item() == 4 * LIMIT - 1  # line 75's image has 3
    assert (batch["tag_tokens"] != 0).any(dim=1).all()  # every image has tags


# ----------------------------------------------------------------------------- tags


def test_tags_match_classes_plurals_and_multiword_names(tmp_path):
    vocab = tmp_path / "objects_vocab.txt"
    vocab.write_text("stop sign,stopsign\nman\nmen\ndog\ntennis racket\nracket\nblack\nfront\nbench\nglass\n"
                     "glasses\nrefrigerator,fridge\nt-shirt,t shirt,tshirt", encoding="utf-8")
    tags = TagVocabulary(str(vocab))
    assert tags.mentions("Two black dogs sit in front of a stopsign; a man with a tennis racket and the men on "
                         "benches.") == ["dog", "stop sign", "man", "tennis racket", "men", "bench"]
    assert tags.mentions("A man's glasses, by the fridges. A T-shirt!") == ["man", "glasses", "refrigerator",
                                                                             "t-shirt"]
    names, scores = tags.image_tags(["A dog.", "Two dogs and a man.", "A man, a dog, a bench."])
    assert names == ["dog", "man", "bench"] and scores.tolist() == [3.0, 2.0, 1.0]


def test_every_tag_of_the_full_test2016_is_a_detector_class(task1_dir):
    vocab = TagVocabulary(str(VOCAB))
    classes = {line.split(",")[0].strip() for line in VOCAB.read_text(encoding="utf-8").splitlines()}
    assert len(classes) == 1600
    images = collect_images(read_split(str(TASK2), str(task1_dir), "test_2016"))
    counts = [len(vocab.image_tags(im.kept)[0]) for im in images.values()]
    found = {t for im in images.values() for t in vocab.image_tags(im.kept)[0]}
    assert found <= classes and len(found) > 300
    assert np.mean(counts) > 4


# ----------------------------------------------------------------------------- resuming and errors


@pytest.mark.slow
def test_an_interrupted_encoding_resumes_from_the_partial_file(tmp_path):
    encoder = SentenceEncoder(max_tokens=64)
    texts = [f"A dog number {i} runs on the {'green ' * (i % 5)}grass." for i in range(40)]
    resume = str(tmp_path / "store.h5.partial")
    full, computed = encoder.encode(texts, progress=False)
    assert computed == 40

    calls = []
    original = encoder.embed_ids

    def failing(ids):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(len(ids))
        return original(ids)

    encoder.embed_ids = failing
    with pytest.raises(KeyboardInterrupt):
        encoder.encode(texts, resume_path=resume, progress=False, flush_every=1)
    encoder.embed_ids = original
    again, computed = encoder.encode(texts, resume_path=resume, progress=False)
    assert computed == 40 - sum(calls) and 0 < sum(calls) < 40
    assert np.allclose(again, full, atol=1e-5)


@pytest.mark.slow
def test_a_missing_input_file_is_one_line_of_error_and_no_output(task1_dir, tmp_path):
    result = subprocess.run(
        [console_script("vlp-mmt-caption-proxy-store"), "--task2-dir", str(TASK2), "--task1-dir",
         str(tmp_path), "--objects-vocab", str(VOCAB), "--output", str(tmp_path / "out.h5"), "--limit", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("vlp-mmt-caption-proxy-store: error:") and "not found" in error and str(tmp_path) in error
    assert list(tmp_path.iterdir()) == []
