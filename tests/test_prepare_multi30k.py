"""vlp-mmt-prepare-multi30k: real Multi30K en-de round trips, and its errors on bad input."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from fairseq import options, tasks
from fairseq.data import Dictionary, data_utils
from fairseq.data.indexed_dataset import MMapIndexedDataset

from vlp_mmt_fairseq.bert_loading import BUNDLED_MINILM, bert_vocab_file, load_bert_tokenizer
from vlp_mmt_fairseq.cli import prepare_multi30k
from vlp_mmt_fairseq.data.bert_dictionary import BertDictionary
from vlp_mmt_fairseq.data.feature_store import image_key_from_line

SPLITS = {
    "train": "train",
    "valid": "val",
    "test2016": "test_2016_flickr",
    "test2017": "test_2017_flickr",
    "mscoco": "test_2017_mscoco",
    "test2018": "test_2018_flickr",
}


def original_lines(multi30k_dir: Path, split: str, lang: str):
    with gzip.open(multi30k_dir / "raw" / f"{split}.{lang}.gz", "rt", encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\n") for line in f]


def write_fake_multi30k(root: Path, texts, images, tok=False) -> Path:
    """A Multi30K-layout folder: texts[split][lang] = sentences, images[split] = image names."""
    for split, by_lang in texts.items():
        for lang, lines in by_lang.items():
            path = root / "raw" / f"{split}.{lang}.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
            if tok:
                (root / "tok").mkdir(exist_ok=True)
                (root / "tok" / f"{split}.lc.norm.tok.{lang}").write_text(
                    "".join(line.lower() + "\n" for line in lines), encoding="utf-8"
                )
    for split, names in images.items():
        (root / "image_splits").mkdir(parents=True, exist_ok=True)
        (root / "image_splits" / f"{split}.txt").write_text("".join(n + "\n" for n in names), encoding="utf-8")
    return root


TOY_EN = ["A dog runs on the grass.", "Two men  are talking.", "A girl\u00a0plays with a ball.", "A cat sleeps."]
TOY_DE = ["Ein Hund läuft auf dem Gras.", "Zwei Männer unterhalten sich.", "Ein Mädchen spielt mit einem Ball.",
          "Eine Katze schläft."]
TOY_IMAGES = ["1.jpg", "2.jpg", "COCO_val2014_000000000003.jpg#7", "4.jpg"]


def prepare(argv):
    """Run vlp-mmt-prepare-multi30k's cli_main in this process; returns the exit code (0 when it returns normally)."""
    try:
        prepare_multi30k.cli_main([str(a) for a in argv])
    except SystemExit as e:
        return e.code
    return 0


def assert_nothing_written(tmp_path: Path, out: Path):
    assert not out.exists()
    assert not list(out.parent.glob(out.name + ".tmp-*")), "a temporary build folder was left behind"


# --------------------------------------------------------------------------- the real Multi30K


@pytest.mark.slow
def test_bert_source_ids_are_the_tokenizer_ids_of_every_line(prepared_multi30k_en_de, multi30k_dir):
    tokenizer = load_bert_tokenizer(BUNDLED_MINILM)
    bert_dict = BertDictionary(bert_vocab_file(BUNDLED_MINILM))
    for split, m30k_name in SPLITS.items():
        sentences = original_lines(multi30k_dir, m30k_name, "en")
        expected = tokenizer(sentences)["input_ids"]
        stored = data_utils.load_indexed_dataset(
            str(prepared_multi30k_en_de / "bert" / f"{split}.en-de.en"), bert_dict, "mmap"
        )
        assert len(stored) == len(sentences), split
        for i, ids in enumerate(expected):
            assert stored[i].tolist() == ids, f"{split} line {i + 1}"
            assert ids[0] == bert_dict.bos() and ids[-1] == bert_dict.eos()


@pytest.mark.slow
def test_target_ids_decode_to_the_original_text(prepared_multi30k_en_de, multi30k_dir):
    out = prepared_multi30k_en_de
    dictionary = Dictionary.load(str(out / "bert" / "dict.de.txt"))
    processor = spm.SentencePieceProcessor(model_file=str(out / "spm" / "spm.de.model"))
    for split, m30k_name in SPLITS.items():
        originals = original_lines(multi30k_dir, m30k_name, "de")
        raw_copy = (out / "raw" / f"{split}.de").read_text(encoding="utf-8").split("\n")[:-1]
        assert raw_copy == [" ".join(line.split()) for line in originals], split
        stored = MMapIndexedDataset(str(out / "bert" / f"{split}.en-de.de"))
        assert len(stored) == len(originals)
        pieces = []
        for i in range(len(stored)):
            ids = stored[i].tolist()
            assert ids[-1] == dictionary.eos() and dictionary.unk() not in ids, f"{split} line {i + 1}"
            pieces.append([dictionary[j] for j in ids[:-1]])
        decoded = processor.decode_pieces(pieces)
        for i, reference in enumerate(raw_copy):
            assert decoded[i] == reference, f"{split} line {i + 1}"


