"""FeatureStore / FeatureStoreWriter: clear errors for bad stores, atomic writes, bounded memory."""
import os
import re

import h5py
import numpy as np
import psutil
import pytest

from vlp_mmt_fairseq.data.feature_store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    FeatureStore,
    FeatureStoreError,
    FeatureStoreWriter,
)


def regions(count=4, dim=8, seed=0):
    rng = np.random.RandomState(seed)
    xs, ys = np.sort(rng.uniform(0, 1, size=(count, 2))), np.sort(rng.uniform(0, 1, size=(count, 2)))
    boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
    return rng.randn(count, dim).astype(np.float32), boxes.astype(np.float32)


def write_store(path, keys=("a", "b"), dim=8):
    with FeatureStoreWriter(str(path), feature_dim=dim, extractor="test") as writer:
        for i, key in enumerate(keys):
            features, boxes = regions(dim=dim, seed=i)
            writer.add(key, features, boxes, width=640, height=480, scores=np.arange(4.0))
    return path


def hand_written_store(path, features, boxes):
    """A store written with h5py directly, bypassing the writer's checks."""
    with h5py.File(path, "w") as h5:
        h5.attrs.update(format=FORMAT_NAME, version=FORMAT_VERSION, feature_dim=features.shape[1] or 8,
                        max_regions=features.shape[0], extractor="hand")
        group = h5.create_group("img")
        group.attrs.update(width=10, height=10)
        group.create_dataset("features", data=features)
        group.create_dataset("boxes", data=boxes)
    return path


def test_round_trip(tmp_path):
    path = write_store(tmp_path / "s.h5")
    store = FeatureStore(str(path), feature_dim=8, max_regions=2)
    features, boxes = regions(seed=1)
    item = store.get("b")
    np.testing.assert_array_equal(item.features, features[[3, 2]].astype(np.float16))  # best scores first
    np.testing.assert_array_equal(item.boxes, boxes[[3, 2]])
    assert (item.width, item.height) == (640, 480)
    assert sorted(store.keys()) == ["a", "b"] and len(store) == 2 and "a" in store and "c" not in store


def test_missing_file(tmp_path):
    path = tmp_path / "absent.h5"
    with pytest.raises(FeatureStoreError, match=re.escape(f"{path}: feature store not found")):
        FeatureStore(str(path))


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.h5"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(FeatureStoreError, match=re.escape(f"{path}: cannot read the feature store")):
        FeatureStore(str(path))


