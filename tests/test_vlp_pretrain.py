"""Vision-language pre-training (task vlp_pretrain), --load-vlp and the Hugging Face export.

The planted-structure run trains with the real fairseq-train on a synthetic corpus whose images
determine some caption words (tests/synthetic_captions.py), then evaluates the
checkpoint in process on held-out images.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.data import data_utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import synthetic_captions as planted
from utils import REPO_ROOT, USER_DIR, console_script, run_cli
from vlp_mmt_fairseq.data.bert_dictionary import BERT_SPECIALS

# one thread per process: the CI machine has 2 cores and the test runs one trainer at a time
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small_bert_dir(tmp_path_factory) -> Path:
    """A random 2-layer BERT of width 64 whose WordPiece vocabulary is the planted corpus's words.

    A small vocabulary keeps the masked-LM softmax and the embedding updates cheap on CPU; the
    tokenizer is an ordinary BertTokenizer over this vocab.txt.
    """
    from transformers import BertConfig, BertModel

    out = tmp_path_factory.mktemp("small_bert")
    words = {w for template in planted.TEMPLATES for w in template.split() if not w.startswith("{")}
    words |= set(planted.OBJECTS + planted.PLACES + planted.COLORS + planted.DISTRACTOR_TAGS)
    words |= set(planted.PLACE_TAGS.values())
    fillers = ["man", "woman", "child", "table", "chair", "house", "window", "door", "flower", "ball", "hat",
               "shirt", "bag", "bike", "train", "bus"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words) + fillers
    assert set(BERT_SPECIALS) <= set(vocab)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def planted_corpus(tmp_path_factory, small_bert_dir):
    """The planted corpus as text + features.h5, and binarized by vlp-mmt-prepare-captions."""
    root = tmp_path_factory.mktemp("planted")
    images = planted.write_planted_corpus(str(root / "corpus"), PLANTED_SPLITS, feature_dim=32, num_regions=6,
                                          places=PLANTED_PLACES)
    run_cli([console_script("vlp-mmt-prepare-captions"),
             "--captions", root / "corpus" / "train.captions.txt", root / "corpus" / "valid.captions.txt",
             "--images", root / "corpus" / "train.images.txt", root / "corpus" / "valid.images.txt",
             "--split", "train", "valid", "--out", root / "data", "--bert-model", small_bert_dir])
    return {"root": root, "data": root / "data", "features": root / "corpus" / "features.h5", "images": images}


PLANTED_SPLITS = {"train": (800, 4), "valid": (150, 2)}
PLANTED_PLACES = planted.PLACES


def setup_pretrain_task(data, features, bert_dir, *extra):
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--user-dir", USER_DIR, "--task", "vlp_pretrain", "--arch", "vlp_pretrain_tiny",
        "--criterion", "vlp_pretrain_loss", "--bert-model", str(bert_dir), "--image-features", str(features),
        "--max-regions", "6", "--seed", "1", *map(str, extra),
    ])
    cfg = convert_namespace_to_omegaconf(args)
    return tasks.setup_task(cfg.task), cfg


# ----------------------------------------------------------------------------- batches


def image_row_of(batch, samples):
    """Which sample's image each row got, recognised by its region features (its own first)."""
    by_features = {}
    for j in reversed(range(len(samples))):
        by_features[samples[j]["image"]["features"].numpy().tobytes()] = j
    rows = []
    for i, s in enumerate(samples):
        regions = batch["net_input"]["region_features"][i, : int(batch["net_input"]["region_mask"][i].sum())]
        j = i if torch.equal(regions, s["image"]["features"]) else by_features.get(regions.numpy().tobytes())
        assert j is not None, f"row {i}: regions of no sample in the batch"
        rows.append(j)
    return rows