@pytest.mark.slow
def test_whitespace_is_the_only_change_to_the_raw_text(prepared_multi30k_en_de, multi30k_dir):
    record = json.loads((prepared_multi30k_en_de / "prepare.json").read_text())
    originals = original_lines(multi30k_dir, "train", "de")
    changed = sum(" ".join(line.split()) != line for line in originals)
    assert changed > 0  # the real train.de has tabs, no-break spaces and doubled spaces
    assert record["splits"]["train"]["whitespace_normalized_lines"]["de"] == changed


@pytest.mark.slow
def test_text_dir_loads_in_fairseq_translation_task(prepared_multi30k_en_de):
    out = prepared_multi30k_en_de
    args = options.parse_args_and_arch(
        options.get_training_parser(),
        [str(out / "text"), "--task", "translation", "--arch", "transformer", "-s", "en", "-t", "de"],
    )
    task = tasks.setup_task(args)
    assert (out / "text" / "dict.de.txt").read_bytes() == (out / "bert" / "dict.de.txt").read_bytes()
    processor = spm.SentencePieceProcessor(model_file=str(out / "spm" / "spm.en.model"))
    record = json.loads((out / "prepare.json").read_text())
    for split in SPLITS:
        task.load_dataset(split)
        dataset = task.dataset(split)
        raw_en = (out / "raw" / f"{split}.en").read_text(encoding="utf-8").split("\n")[:-1]
        assert len(dataset) == len(raw_en) == record["splits"][split]["lines"]
        for ext in ("bin", "idx"):  # bert/ shares text/'s target
            assert (out / "text" / f"{split}.en-de.de.{ext}").read_bytes() == \
                (out / "bert" / f"{split}.en-de.de.{ext}").read_bytes()
    valid = task.dataset("valid")
    raw_valid = (out / "raw" / "valid.en").read_text(encoding="utf-8").split("\n")[:-1]
    for i, reference in enumerate(raw_valid):
        pieces = task.src_dict.string(valid[i]["source"]).split(" ")
        assert processor.decode_pieces(pieces) == reference


@pytest.mark.slow
def test_image_indexes_and_tok_copies(prepared_multi30k_en_de, multi30k_dir):
    out = prepared_multi30k_en_de
    for split, m30k_name in SPLITS.items():
        lines = (multi30k_dir / "image_splits" / f"{m30k_name}.txt").read_text(encoding="utf-8").splitlines()
        keys = np.load(out / "bert" / f"{split}.img.npy")
        assert len(keys) == len(lines) > 0
        assert [k.decode() for k in keys] == [image_key_from_line(line) for line in lines]
        assert (out / "bert" / f"{split}.img.txt").read_text(encoding="utf-8").splitlines() == lines
        assert (out / "images" / f"{split}.npy").read_bytes() == (out / "bert" / f"{split}.img.npy").read_bytes()
        for lang in ("en", "de"):
            official = multi30k_dir / "tok" / f"{m30k_name}.lc.norm.tok.{lang}"
            assert (out / "tok" / f"{split}.{lang}").read_bytes() == official.read_bytes()
    record = json.loads((out / "prepare.json").read_text())
    assert record["bert_model"]["max_positions"] == 512
    assert record["sentencepiece"]["de"]["pieces"] == 8000
    assert record["fairseq_dictionary_sizes"]["de"] == len(Dictionary.load(str(out / "text" / "dict.de.txt")))


# --------------------------------------------------------------------------- toy corpora and errors


@pytest.mark.slow
def test_toy_corpus_without_tok(tmp_path):
    """Any folder in the Multi30K layout works; tok/ is optional and splits are discovered."""
    source = write_fake_multi30k(
        tmp_path / "toy",
        {"train": {"en": TOY_EN, "de": TOY_DE}, "val": {"en": TOY_EN[:2], "de": TOY_DE[:2]},
         "val_extra": {"en": TOY_EN[:1]}},  # only one language: not a split of en-de
        {"train": TOY_IMAGES, "val": TOY_IMAGES[:2]},
    )
    out = tmp_path / "out"
    assert prepare(["--multi30k-dir", source, "--out", out, "--spm-vocab-size", 300,
                    "--spm-vocab-size-src", 300, "--workers", 1]) == 0
    assert not (out / "tok").exists()
    record = json.loads((out / "prepare.json").read_text())
    assert sorted(record["splits"]) == ["train", "valid"]
    assert (out / "raw" / "train.en").read_text(encoding="utf-8").splitlines()[1:3] == [
        "Two men are talking.", "A girl plays with a ball."]
    dictionary = Dictionary.load(str(out / "bert" / "dict.de.txt"))
    processor = spm.SentencePieceProcessor(model_file=str(out / "spm" / "spm.de.model"))
    stored = MMapIndexedDataset(str(out / "bert" / "valid.en-de.de"))
    assert [processor.decode_pieces(dictionary.string(stored[i]).split(" ")) for i in range(2)] == TOY_DE[:2]
    assert [k.decode() for k in np.load(out / "bert" / "train.img.npy")] == ["1", "2", "COCO_val2014_000000000003", "4"]
    # an existing output is refused without --force, and left untouched
    assert prepare(["--multi30k-dir", source, "--out", out, "--spm-vocab-size", 300]) != 0
    assert (out / "prepare.json").exists()


