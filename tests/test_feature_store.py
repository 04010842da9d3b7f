"""FeatureStore / FeatureStoreWriter: clear errors for bad stores, atomic writes, bounded memory."""
import os
import pickle
import re

import h5py
import numpy as np
import psutil
import pytest

from vlp_mmt_fairseq.data.feature_store import (
    FORMAT_NAME,
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
    """A store written with h5py directly (format version 1: no checksums), bypassing the writer's checks."""
    with h5py.File(path, "w") as h5:
        h5.attrs.update(format=FORMAT_NAME, version=1, feature_dim=features.shape[1] or 8,
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


@pytest.mark.slow
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


def test_memory_holds_the_images_read_up_to_its_budget(tmp_path):
    keys = [f"k{i}" for i in range(6)]
    path = str(write_store(tmp_path / "s.h5", keys=keys))
    plain = FeatureStore(path, max_regions=3)  # memory_mb=0: every read from the file
    image = plain.get("k0")
    assert plain.get("k0") is not image
    size = image.features.nbytes + image.boxes.nbytes + image.tag_scores.nbytes
    store = FeatureStore(path, max_regions=3, memory_mb=2.5 * size / 2**20)  # room for two images
    first = [store.get(key) for key in keys]
    assert [store.get(key) is item for key, item in zip(keys, first)] == [True, True, False, False, False, False]
    for key, item in zip(keys, first):
        np.testing.assert_array_equal(item.features, plain.get(key).features)
        np.testing.assert_array_equal(item.boxes, plain.get(key).boxes)
    tags_only = store.get("k0", tags_only=True)  # from memory, as a read of the tags alone gives it
    assert tags_only.features.shape == (0, 8) and tags_only.boxes.shape == (0, 4)
    assert (tags_only.tags, tags_only.width) == (plain.get("k0", tags_only=True).tags, 640)
    assert pickle.loads(pickle.dumps(store))._held == {}  # a DataLoader worker holds its own


# --------------------------------------------------------------------------- boxes


def test_writer_refuses_pixel_boxes(tmp_path):
    path = tmp_path / "s.h5"
    features, _ = regions(count=2)
    pixel_boxes = np.array([[10, 20, 300, 200], [0, 0, 499, 374]], np.float32)  # a 500 x 375 image
    with FeatureStoreWriter(str(path), feature_dim=8, extractor="test") as writer:
        with pytest.raises(FeatureStoreError, match=re.escape(f"{path}: image 'img': boxes must be normalised "
                                                              "to [0, 1]") + ".*region 0 has x1 = 10"):
            writer.add("img", features, pixel_boxes, width=500, height=375)
        writer.add("ok", features, pixel_boxes / [500, 375, 500, 375], width=500, height=375)
        # rounding at the border stays within the tolerance
        writer.add("edge", features, np.array([[0, 0, 1.004, 1], [-0.003, 0, 0.5, 0.5]]), width=500, height=375)
        with pytest.raises(FeatureStoreError, match="image 'flipped': boxes must be corners"):
            writer.add("flipped", features, np.array([[0.5, 0, 0.1, 1], [0, 0, 1, 1]]), width=5, height=5)


def test_reader_refuses_pixel_boxes(tmp_path):
    features, _ = regions(count=2)
    path = hand_written_store(tmp_path / "pixels.h5", features, np.array([[10, 20, 300, 200]] * 2, np.float32))
    with pytest.raises(FeatureStoreError, match=re.escape(f"{path}: image 'img': boxes must be normalised")):
        FeatureStore(str(path)).get("img")


def test_converters_never_write_boxes_outside_the_image(tmp_path):
    from vlp_mmt_fairseq.features.detector_outputs import ConversionError, DetectedImage, write_detections

    features, _ = regions(count=2)

    def image(boxes, width=500, height=375):
        return DetectedImage("img", features, np.array(boxes, np.float32), width, height, where="det.tsv:1")

    path = tmp_path / "s.h5"
    assert write_detections(str(path), [image([[10, 20, 300, 200], [0, 0, 500, 375]])]) == 1
    np.testing.assert_allclose(FeatureStore(str(path)).get("img").boxes[0], [10 / 500, 20 / 375, 300 / 500, 200 / 375])
    path.unlink()
    for boxes, width, height, problem in (
        ([[10, 20, 300, 200], [0, 0, 500, 450]], 500, 375, "lies outside the 500 x 375 image"),
        ([[10, 20, 300, 200], [0, 0, 500, 375]], 375, 500, "lies outside the 375 x 500 image (width and height"),
        ([[0.1, 0.2, 0.6, 0.5], [0, 0, 1, 1]], 500, 375, "look normalised already"),
    ):
        with pytest.raises(ConversionError, match=re.escape("det.tsv:1: ") + ".*" + re.escape(problem)):
            write_detections(str(path), [image(boxes, width, height)])
        assert not path.exists()


# --------------------------------------------------------------------------- format versions


def first_data_offset(path, key, name="features"):
    with h5py.File(path, "r") as h5:
        ds = h5[key][name]
        return ds.id.get_chunk_info(0).byte_offset if ds.chunks else ds.id.get_offset()


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_version_2_detects_a_flipped_feature_byte(tmp_path):
    path = write_store(tmp_path / "s.h5")
    with h5py.File(path, "r") as h5:
        assert h5.attrs["version"] == 2 and all(h5["a"][n].fletcher32 for n in ("features", "boxes", "scores"))
    flip_byte(path, first_data_offset(path, "a") + 3)
    store = FeatureStore(str(path))
    with pytest.raises(FeatureStoreError, match=re.escape(f"{path}: image 'a': unreadable entry")):
        store.get("a")
    assert store.get("b").features.shape == (4, 8)  # the other images stay readable


def test_version_1_stays_readable_and_is_unchecked(tmp_path):
    path = tmp_path / "v1.h5"
    features, boxes = regions()
    with FeatureStoreWriter(str(path), feature_dim=8, extractor="old", version=1) as writer:
        writer.add("a", features, boxes, width=640, height=480)
    store = FeatureStore(str(path))
    assert store.version == 1 and store.extractor == "old"
    np.testing.assert_array_equal(store.get("a").features, features.astype(np.float16))
    store.close()
    flip_byte(path, first_data_offset(path, "a") + 3)  # version 1 has no checksum: the flip goes unnoticed
    assert not np.array_equal(FeatureStore(str(path)).get("a").features, features.astype(np.float16))


def test_newer_version_is_refused(tmp_path):
    path = write_store(tmp_path / "s.h5")
    with h5py.File(path, "r+") as h5:
        h5.attrs["version"] = 3
    message = f"{path}: format version 3; this reader reads versions 1, 2"
    with pytest.raises(FeatureStoreError, match=re.escape(message)):
        FeatureStore(str(path))


# --------------------------------------------------------------------------- concurrent readers and writers

READER = r"""
import hashlib, sys
import torch
from vlp_mmt_fairseq.data.feature_store import FeatureStore

class Images(torch.utils.data.Dataset):
    def __init__(self, store, keys):
        self.store, self.keys = store, keys
    def __len__(self):
        return len(self.keys)
    def __getitem__(self, i):
        item = self.store.get(self.keys[i])
        return self.keys[i], item.features.tobytes() + item.boxes.tobytes() + item.tag_scores.tobytes()

store = FeatureStore(sys.argv[1])
keys = sorted(store.keys())
digest = hashlib.sha1()
for _ in range(3):
    loader = torch.utils.data.DataLoader(Images(store, keys), batch_size=None, num_workers=2)
    for key, data in sorted(loader):
        digest.update(key.encode() + data)
print(digest.hexdigest())
"""


@pytest.mark.slow
def test_concurrent_readers_with_dataloader_workers_read_the_same_values(tmp_path):
    import hashlib
    import subprocess
    import sys

    path = write_store(tmp_path / "s.h5", keys=[f"img{i}" for i in range(40)])
    store = FeatureStore(str(path))
    expected = hashlib.sha1()
    for _ in range(3):
        for key in sorted(store.keys()):
            item = store.get(key)
            expected.update(key.encode() + item.features.tobytes() + item.boxes.tobytes() + item.tag_scores.tobytes())
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [reader.communicate(timeout=300) for reader in readers]
    assert [r.returncode for r in readers] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [expected.hexdigest()] * 2


def test_a_store_replaced_while_in_use_is_an_error_in_the_workers(tmp_path):
    import torch

    path = write_store(tmp_path / "s.h5", keys=["a", "b"])
    store = FeatureStore(str(path))  # opened here: the workers reopen it lazily
    write_store(path, keys=["a", "b"], dim=8)  # another writer publishes a new file at the same path
    loader = torch.utils.data.DataLoader(["a"], batch_size=None, num_workers=1, collate_fn=lambda k: store.get(k))
    with pytest.raises(FeatureStoreError, match=re.escape(f"{path}: the store was replaced by another file")):
        list(loader)


@pytest.mark.slow
def test_a_store_still_being_written_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "s.h5"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, h5py, numpy as np\n"
         "f = h5py.File(sys.argv[1], 'w'); f.attrs['format'] = 'vlp_mmt_features'\n"
         "f.create_dataset('x', data=np.zeros(1000)); f.flush(); print('writing', flush=True); sys.stdin.read()",
         str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        with pytest.raises(FeatureStoreError, match=re.escape(f"{path}: the store is being written by another "
                                                              "process")):
            FeatureStore(str(path))
    finally:
        writer.communicate("")
    # FeatureStoreWriter publishes atomically: while it writes, the path is absent and the error says why
    with FeatureStoreWriter(str(tmp_path / "t.h5"), feature_dim=8, extractor="test") as unfinished:
        unfinished.add("a", *regions(), width=1, height=1)
        with pytest.raises(FeatureStoreError, match=re.escape(f"{tmp_path / 't.h5'}: feature store not found "
                                                              "(unfinished output ") + ".*a writer is still writing"):
            FeatureStore(str(tmp_path / "t.h5"))