@pytest.mark.slow
def test_batches_mask_text_and_tags_and_swap_whole_images(planted_corpus, small_bert_dir):
    task, _ = setup_pretrain_task(planted_corpus["data"], planted_corpus["features"], small_bert_dir)
    task.load_dataset("train")
    dataset, d = task.dataset("train"), task.dictionary
    mask = d.index("[MASK]")
    rng = np.random.default_rng(0)
    counts = dict(maskable=0, selected=0, to_mask=0, kept=0, tag_selected=0, rows=0, negatives=0)
    for _ in range(12):
        samples = [dataset[int(i)] for i in rng.choice(len(dataset), size=64, replace=False)]
        batch = dataset.collater(samples)
        net, target = batch["net_input"], batch["target"]
        width = net["src_tokens"].size(1)
        # the original text: the caption, then the tags of the image the row got
        image_rows = image_row_of(batch, samples)
        original = data_utils.collate_tokens([s["caption"] for s in samples], d.pad(), left_pad=False)
        tags = data_utils.collate_tokens([samples[j]["image"]["tags"] for j in image_rows], d.pad(), left_pad=False)
        text = torch.cat([original, tags[:, : net["tag_tokens"].size(1)]], dim=1)
        masked_text = torch.cat([net["src_tokens"], net["tag_tokens"]], dim=1)
        assert torch.equal(net["tag_tokens"].ne(d.pad()), tags.ne(d.pad())), "tags swap with their image"
        for i, j in enumerate(image_rows):
            label = int(batch["pair_label"][i])
            assert label == int(i == j)
            if label == 0:
                assert samples[i]["key"] != samples[j]["key"]  # a random image with a different key
                assert target[i].eq(d.pad()).all()  # a random image: nothing to predict
        maskable = text.ne(d.pad()) & text.ne(d.bos()) & text.ne(d.eos())
        positive = batch["pair_label"].bool()[:, None]
        # positions that differ from the original were selected; selected ones are predicted
        changed = masked_text.ne(text)
        assert not (changed & ~maskable).any(), "specials and padding never change"
        selected = target.ne(d.pad())
        assert torch.equal(target[selected], text[selected])
        assert not (changed & positive & ~selected).any()
        counts["maskable"] += int((maskable & positive).sum())
        counts["selected"] += int(selected.sum())
        counts["to_mask"] += int((selected & masked_text.eq(mask)).sum())
        counts["kept"] += int((selected & ~changed).sum())
        counts["tag_selected"] += int(selected[:, width:].sum())
        counts["rows"] += len(samples)
        counts["negatives"] += int((batch["pair_label"] == 0).sum())
    assert abs(counts["selected"] / counts["maskable"] - 0.15) < 0.03
    assert abs(counts["to_mask"] / counts["selected"] - 0.8) < 0.07
    assert abs(counts["kept"] / counts["selected"] - 0.1) < 0.06
    assert counts["tag_selected"] > 0.1 * counts["selected"]  # tags are masked too
    assert abs(counts["negatives"] / counts["rows"] - 0.5) < 0.07

    # the same batch of the same epoch is the same; the next epoch masks and pairs anew
    samples = [dataset[i] for i in range(100, 164)]
    first, again = dataset.collater(samples), dataset.collater(samples)
    assert torch.equal(first["target"], again["target"]) and torch.equal(first["pair_label"], again["pair_label"])
    dataset.set_epoch(2)
    assert not torch.equal(first["target"], dataset.collater(samples)["target"])

    # a batch of one image's captions cannot have negatives
    one_image = [dataset[i] for i in range(len(dataset)) if dataset.images.key(i) == samples[0]["key"]]
    assert len(one_image) == PLANTED_SPLITS["train"][1]
    assert dataset.collater(one_image)["pair_label"].eq(1).all()

    # --mask-caption-only never selects a tag; reading every image from the file changes nothing
    task, _ = setup_pretrain_task(planted_corpus["data"], planted_corpus["features"], small_bert_dir,
                                  "--mask-caption-only", "--image-memory-mb", 0)
    task.load_dataset("train")
    cached = task.dataset("train")
    batch = cached.collater([cached[i] for i in range(100, 164)])
    assert batch["target"][:, batch["net_input"]["src_tokens"].size(1):].eq(d.pad()).all()
    assert batch["target"].ne(d.pad()).any()
    assert torch.equal(batch["net_input"]["region_features"], first["net_input"]["region_features"])


