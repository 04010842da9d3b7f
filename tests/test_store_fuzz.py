"""Fuzz test: corrupted feature stores, TSV files and .npz files end in a clear error naming the file.

Every case runs in its own forked process (tests/store_fuzz_runner.py), so a crash of libhdf5 is counted and
reported, not fatal to the run. What each class of corruption must end in:

- stores (format version 2): truncation, missing/renamed datasets, wrong dtypes and shapes, NaN/inf, empty tags,
  attributes of the wrong type and out-of-range boxes are refused with a FeatureStoreError naming the file;
  flipped bytes are refused, or change nothing at all (a byte HDF5 does not use); never a silently wrong value;
- converters: refused with an error naming the input file and no output left, or (where the input itself has
  no checksum, e.g. a flipped digit in a TSV's base64) a valid store of the changed values.
"""
import base64
import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest

from vlp_mmt_fairseq.data.feature_store import FeatureStoreWriter

HERE = Path(__file__).resolve().parent
KEYS = [f"k{i}" for i in range(6)]
DIM = 8
CLASSES = ["a", "b", "c", "dog", "tree"]
#: outcomes that are acceptable per class; everything else fails the test
ALLOWED = defaultdict(lambda: {"refused"})
ALLOWED.update({
    "flipped byte (metadata)": {"refused", "no effect"},
    "flipped byte (data)": {"refused", "no effect"},
    "tsv: truncation": {"refused", "no effect", "different values"},
    "tsv: flipped byte": {"refused", "no effect", "different values"},
    "npz: truncation": {"refused", "no effect"},
    "npz: flipped byte": {"refused", "no effect", "different values"},
})


def detections(seed=0):
    """Six images of detector output: pixel boxes, class ids, confidences."""
    rng = np.random.RandomState(seed)
    images = []
    for i, key in enumerate(KEYS):
        regions, width, height = 4 + i % 3, 500 + 10 * i, 375
        x = np.sort(rng.uniform(0, width, size=(regions, 2)), axis=1)
        y = np.sort(rng.uniform(0, height, size=(regions, 2)), axis=1)
        x[0], y[0] = (0, width - 1), (0, height - 1)  # the whole image, as detectors often find it
        images.append({
            "key": key, "width": width, "height": height,
            "features": rng.randn(regions, DIM).astype(np.float32),
            "boxes": np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.float32),
            "ids": rng.randint(len(CLASSES), size=regions).astype(np.int64),
            "conf": rng.uniform(0.1, 1.0, size=regions).astype(np.float32),
        })
    return images


def write_valid_store(path, version=2):
    with FeatureStoreWriter(str(path), feature_dim=DIM, extractor="fuzz", version=version) as writer:
        for i, image in enumerate(detections()):
            scale = np.array([image["width"], image["height"]] * 2, np.float32)
            tags = None if i == 5 else [CLASSES[c] for c in dict.fromkeys(image["ids"].tolist())]
            writer.add(image["key"], image["features"], image["boxes"] / scale, image["width"], image["height"],
                       scores=None if i == 4 else image["conf"], tags=tags,
                       tag_scores=None if tags is None else np.linspace(1, 0.5, len(tags)))
    return path


def data_ranges(path):
    """(offset, size) of every dataset's stored bytes: the chunk (with its checksum) or the contiguous data."""
    ranges = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.size:
                if obj.chunks:
                    info = obj.id.get_chunk_info(0)
                    ranges.append((info.byte_offset, info.size))
                else:
                    ranges.append((obj.id.get_offset(), obj.id.get_storage_size()))
        f.visititems(visit)
    return ranges


class Cases:
    """Writes corrupted copies of an original and records them as runner cases."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.cases = []

    def add(self, cls, original, **case):
        case.update(id=len(self.cases), **{"class": cls, "original": original})
        self.cases.append(case)
        return case

    def path(self, suffix):
        return self.directory / f"case{len(self.cases):04d}{suffix}"


def flipped(data: bytes, offset: int, rng) -> bytes:
    """``data`` with the byte at ``offset`` changed (XOR with a random non-zero value)."""
    changed = bytearray(data)
    changed[offset] ^= int(rng.randint(1, 256))
    return bytes(changed)


def damaged(data: bytes, rng, truncations: int, flips: int):
    """(damage, bytes) pairs: ``data`` cut at up to ``truncations`` random offsets, then ``flips`` times with one
    byte flipped."""
    for offset in sorted(set(rng.randint(1, len(data), size=truncations).tolist())):
        yield "truncation", data[:offset]
    for offset in rng.choice(len(data), size=flips, replace=False):
        yield "flipped byte", flipped(data, offset, rng)


# --------------------------------------------------------------------------- stores


def _rewrite(group, name, data, dtype=None):
    """Replace a dataset, checksummed like the writer's (so the check under test is the semantic one)."""
    if name in group:
        del group[name]
    data = np.asarray(data) if dtype is None else np.asarray(data, dtype=dtype)
    chunked = {"chunks": data.shape, "fletcher32": True} if data.ndim and data.size else {}
    group.create_dataset(name, data=data, **chunked)


