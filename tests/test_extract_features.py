"""vlp-mmt-extract-features: the 10 real COCO photos, unusual image files, bad files and resuming."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlp_mmt_fairseq.data.feature_store import FeatureStore, FeatureStoreWriter
from vlp_mmt_fairseq.file_utils import partial_path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLP_MMT_SHARED", REPO.parent / "shared"))
COCO_IMAGES = SHARED / "bottom-up-attention" / "images"
EXTRACT = Path(sys.executable).parent / "vlp-mmt-extract-features"


def extract(*args, check=True):
    """Run the console script; return (exit code, stderr)."""
    result = subprocess.run([str(EXTRACT), *map(str, args), "--no-progress", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result.returncode, result.stderr


@pytest.fixture(scope="module")
def coco_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("coco") / "coco.h5"
    extract(COCO_IMAGES, "--output", out, "--batch-size", 4)
    return out


@pytest.mark.slow
def test_coco_photos_give_a_valid_store(coco_store):
    store = FeatureStore(str(coco_store))  # the reader's checks: format, version, attributes
    names = sorted(p.name for p in COCO_IMAGES.glob("*.jpg"))
    assert len(names) == 10
    assert sorted(store.keys()) == [os.path.splitext(n)[0] for n in names]
    assert store.feature_dim == 1280
    assert store.extractor.startswith("efficientnet-lite0 image_size=224 ")
    for name in names:
        item = store.get(os.path.splitext(name)[0])  # validated: shapes, finite values, boxes
        assert item.features.shape == (49, 1280)  # 7 x 7 cells at 224 px
        assert item.boxes.min() >= 0.0 and item.boxes.max() <= 1.0
        np.testing.assert_allclose(np.sort(item.boxes[:, 2] - item.boxes[:, 0]), np.full(49, 1 / 7), rtol=1e-5)
        assert 0 < len(item.tags) <= 10 and all(item.tags)
        assert np.all(np.diff(item.tag_scores) <= 0) and 0 < item.tag_scores.sum() <= 1.0 + 1e-3
        with Image.open(COCO_IMAGES / name) as image:
            assert (item.width, item.height) == image.size
    # the cells tile the image exactly once
    cells = np.round(store.get(os.path.splitext(names[0])[0]).boxes * 7).astype(int)
    assert sorted(map(tuple, cells.tolist())) == sorted((x, y, x + 1, y + 1) for x in range(7) for y in range(7))
    # ImageNet sees what the photos show: the skier and the fire engine
    tags = {key: store.get(key).tags for key in store.keys()}
    assert "ski" in tags["COCO_train2014_000000131486"][:3]
    assert "fire engine" in tags["COCO_train2014_000000387267"][:3]


def _pattern(width, height, seed):
    """An RGB test picture with structure (gradients and a block), so orientation and colour matter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * x / width, 255 * y / height, 128 + 0 * x], axis=-1)
    pixels[height // 5: height // 2, width // 4: width // 2] = rng.integers(0, 255, size=3)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def _features(store, key):
    item = store.get(key)
    order = np.lexsort(item.boxes.T[::-1])  # compare cell by cell, whatever the score order
    return item.features[order]


@pytest.mark.slow
def test_image_kinds_and_a_corrupt_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    # PNG with alpha: the transparent pixels (red here) must not show; they are laid over white
    picture = _pattern(96, 64, 1)
    alpha = np.zeros((64, 96), np.uint8)
    alpha[10:50, 20:70] = 255
    rgba = np.dstack([np.asarray(picture), alpha])
    rgba[alpha == 0, :3] = (255, 0, 0)
    Image.fromarray(rgba, "RGBA").save(images / "alpha.png")
    over_white = np.where(alpha[..., None] == 255, np.asarray(picture), 255).astype(np.uint8)
    Image.fromarray(over_white, "RGB").save(images / "alpha_reference.png")
    # grayscale: read as three equal channels
    gray = picture.convert("L")
    gray.save(images / "gray.png")
    Image.merge("RGB", [gray] * 3).save(images / "gray_reference.png")
    # CMYK JPEG
    _pattern(80, 60, 2).convert("CMYK").save(images / "cmyk.jpg", quality=95)
    # EXIF orientation 6 (rotate 90 degrees clockwise to view): stored 64 wide x 96 high, shown 96 x 64
    upright = _pattern(96, 64, 3)
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(images / "exif.png", exif=exif)
    stored.save(images / "exif_ignored.png")
    upright.save(images / "exif_reference.png")
    # a corrupt JPEG: a real header, then garbage
    data = (COCO_IMAGES / "COCO_train2014_000000084002.jpg").read_bytes()
    (images / "corrupt.jpg").write_bytes(data[:200] + b"\x00garbage" * 20)

    out = tmp_path / "kinds.h5"
    code, stderr = extract(images, "--output", out, "--batch-size", 3, check=False)
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(images / "corrupt.jpg") in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr
    assert not out.exists()  # nothing half-written at the output
    assert Path(partial_path(str(out))).is_dir()  # the finished images are kept for a rerun

    code, stderr = extract(images, "--output", out, "--batch-size", 3, "--skip-bad")
    assert "already done" in stderr
    report = Path(str(out) + ".bad.tsv").read_text().splitlines()
    assert len(report) == 1 and report[0].startswith(str(images / "corrupt.jpg") + "\t")
    assert not Path(partial_path(str(out))).exists()
    store = FeatureStore(str(out))
    assert sorted(store.keys()) == sorted(["alpha", "alpha_reference", "gray", "gray_reference", "cmyk", "exif",
                                           "exif_ignored", "exif_reference"])
    np.testing.assert_allclose(_features(store, "alpha"), _features(store, "alpha_reference"), atol=2e-3)
    np.testing.assert_allclose(_features(store, "gray"), _features(store, "gray_reference"), atol=2e-3)
    assert (store.get("cmyk").width, store.get("cmyk").height) == (80, 60)
    assert (store.get("exif").width, store.get("exif").height) == (96, 64)  # upright
    assert (store.get("exif_ignored").width, store.get("exif_ignored").height) == (64, 96)
    np.testing.assert_allclose(_features(store, "exif"), _features(store, "exif_reference"), atol=2e-3)
    assert np.abs(_features(store, "exif") - _features(store, "exif_ignored")).max() > 0.1


@pytest.mark.slow
def test_resume_after_a_kill_does_not_redo_finished_images(tmp_path, coco_store):
    out = tmp_path / "resumed.h5"
    partial = Path(partial_path(str(out)))
    process = subprocess.Popen([str(EXTRACT), str(COCO_IMAGES), "--output", str(out), "--batch-size", "1",
                                "--no-progress", "--threads", "1"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if partial.is_dir() and len(list(partial.glob("chunk-*.h5"))) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = sorted(partial.glob("chunk-*.h5"))
    assert 3 <= len(finished) < 10 and not out.exists()
    # mark one finished image: if the rerun extracted it again, the mark would be gone
    marked = FeatureStore(str(finished[0]))
    key = next(iter(marked.keys()))
    item = marked.get(key)
    marked.close()
    with FeatureStoreWriter(str(finished[0]), feature_dim=1280, extractor=marked.extractor) as writer:
        writer.add(key, np.full_like(item.features, 0.25), item.boxes, width=item.width, height=item.height,
                   tags=item.tags, tag_scores=item.tag_scores)

    code, stderr = extract(COCO_IMAGES, "--output", out, "--batch-size", 1)
    assert f"continuing, {len(finished)} of 10 images already done" in stderr
    assert f"({10 - len(finished)} extracted now, {len(finished)} from an earlier run" in stderr
    assert not partial.exists() and out.exists()
    resumed, fresh = FeatureStore(str(out)), FeatureStore(str(coco_store))
    assert sorted(resumed.keys()) == sorted(fresh.keys())
    assert np.all(resumed.get(key).features == 0.25)
    for other in fresh.keys():
        if other != key:
            np.testing.assert_allclose(_features(resumed, other), _features(fresh, other), atol=2e-3)
            assert resumed.get(other).tags == fresh.get(other).tags