@pytest.mark.slow
def test_several_corpora_read_as_one(planted_corpus, small_bert_dir, tmp_path):
    """``--data A:B`` concatenates the corpora (each with its image index), it does not shard them."""
    import shutil

    second = tmp_path / "second"
    second.mkdir()
    for name in ("valid.en.bin", "valid.en.idx", "valid.img.npy"):
        shutil.copy(planted_corpus["data"] / name, second / name.replace("valid", "train"))
    task, _ = setup_pretrain_task(f"{planted_corpus['data']}:{second}", planted_corpus["features"], small_bert_dir,
                                  "--required-batch-size-multiple", 8)
    assert not task.has_sharded_data("train")
    task.load_dataset("train")
    both = task.dataset("train")
    first_size = PLANTED_SPLITS["train"][0] * PLANTED_SPLITS["train"][1]
    assert len(both) == first_size + PLANTED_SPLITS["valid"][0] * PLANTED_SPLITS["valid"][1]
    item = both[first_size + 5]
    task.load_dataset("valid")
    assert item["id"] == first_size + 5 and item["key"] == task.dataset("valid").images.key(5)
    assert torch.equal(item["caption"], task.dataset("valid")[5]["caption"])
    batches = task.get_batch_iterator(both, max_sentences=50, seed=1).frozen_batches
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(both)))  # no caption lost
    batch = both.collater([both[i] for i in batches[0]])
    assert batch["net_input"]["src_tokens"].size(0) == len(batches[0])


