"""vlp-mmt-resnet-to-store: the organisers' ResNet-50 arrays (made here) into a store keyed by image."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlp_mmt_fairseq.cli.resnet_to_store import main
from vlp_mmt_fairseq.data.feature_store import FeatureStore
from vlp_mmt_fairseq.features.resnet_arrays import ResNetArrayError

CONVERT = Path(sys.executable).parent / "vlp-mmt-resnet-to-store"
# a split's image list: line i names the image of sentence i; COCO lines carry a #id suffix and repeat images
TRAIN_LINES = ["1000092795.jpg", "10002456.jpg", "COCO_val2014_000000000042.jpg#367178", "1000092795.jpg",
               "COCO_val2014_000000000042.jpg#9"]
VAL_LINES = ["20000.jpg", "10002456.jpg"]


def per_image(keys, shape, seed):
    rng = np.random.default_rng(seed)
    return {key: rng.standard_normal(shape).astype(np.float32) for key in dict.fromkeys(keys)}


def write_split(tmp_path, name, lines, rows):
    """The organisers' layout: one row per line (repeated images repeat their row), and the image list."""
    from vlp_mmt_fairseq.data.feature_store import image_key_from_line

    array = tmp_path / f"{name}-resnet50.npy"
    np.save(array, np.stack([rows[image_key_from_line(line)] for line in lines]))
    listing = tmp_path / f"{name}.txt"
    listing.write_text("".join(line + "\n" for line in lines))
    return array, listing


@pytest.mark.slow
def test_res4frelu_grid_and_avgpool(tmp_path):
    from vlp_mmt_fairseq.data.feature_store import image_key_from_line

    keys = [image_key_from_line(line) for line in TRAIN_LINES + VAL_LINES]
    grid = per_image(keys, (1024, 14, 14), seed=0)
    train = write_split(tmp_path, "train", TRAIN_LINES, grid)
    val = write_split(tmp_path, "val", VAL_LINES, grid)
    out = tmp_path / "grid.h5"
    result = subprocess.run([str(CONVERT), "--split", *map(str, train), "--split", *map(str, val), "--output",
                             str(out), "--dtype", "float32", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    store = FeatureStore(str(out))
    assert sorted(store.keys()) == sorted(set(keys))  # each image once
    assert store.feature_dim == 1024 and "res4f" in store.extractor
    for key, value in grid.items():
        item = store.get(key)
        assert item.features.shape == (196, 1024)
        # cell (row r, column c) is the region whose box starts at (c / 14, r / 14)
        for r, c in ((0, 0), (3, 11), (13, 13)):
            at = np.flatnonzero(np.all(np.isclose(item.boxes, [c / 14, r / 14, (c + 1) / 14, (r + 1) / 14]), axis=1))
            assert len(at) == 1
            np.testing.assert_array_equal(item.features[at[0]], value[:, r, c])
        assert item.boxes.min() >= 0 and item.boxes.max() <= 1
    # the reader keeps the most activated cells first
    first = FeatureStore(str(out), max_regions=3).get(keys[0])
    norms = np.linalg.norm(grid[keys[0]].reshape(1024, -1), axis=0)
    np.testing.assert_allclose(np.linalg.norm(first.features, axis=1), np.sort(norms)[::-1][:3], rtol=1e-5)

    pooled = per_image(keys, (2048,), seed=1)
    main(["--split", *map(str, write_split(tmp_path, "pool", TRAIN_LINES, pooled)), "--output",
          str(tmp_path / "pool.h5"), "--no-progress"])
    store = FeatureStore(str(tmp_path / "pool.h5"))
    assert len(store) == 3 and store.feature_dim == 2048 and "avgpool" in store.extractor
    item = store.get("1000092795")
    np.testing.assert_allclose(item.features, pooled["1000092795"][None], rtol=1e-3, atol=1e-3)  # float16
    np.testing.assert_array_equal(item.boxes, [[0, 0, 1, 1]])


def test_lines_of_one_image_must_agree(tmp_path):
    rows = per_image(["1000092795", "10002456", "COCO_val2014_000000000042"], (2048,), seed=2)
    array, listing = write_split(tmp_path, "train", TRAIN_LINES, rows)
    data = np.load(array)
    data[3] += 0.5  # line 4 names the image of line 1, with other features
    np.save(array, data)
    out = tmp_path / "bad.h5"
    with pytest.raises(ResNetArrayError, match=r"line 4 and .*line 1 both name image '1000092795'"):
        main(["--split", str(array), str(listing), "--output", str(out), "--no-progress"])
    assert not out.exists()
    main(["--split", str(array), str(listing), "--output", str(out), "--atol", "0.6", "--no-progress"])
    assert len(FeatureStore(str(out))) == 3

    listing.write_text("".join(line + "\n" for line in TRAIN_LINES[:-1]))
    with pytest.raises(ResNetArrayError, match="5 rows, but the image list .* has 4 lines"):
        main(["--split", str(array), str(listing), "--output", str(tmp_path / "short.h5"), "--no-progress"])
