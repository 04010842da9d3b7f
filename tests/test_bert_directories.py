"""A BERT directory as transformers 5 saves it (tokenizer.json, no vocab.txt) works wherever --bert-model is read."""
import json
import re
import subprocess

import pytest

from utils import USER_DIR, cli_env, console_script
from vlp_mmt_fairseq.bert_loading import (
    BertModelNotFound,
    bert_vocab_file,
    load_bert_tokenizer,
    resolve_bert_path,
)
from vlp_mmt_fairseq.data.bert_dictionary import BertDictionary


@pytest.fixture(scope="module")
def saved_bert_dir(tiny_bert_dir, tmp_path_factory):
    """tiny_bert_dir saved again by the installed transformers; vocab.txt removed if it wrote one (as 5.x does)."""
    from transformers import AutoTokenizer, BertModel

    out = tmp_path_factory.mktemp("saved_bert")
    BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(out)
    (out / "vocab.txt").unlink(missing_ok=True)
    assert (out / "tokenizer.json").exists() and (out / "config.json").exists()
    return out


def test_a_directory_without_vocab_txt_is_a_bert(saved_bert_dir, tiny_bert_dir):
    assert resolve_bert_path(str(saved_bert_dir)) == str(saved_bert_dir)
    assert bert_vocab_file(str(saved_bert_dir)) == str(saved_bert_dir / "tokenizer.json")
    reference = BertDictionary(str(tiny_bert_dir / "vocab.txt"))
    for dictionary in (BertDictionary(bert_vocab_file(str(saved_bert_dir))), BertDictionary.from_bert_dir(
            str(saved_bert_dir))):
        assert dictionary.symbols == reference.symbols
        assert (dictionary.pad(), dictionary.bos(), dictionary.eos(), dictionary.unk()) == (
            reference.pad(), reference.bos(), reference.eos(), reference.unk())
    text = "a man rides a bicycle past the zebras"
    assert load_bert_tokenizer(str(saved_bert_dir))(text)["input_ids"] == load_bert_tokenizer(
        str(tiny_bert_dir))(text)["input_ids"]


def test_a_tokenizer_that_is_not_wordpiece_is_refused(saved_bert_dir, tmp_path):
    (tmp_path / "config.json").write_bytes((saved_bert_dir / "config.json").read_bytes())
    tokenizer = json.loads((saved_bert_dir / "tokenizer.json").read_text())
    tokenizer["model"] = {"type": "BPE", "vocab": {"a": 0}, "merges": []}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(BertModelNotFound, match=re.escape(f"{tmp_path / 'tokenizer.json'}: not a BERT WordPiece "
                                                          "tokenizer (model type 'BPE')")):
        BertDictionary(bert_vocab_file(str(tmp_path)))
    (tmp_path / "no_tokenizer").mkdir()
    (tmp_path / "no_tokenizer" / "config.json").write_bytes((saved_bert_dir / "config.json").read_bytes())
    with pytest.raises(BertModelNotFound, match="neither vocab.txt nor tokenizer.json"):
        resolve_bert_path(str(tmp_path / "no_tokenizer"))


@pytest.mark.slow
def test_fairseq_train_and_generate_with_it(saved_bert_dir, toy_data, toy_corpus, tmp_path):
    common = ["--user-dir", USER_DIR, "--task", "vlp_mmt", "--bert-model", saved_bert_dir, "--image-features",
              toy_corpus / "features.h5", "--max-regions", "6", "--cpu", "--num-workers", "0"]
    train = [console_script("fairseq-train"), toy_data / "bert", *common, "--arch", "vlp_mmt_tiny",
             "--criterion", "vlp_mmt_loss", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2000",
             "--max-update", "1", "--disable-validation", "--save-dir", tmp_path, "--no-epoch-checkpoints"]
    generate = [console_script("fairseq-generate"), toy_data / "bert", *common, "--path",
                tmp_path / "checkpoint_last.pt", "--gen-subset", "test2016", "--beam", "1", "--batch-size", "64"]
    for args in (train, generate):
        result = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=cli_env())
        assert result.returncode == 0, result.stdout[-4000:]
    assert len(re.findall(r"^H-\d+\t", result.stdout, flags=re.M)) == 200  # every test2016 sentence of the toy set