@pytest.mark.slow
def test_masked_predictions_line_up_with_their_positions(planted_corpus, small_bert_dir):
    """Batched MLM logits equal those of each caption run alone, at the caption or tag position."""
    task, cfg = setup_pretrain_task(planted_corpus["data"], planted_corpus["features"], small_bert_dir)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    torch.manual_seed(0)
    model = task.build_model(cfg.model).eval()
    samples = [dataset[i] for i in (0, 7, 33, 80, 120, 200)]
    batch = dataset.collater(samples)
    net, target = batch["net_input"], batch["target"]
    selected = target.ne(task.dictionary.pad())
    assert selected.any()
    with torch.no_grad():
        logits, pair_logits = model(**net, masked_tokens=selected)
        assert logits.shape == (int(selected.sum()), len(task.dictionary)) and pair_logits.shape == (6, 2)
        width = net["src_tokens"].size(1)
        expected = []
        for i, position in selected.nonzero().tolist():
            src = net["src_tokens"][i: i + 1]
            src = src[:, : int(src.ne(task.dictionary.pad()).sum())]
            tags = net["tag_tokens"][i: i + 1]
            tags = tags[:, : int(tags.ne(task.dictionary.pad()).sum())]
            regions = {k: net[k][i: i + 1] for k in ("region_features", "region_boxes", "region_mask")}
            hidden, _, _ = model.encoder.forward_bert(src, tags, **regions)
            packed = position if position < width else src.size(1) + position - width
            expected.append(model.lm_head(hidden[0, packed], model.encoder.bert.get_input_embeddings().weight))
    torch.testing.assert_close(logits, torch.stack(expected), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_masked_lm_head_starts_from_berts_own(planted_corpus, small_bert_dir, tmp_path):
    """A --bert-model saved with its masked-LM head (like bert-base-uncased) gives the head its weights."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig.from_pretrained(small_bert_dir)
    torch.manual_seed(3)
    with_head = BertForMaskedLM(config)
    with_head.save_pretrained(tmp_path / "bert_with_head")
    (tmp_path / "bert_with_head" / "vocab.txt").write_bytes((small_bert_dir / "vocab.txt").read_bytes())
    task, cfg = setup_pretrain_task(planted_corpus["data"], planted_corpus["features"], tmp_path / "bert_with_head")
    model = task.build_model(cfg.model)
    source = with_head.cls.predictions
    assert torch.equal(model.lm_head.dense.weight, source.transform.dense.weight)
    assert torch.equal(model.lm_head.layer_norm.weight, source.transform.LayerNorm.weight)
    assert torch.equal(model.lm_head.bias, source.bias)
    assert torch.equal(model.encoder.bert.embeddings.word_embeddings.weight,
                       with_head.bert.embeddings.word_embeddings.weight)
    task, cfg = setup_pretrain_task(planted_corpus["data"], planted_corpus["features"], small_bert_dir)
    assert not torch.equal(task.build_model(cfg.model).lm_head.dense.weight, source.transform.dense.weight)


# ----------------------------------------------------------------------------- planted structure


def predict_masked_word(model, task, dataset, rows, image_rows, word_ids):
    """Mask each caption's one word of ``word_ids``; return (predicted, gold) ids with the given images."""
    d = task.dictionary
    captions, positions = [], []
    for i in rows:
        caption = dataset.captions[int(i)].long()
        position = int(torch.isin(caption, word_ids).nonzero()[0])
        captions.append(caption)
        positions.append(position)
    src = data_utils.collate_tokens(captions, d.pad(), left_pad=False)
    gold = src[torch.arange(len(rows)), positions]
    src[torch.arange(len(rows)), positions] = d.index("[MASK]")
    images = dataset.images.collater([dataset.images[int(j)] for j in image_rows])
    tags = images.pop("tag_tokens")
    masked = torch.zeros(src.size(0), src.size(1) + tags.size(1), dtype=torch.bool)
    masked[torch.arange(len(rows)), positions] = True
    logits, _ = model(src, tag_tokens=tags, masked_tokens=masked, **images)
    return logits.argmax(-1), gold


def planted_word_accuracy(model, task, dataset, image_rows, words):
    word_ids = torch.tensor([task.dictionary.index(w) for w in words])
    correct = 0
    with torch.no_grad():
        for start in range(0, len(dataset), 100):
            rows = np.arange(start, min(len(dataset), start + 100))
            predicted, gold = predict_masked_word(model, task, dataset, rows, image_rows[rows], word_ids)
            correct += int((predicted == gold).sum())
    return correct / len(dataset)


def other_image_rows(dataset, seed=0):
    """For each caption, a row whose image is another one (a derangement of the images)."""
    keys = np.array([dataset.images.key(i) for i in range(len(dataset))])
    distinct = np.random.default_rng(seed).permutation(np.unique(keys))
    following = {k: distinct[(n + 1) % len(distinct)] for n, k in enumerate(distinct)}
    first_row = {k: i for i, k in reversed(list(enumerate(keys)))}
    rows = np.array([first_row[following[k]] for k in keys])
    assert all(keys[rows] != keys)
    return rows


@pytest.mark.slow
def test_pretraining_learns_the_planted_words_and_the_pairing(planted_corpus, small_bert_dir, tmp_path):
    save_dir = tmp_path / "checkpoints"
    log = run_cli(["fairseq-train", planted_corpus["data"], "--user-dir", USER_DIR, "--task", "vlp_pretrain",
                   "--arch", "vlp_pretrain_tiny", "--criterion", "vlp_pretrain_loss", "--bert-model", small_bert_dir,
                   "--image-features", planted_corpus["features"], "--max-regions", 6,
                   "--optimizer", "adam", "--lr", PLANTED_LR, "--lr-scheduler", "polynomial_decay",
                   "--warmup-updates", 50, "--total-num-update", PLANTED_UPDATES, "--max-update", PLANTED_UPDATES,
                   "--batch-size", 64, "--save-dir", save_dir, "--no-epoch-checkpoints", "--num-workers", 0,
                   "--cpu", "--seed", 1, "--log-format", "json", "--log-interval", 50],
                  env=ONE_THREAD).stdout
    assert '"mlm_loss"' in log and '"mlm_accuracy"' in log and '"pair_loss"' in log and '"pair_accuracy"' in log

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(save_dir / "checkpoint_last.pt")])
    model = models[0].eval()
    task.load_dataset("valid")
    dataset = task.dataset("valid")  # held-out images
    own = np.arange(len(dataset))
    shuffled = other_image_rows(dataset)
    results = {}
    for kind, words in (("object", planted.OBJECTS), ("place", PLANTED_PLACES)):
        results[kind] = planted_word_accuracy(model, task, dataset, own, words)
        results[kind + "_shuffled"] = planted_word_accuracy(model, task, dataset, shuffled, words)
    # pair accuracy on held-out captions, each with its own or a random image (p = 0.5), unmasked
    dataset.mask_prob = 0.0
    correct = total = 0
    with torch.no_grad():
        for epoch in (1, 2):
            dataset.set_epoch(epoch)
            for start in range(0, len(dataset), 100):
                batch = dataset.collater([dataset[i] for i in range(start, min(len(dataset), start + 100))])
                _, pair_logits = model(**batch["net_input"])
                correct += int((pair_logits.argmax(-1) == batch["pair_label"]).sum())
                total += len(batch["pair_label"])
    results["pair"] = correct / total
    print("planted-structure results:", results)
    assert results["object"] >= 0.8 and results["place"] >= 0.8, results
    assert abs(results["object_shuffled"] - 1 / len(planted.OBJECTS)) < 0.1, results
    assert abs(results["place_shuffled"] - 1 / len(PLANTED_PLACES)) < 0.1, results
    assert results["pair"] >= 0.9, results


