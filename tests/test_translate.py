"""From raw images to translations: a tiny model trained on EfficientNet-Lite0 features of the 10 COCO photos,
exported as a model directory, translates identically through vlp-mmt-translate, the Python API and
fairseq-generate; stores of another size or extractor stop with a message naming both."""
import gzip
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils import SHARED_DIR, USER_DIR, run_cli
from vlp_mmt_fairseq.data.feature_store import FeatureStore, FeatureStoreWriter

COCO_IMAGES = SHARED_DIR / "bottom-up-attention" / "images"
BIN = Path(sys.executable).parent
WORDS = [("dog", "Hund"), ("cat", "Katze"), ("man", "Mann"), ("woman", "Frau"), ("bus", "Bus"), ("tree", "Baum"),
         ("ball", "Ball"), ("bed", "Bett"), ("truck", "Lastwagen"), ("skier", "Skifahrer")]
OPTIM = ["--optimizer", "adam", "--lr", "3e-3", "--max-tokens", "800", "--num-workers", "0", "--cpu", "--seed", "1",
         "--no-epoch-checkpoints", "--disable-validation", "--log-format", "json", "--log-interval", "10"]


def write_corpus(root: Path, images):
    """A Multi30K-layout corpus over the COCO photos: train (120 pairs), valid and test (one per photo)."""
    rng = random.Random(0)
    (root / "raw").mkdir(parents=True)
    (root / "image_splits").mkdir()
    for split, count in (("train", 120), ("val", 10), ("test_2016_flickr", 10)):
        en, de, names = [], [], []
        for i in range(count):
            a, b = rng.choice(WORDS), rng.choice(WORDS)
            en.append(f"a {a[0]} and a {b[0]} are here .")
            de.append(f"ein {a[1]} und ein {b[1]} sind hier .")
            names.append(images[i % len(images)])
        for lang, lines in (("en", en), ("de", de)):
            with gzip.open(root / "raw" / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        (root / "image_splits" / f"{split}.txt").write_text("\n".join(names) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_no_dropout_dir):
    """(store, data dir, checkpoint, model dir, test pairs) of a tiny model trained on the COCO photos."""
    root = tmp_path_factory.mktemp("from_images")
    store = root / "coco.h5"
    run_cli([BIN / "vlp-mmt-extract-features", COCO_IMAGES, "--output", store, "--batch-size", 1, "--threads", 1,
             "--no-progress"])
    images = sorted(p.name for p in COCO_IMAGES.glob("*.jpg"))
    write_corpus(root / "corpus", images)
    run_cli([BIN / "vlp-mmt-prepare-multi30k", "--multi30k-dir", root / "corpus", "--src", "en", "--tgt", "de",
             "--out", root / "data", "--bert-model", tiny_bert_no_dropout_dir, "--spm-vocab-size", 320,
             "--spm-vocab-size-src", 320])
    save = root / "ckpt"
    run_cli(["fairseq-train", root / "data" / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt", "--arch",
             "vlp_mmt_tiny", "--criterion", "vlp_mmt_loss", "--bert-model", tiny_bert_no_dropout_dir,
             "--image-features", store, "--max-regions", 49, "--save-dir", save, "--max-update", 40, *OPTIM])
    model_dir = root / "model"
    run_cli([BIN / "vlp-mmt-export-model", save / "checkpoint_last.pt", "--data", root / "data" / "bert", "--out",
             model_dir])
    sources = (root / "data" / "raw" / "test2016.en").read_text().splitlines()
    pairs = list(zip(sources, [str(COCO_IMAGES / name) for name in images]))
    return store, root / "data", save / "checkpoint_last.pt", model_dir, pairs, tiny_bert_no_dropout_dir


def generate(data, checkpoint, bert, store, *extra, check=True):
    args = ["fairseq-generate", data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt", "--bert-model", bert,
            "--image-features", store, "--max-regions", 49, "--path", checkpoint, "--gen-subset", "test2016",
            "--beam", 4, "--batch-size", 1, "--post-process", "sentencepiece", "--cpu", *extra]
    if not check:
        return subprocess.run(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = run_cli(args).stdout
    hypotheses = {}
    for line in out.splitlines():
        if line.startswith("H-"):
            number, _, text = line.split("\t", 2)
            hypotheses[int(number[2:])] = text
    return [hypotheses[i] for i in range(len(hypotheses))]


@pytest.mark.slow
def test_translate_cli_python_api_and_generate_agree(trained):
    store, data, checkpoint, model_dir, pairs, bert = trained
    generated = generate(data, checkpoint, bert, store)
    assert len(generated) == 10 and any(generated)
    lines = "".join(f"{source}\t{image}\n" for source, image in pairs)
    # the command line, from the image files through the recorded built-in extractor
    result = subprocess.run([str(BIN / "vlp-mmt-translate"), str(model_dir), "--beam", "4", "--batch-size", "1",
                             "--extract-batch-size", "1", "--threads", "1"], input=lines,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.splitlines() == generated
    assert "sentences/s" in result.stderr
    # the command line, from the store by key, batched
    keyed = "".join(f"{source}\t{Path(image).name}\n" for source, image in pairs)
    result = subprocess.run([str(BIN / "vlp-mmt-translate"), str(model_dir), "--image-features", str(store),
                             "--beam", "4", "--batch-size", "1", "--buffer-size", "3"], input=keyed,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.splitlines() == generated

    # the Python API: paths, store keys and ready features
    from vlp_mmt_fairseq.models.vlp_mmt import VlpMmtModel

    hub = VlpMmtModel.from_pretrained(str(model_dir), image_features=str(store), batch_size=1, extract_batch_size=1)
    sources = [source for source, _ in pairs]
    assert hub.translate(sources, images=[image for _, image in pairs], beam=4) == generated
    keys = [Path(image).stem for _, image in pairs]
    assert hub.translate(sources, images=keys, beam=4) == generated
    features = FeatureStore(str(store), max_regions=49)
    assert hub.translate(sources, images=[features.get(k) for k in keys], beam=4) == generated
    assert hub.translate(sources[0], images=keys[0], beam=4) == generated[0]


def _store_like(path, store, dim, extractor):
    """The same keys as ``store``, with random features of size ``dim`` and another extractor string."""
    rng = np.random.default_rng(0)
    source = FeatureStore(str(store))
    with FeatureStoreWriter(str(path), feature_dim=dim, extractor=extractor) as writer:
        for key in source.keys():
            item = source.get(key)
            writer.add(key, rng.standard_normal((len(item.boxes), dim)).astype(np.float32), item.boxes,
                       width=item.width, height=item.height, tags=item.tags, tag_scores=item.tag_scores)
    return path


@pytest.mark.slow
def test_a_store_of_another_size_or_extractor_stops(trained, tmp_path):
    store, data, checkpoint, model_dir, pairs, bert = trained
    recorded = FeatureStore(str(store)).extractor
    smaller = _store_like(tmp_path / "small.h5", store, 64, "synthetic 64")
    other = _store_like(tmp_path / "other.h5", store, 1280, "my detector v2")
    # fairseq-generate with a store of another size (before the record: a raw size-mismatch traceback)
    result = generate(data, checkpoint, bert, smaller, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stdout, result.stdout[-3000:]
    assert f"trained on features of size D = 1280 from extractor '{recorded}'" in errors[0]
    assert "D = 64 from extractor 'synthetic 64'" in errors[0] and str(smaller) in errors[0]
    # vlp-mmt-translate with a store of the same size from another extractor
    result = subprocess.run([str(BIN / "vlp-mmt-translate"), str(model_dir), "--image-features", str(other)],
                            input=f"{pairs[0][0]}\tCOCO_train2014_000000084002\n", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
    assert f"D = 1280 from extractor '{recorded}'" in errors[0]
    assert "D = 1280 from extractor 'my detector v2'" in errors[0]
    # resuming training with it
    resumed = tmp_path / "resume"
    resumed.mkdir()
    (resumed / "checkpoint_last.pt").write_bytes(Path(checkpoint).read_bytes())
    result = subprocess.run(list(map(str, [
        "fairseq-train", data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt", "--arch", "vlp_mmt_tiny",
        "--criterion", "vlp_mmt_loss", "--bert-model", bert, "--image-features", other, "--max-regions", 49,
        "--save-dir", resumed, "--max-update", 45, *OPTIM])), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    assert result.returncode != 0
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stdout[-3000:]
    assert recorded in errors[0] and "my detector v2" in errors[0]