def edited_store(cases, original, cls, edit):
    path = cases.path(".h5")
    shutil.copy(original, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    cases.add(cls, "store", kind="store", path=str(path), keys=KEYS)


def store_cases(cases: Cases, original: Path, rng):
    data = open(original, "rb").read()
    size = len(data)

    def byte_case(cls, content):
        path = cases.path(".h5")
        path.write_bytes(content)
        cases.add(cls, "store", kind="store", path=str(path), keys=KEYS)

    for offset in sorted(set(rng.randint(1, size, size=40).tolist()) | {0, 8, 48, size // 2, size - 1}):
        byte_case("truncation", data[:offset])
    in_data = np.zeros(size, bool)
    for offset, length in data_ranges(original):
        in_data[offset:offset + length] = True
    for cls, where in (("flipped byte (metadata)", np.flatnonzero(~in_data)), ("flipped byte (data)",
                                                                              np.flatnonzero(in_data))):
        for offset in rng.choice(where, size=min(len(where), 70 if "metadata" in cls else 40), replace=False):
            byte_case(cls, flipped(data, offset, rng))

    def f32(name):
        return lambda g: g[name][()].astype(np.float32)

    edits = []
    for key in ("k0", "k3"):
        for name in ("features", "boxes", "tag_scores"):
            edits.append(("missing dataset", lambda f, k=key, n=name: f[k].__delitem__(n)))
        for attr in ("width", "height"):
            edits.append(("missing dataset", lambda f, k=key, a=attr: f[k].attrs.__delitem__(a)))
    for attr in ("format", "version", "feature_dim", "max_regions", "extractor"):
        edits.append(("missing dataset", lambda f, a=attr: f.attrs.__delitem__(a)))
    for name in ("features", "boxes", "scores", "tags", "tag_scores"):
        edits.append(("renamed dataset", lambda f, n=name: f["k0"].move(n, n + "_old")))
    edits.append(("renamed dataset", lambda f: f.move("k1", "k1_renamed")))
    edits.append(("renamed dataset", lambda f: f.move("k1/tags", "k2/tags_of_k1")))
    for name, dtype in (("features", np.int32), ("features", np.float64), ("boxes", np.float64),
                        ("boxes", np.int32), ("scores", np.int64), ("scores", np.float16),
                        ("tag_scores", np.float64), ("tags", np.int32)):
        def change_dtype(f, n=name, d=dtype):
            values = f["k0"][n][()]
            _rewrite(f["k0"], n, np.arange(len(values)) if values.dtype.kind in "SO" else values, d)
        edits.append(("wrong dtype", change_dtype))
    edits.append(("wrong dtype", lambda f: _rewrite(f["k0"], "features", f["k0"]["features"][()].astype("S4"))))
    edits.append(("wrong dtype", lambda f: _rewrite(f["k0"], "tag_scores", np.array([b"x"] * 2))))
    shapes = [
        ("features", lambda a: a.reshape(-1)), ("features", lambda a: a[None]), ("features", lambda a: a[:, :-1]),
        ("features", lambda a: a[:-1]), ("boxes", lambda a: a[:, :3]), ("boxes", lambda a: a[..., None]),
        ("boxes", lambda a: a[:-1]), ("scores", lambda a: a[:-1]), ("scores", lambda a: np.append(a, a[:1])),
        ("tag_scores", lambda a: np.append(a, a[:1])), ("tags", lambda a: a[None]), ("features", lambda a: a[:0]),
    ]
    for name, reshape in shapes:
        edits.append(("wrong shape", lambda f, n=name, r=reshape: _rewrite(f["k0"], n, r(f["k0"][n][()]))))

    def poke(name, value, index=(0, 0)):
        def edit(f):
            values = f["k2"][name][()].copy()
            values[index if values.ndim == 2 else index[0]] = value
            _rewrite(f["k2"], name, values)
        return edit

    for name, value in (("features", np.nan), ("features", np.inf), ("features", -np.inf), ("boxes", np.nan),
                        ("boxes", np.inf), ("scores", np.nan), ("tag_scores", np.nan), ("tag_scores", np.inf)):
        edits.append(("NaN or inf", poke(name, value)))
    for tag in ("", "   ", "\t"):
        def empty_tag(f, t=tag):
            tags = [t.encode()] + list(f["k2"]["tags"][()][1:])
            width = max(max(len(x) for x in tags), 1)
            _rewrite(f["k2"], "tags", np.array(tags, dtype=h5py.string_dtype("utf-8", width)))
        edits.append(("empty tag", empty_tag))
    for name, value in (("boxes", 300.0), ("boxes", -0.5), ("boxes", 1.2)):
        edits.append(("box outside [0, 1]", poke(name, value, (1, 2))))
    edits.append(("box outside [0, 1]", lambda f: _rewrite(f["k2"], "boxes", f["k2"]["boxes"][()][:, [2, 3, 0, 1]])))
    edits.append(("box outside [0, 1]", lambda f: _rewrite(
        f["k2"], "boxes", f["k2"]["boxes"][()] * np.float32([500, 375, 500, 375]))))

    def set_attr(obj, name, value):
        return lambda f: f[obj].attrs.__setitem__(name, value) if obj != "/" else f.attrs.__setitem__(name, value)

    for obj, name, value in (("k1", "width", "640"), ("k1", "width", 1.5), ("k1", "width", -1), ("k1", "height", 0),
                             ("k1", "height", np.array([1, 2])), ("k1", "width", True),
                             ("/", "version", "2"), ("/", "version", 3), ("/", "version", 2.0),
                             ("/", "feature_dim", "8"), ("/", "feature_dim", 0), ("/", "feature_dim", 16),
                             ("/", "format", "other"), ("/", "format", 5), ("/", "extractor", 7),
                             ("/", "max_regions", "x"), ("/", "max_regions", 2)):
        edits.append(("attribute of wrong type", set_attr(obj, name, value)))
    edits.append(("attribute of wrong type", lambda f: f.attrs.__setitem__("extractor", np.arange(3))))
    for cls, edit in edits:
        edited_store(cases, original, cls, edit)


# --------------------------------------------------------------------------- converters


def b64(array):
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def tsv_line(image, **override):
    image = {**image, **override}
    regions = len(image["features"])
    cols = [image["key"], str(image["height"]), str(image["width"]), b64(image["ids"]), b64(image["conf"]),
            b64(np.zeros(regions, np.int64)), b64(np.zeros(regions, np.float32)), str(regions),
            b64(image["boxes"]), b64(image["features"])]
    return "\t".join(cols) + "\n"


def converter_cases(cases: Cases, directory: Path, rng):
    vocab = directory / "objects_vocab.txt"
    vocab.write_text("\n".join(CLASSES) + "\n")
    images = detections(seed=1)
    tsv = directory / "original.tsv"
    tsv.write_text("".join(tsv_line(image) for image in images))
    originals = {"tsv": {"kind": "tsv", "input": str(tsv), "vocab": str(vocab), "keys": KEYS,
                         "output": str(directory / "original_tsv.h5")}}

    def tsv_case(cls, text=None, raw=None, vocab_text=None):
        path = cases.path(".tsv")
        path.write_bytes(raw if raw is not None else text.encode())
        case_vocab = vocab
        if vocab_text is not None:
            case_vocab = cases.path(".vocab")
            case_vocab.write_text(vocab_text)
        cases.add(cls, "tsv", kind="tsv", input=str(path), vocab=str(case_vocab), keys=KEYS,
                  output=str(cases.path(".out.h5")), names=str(case_vocab if vocab_text is not None else path))

    for damage, raw in damaged(tsv.read_bytes(), rng, truncations=25, flips=40):
        tsv_case(f"tsv: {damage}", raw=raw)
    first = images[0]
    lines = [tsv_line(image) for image in images]

    def with_first(cls, line):
        tsv_case(cls, text=line + "".join(lines[1:]))

    with_first("tsv: wrong shape", tsv_line(first).replace("\t", "\t\t", 1))
    with_first("tsv: wrong shape", "\t".join(tsv_line(first).split("\t")[:9]) + "\n")
    with_first("tsv: wrong shape", tsv_line(first, features=first["features"][:, :-1]))
    with_first("tsv: wrong shape", tsv_line(first, boxes=first["boxes"][:-1]))
    with_first("tsv: wrong dtype", tsv_line(first, features=first["features"].astype(np.float64)[:, :3]))
    with_first("tsv: wrong dtype", tsv_line(first, ids=first["ids"].astype(np.int32)))
    bad = first["features"].copy()
    bad[1, 2] = np.nan
    with_first("tsv: NaN or inf", tsv_line(first, features=bad))
    bad = first["boxes"].copy()
    bad[0, 1] = np.inf
    with_first("tsv: NaN or inf", tsv_line(first, boxes=bad))
    with_first("tsv: box outside the image", tsv_line(first, width=first["height"], height=first["width"]))
    with_first("tsv: box outside the image", tsv_line(first, boxes=first["boxes"] * 3))
    with_first("tsv: box outside the image", tsv_line(first, boxes=first["boxes"] / first["width"]))
    with_first("tsv: attribute of wrong type", tsv_line(first, width="500.5"))
    with_first("tsv: attribute of wrong type", tsv_line(first, height="-375"))
    with_first("tsv: attribute of wrong type", tsv_line(first, ids=first["ids"] + 100))
    tsv_case("tsv: empty tag", text="".join(lines), vocab_text="a\n \nc\ndog\ntree\n")

    npz_dir = directory / "original_npz"
    npz_dir.mkdir()

    def save_npz(path, image, **override):
        fields = {"x": image["features"], "bbox": image["boxes"], "image_w": image["width"],
                  "image_h": image["height"], "objects_id": image["ids"], "objects_conf": image["conf"]}
        fields.update(override)
        np.savez(path, **{k: v for k, v in fields.items() if v is not None})

    for image in images:
        save_npz(npz_dir / f"{image['key']}.npz", image)
    originals["npz"] = {"kind": "npz", "input": str(npz_dir), "vocab": str(vocab), "keys": KEYS,
                        "output": str(directory / "original_npz.h5")}

    def npz_case(cls, content=None, **override):
        case_dir = cases.path("_npz")
        shutil.copytree(npz_dir, case_dir)
        target = case_dir / "k0.npz"
        if content is not None:
            target.write_bytes(content)
        else:
            save_npz(target, first, **override)
        cases.add(cls, "npz", kind="npz", input=str(case_dir), vocab=str(vocab), keys=KEYS,
                  output=str(cases.path(".out.h5")), names=str(target))

    for damage, content in damaged((npz_dir / "k0.npz").read_bytes(), rng, truncations=12, flips=25):
        npz_case(f"npz: {damage}", content=content)
    npz_case("npz: missing dataset", x=None)
    npz_case("npz: missing dataset", bbox=None)
    npz_case("npz: missing dataset", image_w=None)
    npz_case("npz: renamed dataset", x=None, features_renamed=first["features"])
    npz_case("npz: wrong dtype", x=first["features"].astype("S8"))
    npz_case("npz: wrong dtype", objects_id=first["ids"].astype(np.float32))
    npz_case("npz: wrong shape", x=first["features"].reshape(-1))
    npz_case("npz: wrong shape", bbox=first["boxes"][:, :3])
    npz_case("npz: wrong shape", objects_conf=first["conf"][:-1])
    bad = first["features"].copy()
    bad[0, 0] = np.inf
    npz_case("npz: NaN or inf", x=bad)
    npz_case("npz: NaN or inf", objects_conf=np.full(len(first["conf"]), np.nan, np.float32))
    npz_case("npz: empty tag", objects_id=None, object_names=np.array(["dog", ""] + ["a"] * (len(first["ids"]) - 2)))
    npz_case("npz: box outside the image", image_w=first["height"], image_h=first["width"])
    npz_case("npz: box outside the image", bbox=first["boxes"] / first["width"])
    npz_case("npz: attribute of wrong type", image_w="wide")
    npz_case("npz: attribute of wrong type", image_w=np.array([500, 2]))
    return originals


def run_fuzz(tmp_path):
    rng = np.random.RandomState(13)
    cases = Cases(tmp_path / "cases")
    cases.directory.mkdir()
    original = write_valid_store(tmp_path / "original.h5")
    store_cases(cases, original, rng)
    originals = {"store": {"kind": "store", "path": str(original), "keys": KEYS}}
    originals.update(converter_cases(cases, tmp_path, rng))
    spec_path, results_path = tmp_path / "cases.json", tmp_path / "results.json"
    spec_path.write_text(json.dumps({"originals": originals, "cases": cases.cases}))
    subprocess.run([sys.executable, str(HERE / "store_fuzz_runner.py"), str(spec_path), str(results_path)],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(results_path.read_text())


def summary(results):
    """Lines ``class: N cases: outcome n, ...`` (what docs/feature_store.md reports)."""
    by_class = defaultdict(Counter)
    for r in results:
        by_class[r["class"]][r["outcome"]] += 1
    return [f"{cls}: {sum(c.values())} cases: " + ", ".join(f"{o} {n}" for o, n in sorted(c.items()))
            for cls, c in by_class.items()]


@pytest.mark.slow
def test_fuzzed_stores_and_converter_inputs_are_refused_by_name(tmp_path):
    results = run_fuzz(tmp_path)
    lines = summary(results)
    print("\n".join([f"{len(results)} fuzz cases"] + lines))
    assert len(results) >= 200
    bad = [r for r in results if r["outcome"] not in ALLOWED[r["class"]]]
    assert not bad, "\n".join(lines + [json.dumps(r) for r in bad[:20]])
    crashes = [r for r in results if r["outcome"] in ("crash", "hang")]
    assert not crashes, f"libhdf5 crashed or hung in {len(crashes)} cases: {crashes[:5]}"
    # the checksums are what catches flipped data bytes: none of them goes unnoticed
    assert all(r["outcome"] == "refused" for r in results if r["class"] == "flipped byte (data)")