def test_over_long_source_fails_naming_file_and_line(tmp_path, capsys):
    long_sentence = " ".join(["word"] * 600)
    source = write_fake_multi30k(
        tmp_path / "m30k",
        {"train": {"en": [TOY_EN[0], long_sentence, TOY_EN[2]], "de": TOY_DE[:3]}},
        {"train": TOY_IMAGES[:3]},
    )
    out = tmp_path / "out"
    assert prepare(["--multi30k-dir", source, "--out", out]) == 1
    error = capsys.readouterr().err
    assert f"split train: {source / 'raw' / 'train.en.gz'}:2:" in error
    assert "602 BERT tokens" in error and "512 positions" in error
    assert_nothing_written(tmp_path, out)


def test_mismatched_line_counts_fail_naming_the_files(tmp_path, capsys):
    source = write_fake_multi30k(
        tmp_path / "m30k", {"train": {"en": TOY_EN, "de": TOY_DE[:3]}}, {"train": TOY_IMAGES}
    )
    out = tmp_path / "out"
    assert prepare(["--multi30k-dir", source, "--out", out]) == 1
    error = capsys.readouterr().err
    assert f"{source / 'raw' / 'train.en.gz'} has 4" in error
    assert f"{source / 'raw' / 'train.de.gz'} has 3" in error
    assert f"{source / 'image_splits' / 'train.txt'} has 4" in error
    assert_nothing_written(tmp_path, out)


def test_mismatched_tok_and_image_counts_fail(tmp_path, capsys):
    source = write_fake_multi30k(
        tmp_path / "m30k", {"train": {"en": TOY_EN, "de": TOY_DE}}, {"train": TOY_IMAGES[:3]}, tok=True
    )
    out = tmp_path / "out"
    assert prepare(["--multi30k-dir", source, "--out", out]) == 1
    assert f"{source / 'image_splits' / 'train.txt'} has 3" in capsys.readouterr().err
    assert_nothing_written(tmp_path, out)


def test_empty_line_fails_naming_the_line(tmp_path, capsys):
    source = write_fake_multi30k(
        tmp_path / "m30k", {"train": {"en": TOY_EN, "de": [TOY_DE[0], " \t", *TOY_DE[2:]]}}, {"train": TOY_IMAGES}
    )
    out = tmp_path / "out"
    assert prepare(["--multi30k-dir", source, "--out", out]) == 1
    assert f"{source / 'raw' / 'train.de.gz'}:2: empty line" in capsys.readouterr().err
    assert_nothing_written(tmp_path, out)


def test_unknown_bert_model_fails_clearly(tmp_path, capsys):
    source = write_fake_multi30k(tmp_path / "m30k", {"train": {"en": TOY_EN, "de": TOY_DE}}, {"train": TOY_IMAGES})
    out = tmp_path / "out"
    assert prepare(["--multi30k-dir", source, "--out", out, "--bert-model", "/nonexistent"]) == 1
    assert "--bert-model /nonexistent: no such directory" in capsys.readouterr().err
    assert_nothing_written(tmp_path, out)


def test_splits_without_train_or_unknown_split_fail(tmp_path, capsys):
    source = write_fake_multi30k(
        tmp_path / "m30k",
        {"train": {"en": TOY_EN, "de": TOY_DE}, "val": {"en": TOY_EN[:2], "de": TOY_DE[:2]}},
        {"train": TOY_IMAGES, "val": TOY_IMAGES[:2]},
    )
    out = tmp_path / "out"
    assert prepare(["--multi30k-dir", source, "--out", out, "--splits", "test2016"]) == 1
    assert "--splits test2016: not available" in capsys.readouterr().err
    assert prepare(["--multi30k-dir", source, "--out", out, "--splits", "valid"]) == 1
    assert "include train in --splits" in capsys.readouterr().err
    assert_nothing_written(tmp_path, out)


def test_failure_after_writing_started_leaves_nothing(tmp_path, capsys):
    """A SentencePiece vocabulary too small for the characters fails late, and cleans up."""
    source = write_fake_multi30k(tmp_path / "m30k", {"train": {"en": TOY_EN, "de": TOY_DE}}, {"train": TOY_IMAGES})
    out = tmp_path / "out"
    assert prepare(["--multi30k-dir", source, "--out", out, "--spm-vocab-size-src", 20]) == 1
    error = capsys.readouterr().err
    assert "SentencePiece training on train.en (train) failed with vocabulary size 20" in error
    assert_nothing_written(tmp_path, out)