PLANTED_LR = 3e-3
PLANTED_UPDATES = 800


# ----------------------------------------------------------------------------- --load-vlp and the export


@pytest.fixture(scope="module")
def pretrained_on_mmt_data(toy_data, toy_corpus, tiny_bert_dir, tmp_path_factory) -> Path:
    """Steps 3-4 of Algorithm 1 on a prepared vlp_mmt data dir: its (image, source) pairs, read as they are."""
    save_dir = tmp_path_factory.mktemp("vlp_on_mmt")
    run_cli(["fairseq-train", toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_pretrain",
             "--arch", "vlp_pretrain_tiny", "--criterion", "vlp_pretrain_loss", "--bert-model", tiny_bert_dir,
             "--image-features", toy_corpus / "features.h5", "--max-regions", 6, "--optimizer", "adam",
             "--lr", "1e-3", "--batch-size", 32, "--max-update", 4, "--save-dir", save_dir,
             "--no-epoch-checkpoints", "--num-workers", 0, "--cpu", "--seed", 1], env=ONE_THREAD)
    return save_dir / "checkpoint_last.pt"


def build_vlp_mmt(toy_data, toy_corpus, tiny_bert_dir, *extra):
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(toy_data / "bert"), "--user-dir", USER_DIR, "--task", "vlp_mmt", "--arch", "vlp_mmt_tiny",
        "--criterion", "vlp_mmt_loss", "--bert-model", str(tiny_bert_dir),
        "--image-features", str(toy_corpus / "features.h5"), "--max-regions", "6", *map(str, extra),
    ])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model)


def encoder_weights(checkpoint: Path):
    """The checkpoint's encoder tensors (without ``encoder.``) and its whole model state."""
    from vlp_mmt_fairseq.cli.average_checkpoints import load_checkpoint_safely

    state = load_checkpoint_safely(str(checkpoint))["model"]
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith(("encoder.bert.", "encoder.visual."))}
    return encoder, state


