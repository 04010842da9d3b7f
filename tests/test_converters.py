"""The feature-store converters (vlp-mmt-tsv-to-store, vlp-mmt-npz-to-store) and the synthetic generator."""
import base64
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from utils import SHARED_DIR, console_script
from vlp_mmt_fairseq.data.feature_store import FeatureStore
from vlp_mmt_fairseq.features.synthetic_features import (
    concept_prototype,
    has_key_code,
    key_code,
    nearest_concept,
    write_synthetic_store,
)

BUA = SHARED_DIR / "bottom-up-attention"
TSV = BUA / "train2014_obj36.tsv"
VOCAB = BUA / "objects_vocab.txt"


def load_script(name):
    """A console script's module (vlp_mmt_fairseq.cli.NAME), to call its cli_main in this process."""
    import importlib

    return importlib.import_module(f"vlp_mmt_fairseq.cli.{name}")


def run_in_process(monkeypatch, name, *args):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, args)])
    load_script(name).cli_main()


def decode_tsv():
    """The TSV rows decoded here, independently of the converter."""
    rows = []
    with open(TSV) as f:
        for line in f:
            c = line.rstrip("\n").split("\t")
            n = int(c[7])
            rows.append({
                "key": c[0], "h": int(c[1]), "w": int(c[2]),
                "ids": np.frombuffer(base64.b64decode(c[3]), np.int64),
                "conf": np.frombuffer(base64.b64decode(c[4]), np.float32),
                "boxes": np.frombuffer(base64.b64decode(c[8]), np.float32).reshape(n, 4),
                "features": np.frombuffer(base64.b64decode(c[9]), np.float32).reshape(n, -1),
            })
    return rows


def first_synonyms():
    with open(VOCAB) as f:
        return [line.strip().split(",")[0] for line in f]


def jpeg_size(path):
    """(width, height) from a JPEG's start-of-frame marker."""
    data = Path(path).read_bytes()
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    raise ValueError(f"{path}: no start-of-frame marker")


def expected_tags(row, names):
    best = {}
    for i, c in zip(row["ids"].tolist(), row["conf"].tolist()):
        best[names[i]] = max(best.get(names[i], -1.0), c)
    return best


# --------------------------------------------------------------------------- TSV


def test_tsv_converter_copies_real_features_exactly(tmp_path, monkeypatch):
    out = tmp_path / "coco.h5"
    run_in_process(monkeypatch, "tsv_to_store", "--tsv", TSV, "--objects-vocab", VOCAB, "--output", out,
                   "--dtype", "float32", "--no-progress")
    rows, names = decode_tsv(), first_synonyms()
    store = FeatureStore(str(out))
    assert len(store) == 10 and store.feature_dim == 2048
    assert "Faster R-CNN" in store.extractor
    import h5py

    with h5py.File(out, "r") as h5:
        for row in rows:
            group = h5[row["key"]]
            np.testing.assert_array_equal(group["features"][()], row["features"])  # bit-exact, store order
            scale = np.array([row["w"], row["h"], row["w"], row["h"]], np.float32)
            np.testing.assert_allclose(group["boxes"][()], row["boxes"] / scale, rtol=1e-6, atol=0)
            np.testing.assert_array_equal(group["scores"][()], row["conf"])
            tags = [t.decode() for t in group["tags"][()]]
            assert dict(zip(tags, group["tag_scores"][()].tolist())) == pytest.approx(expected_tags(row, names))
            assert (group.attrs["width"], group.attrs["height"]) == jpeg_size(BUA / "images" / f"{row['key']}.jpg")
    first = store.get("COCO_train2014_000000132417")
    assert (first.width, first.height) == (500, 333)
    assert {"sky", "tree", "field", "pole", "water"} <= set(first.tags)
    synonyms = store.get("COCO_train2014_000000578174").tags + store.get("COCO_train2014_000000084002").tags
    assert {"sidewalk", "headboard", "streetlight"} <= set(synonyms)
    assert not any("," in t for key in store.keys() for t in store.get(key).tags)