def test_not_a_feature_store(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("x", data=np.zeros(3))
    with pytest.raises(FeatureStoreError, match=re.escape(f"{path}: not a vlp_mmt feature store")):
        FeatureStore(str(path))


def test_missing_key(tmp_path):
    path = write_store(tmp_path / "s.h5")
    with pytest.raises(FeatureStoreError, match=re.escape(f"{path}: image 'zebra': key not in the store")):
        FeatureStore(str(path)).get("zebra")


def test_wrong_feature_dim(tmp_path):
    path = write_store(tmp_path / "s.h5", dim=8)
    with pytest.raises(FeatureStoreError, match=re.escape(f"{path}: the store holds features of size D = 8, "
                                                          "but D = 2048 was expected")):
        FeatureStore(str(path), feature_dim=2048)


def test_no_regions(tmp_path):
    path = hand_written_store(tmp_path / "empty.h5", np.zeros((0, 8), np.float16), np.zeros((0, 4), np.float32))
    with pytest.raises(FeatureStoreError, match=re.escape(f"{path}: image 'img': the image has no regions (R = 0)")):
        FeatureStore(str(path)).get("img")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(tmp_path, bad):
    features, boxes = regions()
    features[2, 5] = bad
    path = hand_written_store(tmp_path / "bad.h5", features.astype(np.float16), boxes)
    with pytest.raises(FeatureStoreError, match=re.escape(f"{path}: image 'img': features contain NaN or inf")):
        FeatureStore(str(path)).get("img")
    with FeatureStoreWriter(str(tmp_path / "w.h5"), feature_dim=8, extractor="test") as writer:
        with pytest.raises(FeatureStoreError, match="image 'x': features contain NaN or inf"):
            writer.add("x", features, boxes, width=1, height=1)


def test_writer_rejects_values_beyond_float16(tmp_path):
    features, boxes = regions()
    features[0, 0] = 1e6
    with FeatureStoreWriter(str(tmp_path / "w.h5"), feature_dim=8, extractor="test") as writer:
        with pytest.raises(FeatureStoreError, match="image 'big': features exceed the float16 range"):
            writer.add("big", features, boxes, width=1, height=1)
        writer.add("ok", *regions(), width=1, height=1)
    assert list(FeatureStore(str(tmp_path / "w.h5")).keys()) == ["ok"]


def test_rejected_image_leaves_no_partial_entry(tmp_path):
    path = tmp_path / "s.h5"
    with FeatureStoreWriter(str(path), feature_dim=8, extractor="test") as writer:
        with pytest.raises(FeatureStoreError, match="image 'a': scores must be"):
            writer.add("a", *regions(), width=1, height=1, scores=[1.0, 2.0])
        with pytest.raises(FeatureStoreError, match="image 'a': 2 tags but"):
            writer.add("a", *regions(), width=1, height=1, tags=["x", "y"], tag_scores=[1.0])
        writer.add("a", *regions(), width=1, height=1)
        with pytest.raises(FeatureStoreError, match="image 'a': duplicate key"):
            writer.add("a", *regions(), width=1, height=1)
    item = FeatureStore(str(path)).get("a")
    assert item.features.shape == (4, 8) and item.tags == []


def test_writer_leaves_no_file_on_exception(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureStoreWriter(str(path), feature_dim=8, extractor="test") as writer:
            writer.add("a", *regions(), width=1, height=1)
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_written_store_is_readable_by_others(tmp_path):
    path = write_store(tmp_path / "s.h5")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------- memory

DIM, REGIONS = 1024, 36  # 72 KiB of float16 per image


def big_store(path, count):
    features, boxes = regions(REGIONS, DIM)
    with FeatureStoreWriter(str(path), feature_dim=DIM, extractor="test") as writer:
        for i in range(count):
            writer.add(f"img{i:06d}", features + i, boxes, width=100, height=100, scores=-np.arange(REGIONS))
    return path, features[0, 0]


def rss_growth_reading(path, count, first_value, reads=300):
    """Resident memory added by opening a store and reading ``reads`` random images (checked)."""
    process = psutil.Process()
    before = process.memory_info().rss
    store = FeatureStore(str(path), max_regions=REGIONS)
    for i in np.random.RandomState(0).randint(count, size=reads):
        value = store.get(f"img{i:06d}").features[0, 0]
        assert value == np.float16(first_value + i), f"img{i:06d} read wrongly"
    growth = process.memory_info().rss - before
    del store
    return growth


def test_reading_does_not_load_the_store(tmp_path):
    small, large = 50, 1500
    small_path, first = big_store(tmp_path / "small.h5", small)
    large_path, _ = big_store(tmp_path / "large.h5", large)
    store_size = os.path.getsize(large_path)
    assert store_size > 100 * 2**20
    rss_growth_reading(small_path, small, first)  # warm up h5py, numpy and the allocator
    small_growth = rss_growth_reading(small_path, small, first)
    large_growth = rss_growth_reading(large_path, large, first)
    mib = 2**20
    assert large_growth < store_size / 20, (
        f"RSS grew by {large_growth / mib:.1f} MiB for a {store_size / mib:.0f} MiB store"
    )
    assert large_growth < small_growth + 16 * mib, (
        f"RSS grew by {large_growth / mib:.1f} MiB with {large} images, {small_growth / mib:.1f} MiB with {small}"
    )