@pytest.mark.slow
def test_load_vlp_copies_the_encoder_tensor_by_tensor(pretrained_on_mmt_data, toy_data, toy_corpus, tiny_bert_dir,
                                                      tmp_path):
    from transformers import BertModel

    pretrained, full_state = encoder_weights(pretrained_on_mmt_data)
    assert any(k.startswith("lm_head.") for k in full_state) and any(k.startswith("pair_head.") for k in full_state)
    initial = BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False).state_dict()
    assert not torch.equal(pretrained["bert.encoder.layer.0.attention.self.query.weight"],
                           initial["encoder.layer.0.attention.self.query.weight"]), "pre-training changed BERT"

    export_dir = tmp_path / "exported"
    model = build_vlp_mmt(toy_data, toy_corpus, tiny_bert_dir, "--load-vlp", pretrained_on_mmt_data,
                          "--export-vlp-bert", export_dir)
    loaded = model.encoder.state_dict()
    assert {k for k in loaded if k.startswith(("bert.", "visual."))} == set(pretrained)
    for name, tensor in pretrained.items():
        assert torch.equal(loaded[name], tensor), name
    assert not any("lm_head" in k or "pair_head" in k for k in model.state_dict())

    # the export is an ordinary BERT with the same outputs, and --load-vlp reads it back
    exported = BertModel.from_pretrained(export_dir).eval()
    model.encoder.bert.eval()
    ids = torch.tensor([[101, 1037, 2417, 3899, 2006, 1996, 3509, 102], [101, 1996, 3899, 102, 0, 0, 0, 0]])
    attention = ids.ne(0).long()
    with torch.no_grad():
        expected = model.encoder.bert(input_ids=ids, attention_mask=attention).last_hidden_state
        got = exported(input_ids=ids, attention_mask=attention).last_hidden_state
    torch.testing.assert_close(got[attention.bool()], expected[attention.bool()], atol=1e-5, rtol=1e-5)
    assert (export_dir / "vocab.txt").exists() and (export_dir / "visual_projection.pt").exists()
    again = build_vlp_mmt(toy_data, toy_corpus, tiny_bert_dir, "--load-vlp", export_dir).encoder.state_dict()
    for name, tensor in pretrained.items():
        assert torch.equal(again[name], tensor), name

    # the command-line export writes the same weights
    cli_dir = tmp_path / "cli_export"
    run_cli([sys.executable, "-m", "vlp_mmt_fairseq.cli.export_bert", pretrained_on_mmt_data, "--out", cli_dir],
            cwd=REPO_ROOT)
    from_cli = BertModel.from_pretrained(cli_dir, add_pooling_layer=False).state_dict()
    for name, tensor in from_cli.items():
        assert torch.equal(tensor, pretrained["bert." + name]), name
    visual = torch.load(cli_dir / "visual_projection.pt", weights_only=True)
    assert visual["feature_dim"] == 32
    for name, tensor in visual["state_dict"].items():
        assert torch.equal(tensor, pretrained["visual." + name]), name
    result = subprocess.run([sys.executable, "-m", "vlp_mmt_fairseq.cli.export_bert", pretrained_on_mmt_data,
                             "--out", cli_dir], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert result.returncode == 1 and "already exists" in result.stderr


@pytest.mark.slow
def test_load_vlp_rejects_an_encoder_of_another_size(pretrained_on_mmt_data, toy_data, toy_corpus, tmp_path):
    from transformers import BertConfig, BertModel

    from vlp_mmt_fairseq.bert_loading import BUNDLED_MINILM, resolve_bert_path

    other = tmp_path / "wider_bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64), add_pooling_layer=False).save_pretrained(other)
    (other / "vocab.txt").write_bytes((Path(resolve_bert_path(BUNDLED_MINILM)) / "vocab.txt").read_bytes())
    with pytest.raises(ValueError, match="does not fit this model"):
        build_vlp_mmt(toy_data, toy_corpus, other, "--load-vlp", pretrained_on_mmt_data)


# ----------------------------------------------------------------------------- data preparation and scale


@pytest.mark.slow
def test_prepare_captions_names_the_bad_line_and_writes_nothing(tmp_path, small_bert_dir):
    (tmp_path / "captions.txt").write_text("a dog on the beach\na cow on the snow\na cat on the road\n")
    (tmp_path / "gappy.txt").write_text("a dog on the beach\n\na cat on the road\n", encoding="utf-8")
    (tmp_path / "images.txt").write_text("1.jpg\n2.jpg\n3.jpg\n", encoding="utf-8")
    (tmp_path / "short_images.txt").write_text("1.jpg\n2.jpg\n", encoding="utf-8")

    def prepare(captions, images):
        command = [console_script("vlp-mmt-prepare-captions"), "--captions", tmp_path / captions,
                   "--images", tmp_path / images, "--out", tmp_path / "out", "--bert-model", small_bert_dir]
        return subprocess.run([str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    result = prepare("captions.txt", "short_images.txt")
    assert result.returncode == 1 and "captions.txt has 3 lines but" in result.stderr
    assert "short_images.txt has 2" in result.stderr
    result = prepare("gappy.txt", "images.txt")
    assert result.returncode == 1 and f"{tmp_path / 'gappy.txt'}:2: empty caption" in result.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


@pytest.mark.slow
def test_caption_dataset_memory_is_flat(tmp_path):
    """Own (anonymous) resident memory of loading and reading 10k vs 200k captions."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import vlp_caption_memory as benchmark
    finally:
        sys.path.pop(0)
    results = benchmark.main(["--sizes", "10000", "200000", "--reads", "500", "--one-process",
                              "--workdir", str(tmp_path)])
    small, large = results
    assert (small["captions"], large["captions"]) == (10_000, 200_000)
    mb = 1024 * 1024
    # loading maps the files: no per-caption memory (a Python string per image key alone costs 10 MB here)
    assert large["load"]["anon"] < 1.5 * mb, results
    # reading 500 captions costs the same at 20x the corpus
    assert abs(large["read"]["anon"] - small["read"]["anon"]) < 1.5 * mb, results