def test_reader_keeps_the_highest_confidence_regions(tmp_path, monkeypatch):
    out = tmp_path / "coco.h5"
    run_in_process(monkeypatch, "tsv_to_store", "--tsv", TSV, "--objects-vocab", VOCAB, "--output", out,
                   "--dtype", "float32", "--no-progress")
    store = FeatureStore(str(out), max_regions=10)
    rows = decode_tsv()
    # the detector did not store regions by confidence, so the selection below is not just a prefix
    assert any(not np.array_equal(np.argsort(-r["conf"], kind="stable")[:10], np.arange(10)) for r in rows)
    for row in rows:
        top = np.argsort(-row["conf"], kind="stable")[:10]
        item = store.get(row["key"])
        np.testing.assert_array_equal(item.features, row["features"][top])
        np.testing.assert_allclose(item.boxes[:, 2], row["boxes"][top, 2] / row["w"], rtol=1e-6)


def test_tsv_float16_default(tmp_path, monkeypatch):
    out = tmp_path / "coco16.h5"
    run_in_process(monkeypatch, "tsv_to_store", "--tsv", TSV, "--objects-vocab", VOCAB, "--output", out,
                   "--no-progress")
    row = decode_tsv()[3]
    import h5py

    with h5py.File(out, "r") as h5:
        stored = h5[row["key"]]["features"][()]
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(stored, row["features"].astype(np.float16))


def corrupt_tsv(tmp_path, how):
    lines = TSV.read_text().splitlines(keepends=True)[:3]
    cols = lines[1].rstrip("\n").split("\t")
    if how == "truncated":  # a line cut short in its last column
        lines[1] = lines[1][: len(lines[1]) // 2 + 1] + "\n"
    elif how == "columns":
        lines[1] = "\t".join(cols[:6]) + "\n"
    elif how == "base64":
        cols[9] = cols[9][:100] + "!!" + cols[9][102:]
        lines[1] = "\t".join(cols) + "\n"
    elif how == "size":
        cols[7] = "35"
        lines[1] = "\t".join(cols) + "\n"
    path = tmp_path / "bad.tsv"
    path.write_text("".join(lines))
    return path


@pytest.mark.slow
def test_tsv_corrupt_line_fails_cleanly_as_a_real_cli(tmp_path):
    bad = corrupt_tsv(tmp_path, "truncated")
    out = tmp_path / "out" / "store.h5"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [console_script("vlp-mmt-tsv-to-store"), "--tsv", str(bad), "--objects-vocab", str(VOCAB),
         "--output", str(out), "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode != 0
    assert f"{bad}:2: column 'features'" in done.stderr
    assert not out.exists()
    assert os.listdir(out.parent) == []  # no temporary file left either


@pytest.mark.parametrize("how, words", [
    ("truncated", "column 'features'"),
    ("columns", "expected 10 tab-separated columns"),
    ("base64", "column 'features' is not valid base64"),
    ("size", "holds 36 values, expected 35 for num_boxes=35"),
])
def test_tsv_errors_name_file_and_line(tmp_path, monkeypatch, how, words):
    bad = corrupt_tsv(tmp_path, how)
    out = tmp_path / "store.h5"
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(monkeypatch, "tsv_to_store", "--tsv", bad, "--objects-vocab", VOCAB, "--output", out,
                       "--no-progress")
    message = str(exit_info.value.code)
    assert message.startswith(f"error: {bad}:2: ") and words in message
    assert sorted(os.listdir(tmp_path)) == ["bad.tsv"]


# --------------------------------------------------------------------------- npz


def write_npz_files(directory, rows, names, style):
    directory.mkdir()
    for row in rows:
        path = directory / f"{row['key']}.npz"
        if style == "info-dict":  # bottom-up-attention.pytorch's extract_features.py
            info = {"objects_id": row["ids"], "objects_conf": row["conf"], "image_h": row["h"], "image_w": row["w"]}
            np.savez_compressed(path, x=row["features"], bbox=row["boxes"], num_bbox=len(row["boxes"]),
                                image_h=row["h"], image_w=row["w"], info=info)
        elif style == "flat-ids":
            np.savez(path, x=row["features"], bbox=row["boxes"], num_bbox=len(row["boxes"]), image_h=row["h"],
                     image_w=row["w"], objects_id=row["ids"], objects_conf=row["conf"])
        else:  # class names and other key spellings
            np.savez(path, features=row["features"], boxes=row["boxes"], img_h=row["h"], img_w=row["w"],
                     object_names=np.array([names[i] for i in row["ids"]]), scores=row["conf"])


@pytest.mark.parametrize("style", ["info-dict", "flat-ids", "names"])
def test_npz_converter_matches_the_tsv_content(tmp_path, monkeypatch, style):
    rows, names = decode_tsv()[:3], first_synonyms()
    write_npz_files(tmp_path / "npz", rows, names, style)
    out = tmp_path / "npz.h5"
    args = ["--npz-dir", tmp_path / "npz", "--objects-vocab", VOCAB, "--output", out, "--dtype", "float32",
            "--no-progress"]
    if style == "info-dict":
        with pytest.raises(SystemExit) as exit_info:
            run_in_process(monkeypatch, "npz_to_store", *args)
        assert "--allow-pickle" in str(exit_info.value.code) and rows[0]["key"] in str(exit_info.value.code)
        assert not out.exists()
        args.append("--allow-pickle")
    run_in_process(monkeypatch, "npz_to_store", *args)
    store = FeatureStore(str(out), max_regions=36)
    assert sorted(store.keys()) == sorted(r["key"] for r in rows)
    for row in rows:
        item = store.get(row["key"])
        order = np.argsort(-row["conf"], kind="stable")
        np.testing.assert_array_equal(item.features, row["features"][order])
        scale = np.array([row["w"], row["h"], row["w"], row["h"]], np.float32)
        np.testing.assert_allclose(item.boxes, row["boxes"][order] / scale, rtol=1e-6)
        assert dict(zip(item.tags, item.tag_scores.tolist())) == pytest.approx(expected_tags(row, names))
        assert (item.width, item.height) == (row["w"], row["h"])


@pytest.mark.parametrize("problem", ["boxes", "garbage"])
def test_npz_converter_rejects_bad_files(tmp_path, monkeypatch, problem):
    row = decode_tsv()[0]
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "a.npz", x=row["features"], bbox=row["boxes"], image_h=row["h"], image_w=row["w"])
    if problem == "boxes":
        np.savez(tmp_path / "npz" / "b.npz", x=row["features"], bbox=row["boxes"][:5], image_h=1, image_w=1)
        words = "b.npz: boxes must be [36, 4]"
    else:
        (tmp_path / "npz" / "b.npz").write_bytes(os.urandom(1000))
        words = "b.npz: not a .npz file"
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(monkeypatch, "npz_to_store", "--npz-dir", tmp_path / "npz", "--output", tmp_path / "o.h5",
                       "--no-progress")
    assert words in str(exit_info.value.code)
    assert sorted(os.listdir(tmp_path)) == ["npz"]


def test_tsv_duplicate_image_names_the_second_file(tmp_path, monkeypatch):
    again = tmp_path / "again.tsv"
    again.write_text(TSV.read_text().splitlines(keepends=True)[4])
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(monkeypatch, "tsv_to_store", "--tsv", TSV, again, "--objects-vocab", VOCAB,
                       "--output", tmp_path / "o.h5", "--no-progress")
    assert f"{again}:1: " in str(exit_info.value.code) and "duplicate key" in str(exit_info.value.code)
    assert sorted(os.listdir(tmp_path)) == ["again.tsv"]


# --------------------------------------------------------------------------- synthetic

CONCEPTS = [f"concept{i}" for i in range(20)]


def test_synthetic_planted_concepts_are_recoverable(tmp_path):
    rng = np.random.RandomState(0)
    keys = [f"img{i:04d}" for i in range(200)]
    planted = {k: list(rng.choice(CONCEPTS, size=rng.randint(1, 4), replace=False)) for k in keys}
    tags = {k: ["man", "street"] for k in keys}  # tags that say nothing about the concepts
    path = tmp_path / "syn.h5"
    assert write_synthetic_store(str(path), keys, planted, tags, feature_dim=64, num_regions=10, seed=3) == 200
    store = FeatureStore(str(path), feature_dim=64)
    prototypes = np.stack([concept_prototype(c, 64, seed=3) for c in CONCEPTS])
    for key in keys:
        item = store.get(key)
        k = len(planted[key])
        assert item.features.shape == (10, 64) and item.tags == ["man", "street"]
        cosines = item.features @ prototypes.T / np.linalg.norm(item.features, axis=1, keepdims=True)
        # the k best-scored regions are the planted ones: their nearest prototypes are the concepts
        assert {CONCEPTS[i] for i in cosines[:k].argmax(axis=1)} == set(planted[key])
        assert cosines[:k].max(axis=1).min() > 0.9  # planted regions: prototype + 0.1 noise
        assert cosines[k:].max() < 0.7  # the others resemble no concept
        assert (item.boxes[:, :2] < item.boxes[:, 2:]).all() and (item.boxes >= 0).all() and (item.boxes <= 1).all()
    # another seed gives unrelated prototypes
    other = np.stack([concept_prototype(c, 64, seed=4) for c in CONCEPTS])
    assert np.abs(other @ prototypes.T).max() < 0.7


def test_synthetic_images_depend_on_key_only_and_encode_it(tmp_path):
    keys = ["a", "b", "c", "d"]
    write_synthetic_store(str(tmp_path / "1.h5"), keys, {"b": ["x"]}, feature_dim=128, encode_key=True,
                          dtype="float32")
    write_synthetic_store(str(tmp_path / "2.h5"), keys[::-1], {"b": ["x"]}, feature_dim=128, encode_key=True,
                          dtype="float32")
    one, two = FeatureStore(str(tmp_path / "1.h5"), max_regions=3), FeatureStore(str(tmp_path / "2.h5"))
    for key in keys:
        np.testing.assert_array_equal(one.get(key).features, two.get(key).features[:3])
        assert has_key_code(one.get(key).features, key)
        assert not any(has_key_code(one.get(key).features, other) for other in keys if other != key)
    assert len(key_code("a", 128)) == 16 and len(key_code("a", 32)) == 8
    assert nearest_concept(one.get("b").features[0], ["x", "y", "z"]) == "x"


def test_synthetic_cli_keys_from_index_files(tmp_path, monkeypatch):
    (tmp_path / "train.txt").write_text("1000092795.jpg\n10002456.jpg\n1000092795.jpg\n")
    (tmp_path / "test.txt").write_text("COCO_train2014_000000117071.jpg#367178\n10002456.jpg\n")
    (tmp_path / "concepts.tsv").write_text("1000092795.jpg\tdog ball\nCOCO_train2014_000000117071\tcat\n")
    (tmp_path / "tags.tsv").write_text("1000092795\tman park\n")
    out = tmp_path / "syn.h5"
    run_in_process(monkeypatch, "synthetic_store", "--keys-from", tmp_path / "train.txt", tmp_path / "test.txt",
                   "--concepts-tsv", tmp_path / "concepts.tsv", "--tags-tsv", tmp_path / "tags.tsv",
                   "--feature-dim", 96, "--regions", 6, "--seed", 7, "--output", out, "--no-progress")
    module = load_script("synthetic_store")
    assert module.keys_from_index_files([tmp_path / "train.txt", tmp_path / "test.txt"]) == [
        "1000092795", "10002456", "COCO_train2014_000000117071"]
    store = FeatureStore(str(out), max_regions=2)
    assert sorted(store.keys()) == ["1000092795", "10002456", "COCO_train2014_000000117071"]
    item = store.get("1000092795")
    assert item.features.shape == (2, 96) and item.tags == ["man", "park"]
    assert {nearest_concept(v, ["dog", "ball", "cat"], seed=7) for v in item.features} == {"dog", "ball"}
    assert store.get("10002456").tags == []


def test_synthetic_store_of_thousands_is_quick(tmp_path):
    start = time.process_time()
    count = write_synthetic_store(str(tmp_path / "big.h5"), (f"img{i:06d}" for i in range(2000)),
                                  feature_dim=256, num_regions=10)
    seconds = time.process_time() - start
    assert count == 2000 and len(FeatureStore(str(tmp_path / "big.h5"))) == 2000
    assert seconds < 10, f"2000 synthetic images took {seconds:.1f} s of CPU"
