"""The vlp_mmt task: batches carry the right image, bad input fails clearly, safe checkpoint loading."""
import subprocess

import pytest
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from utils import REPO_ROOT, USER_DIR
from vlp_mmt_fairseq.data.feature_store import image_key_from_line, read_image_index
from vlp_mmt_fairseq.features.synthetic_features import has_key_code, write_synthetic_store


@pytest.fixture(scope="module")
def key_coded_store(toy_corpus, tmp_path_factory):
    """A store in which every region of every image carries a code of the image's key."""
    keys = []
    for name in ("train", "val", "test_2016_flickr"):
        with open(toy_corpus / "image_splits" / f"{name}.txt") as f:
            keys += [image_key_from_line(line) for line in f]
    path = tmp_path_factory.mktemp("keyed") / "keyed.h5"
    tags = {key: ["street light", "dog"] for key in keys}
    write_synthetic_store(str(path), keys, tags_per_key=tags, feature_dim=32, num_regions=6, encode_key=True)
    return path


def setup_task(*argv):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [*map(str, argv)])
    return tasks.setup_task(convert_namespace_to_omegaconf(args).task)


@pytest.mark.slow
def test_batches_hold_the_right_image_for_every_sentence(toy_data, tiny_bert_dir, key_coded_store):
    task = setup_task(toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt", "--arch", "vlp_mmt_tiny",
                      "--bert-model", tiny_bert_dir, "--image-features", key_coded_store, "--max-regions", 4)
    task.load_dataset("train")
    keys = read_image_index(str(toy_data / "bert" / "train.img.npy"))
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=700, seed=3, num_workers=2,
                                  required_batch_size_multiple=8).next_epoch_itr(shuffle=True)
    seen = []
    tokenizer = __import__("transformers").BertTokenizerFast.from_pretrained(str(tiny_bert_dir))
    raw = (toy_data / "raw" / "train.en").read_text().splitlines()
    for batch in itr:
        net = batch["net_input"]
        assert net["region_features"].shape[:2] == net["region_mask"].shape
        assert net["region_features"].size(1) <= 4
        for row, sample_id in enumerate(batch["id"].tolist()):
            real = net["region_mask"][row]
            features = net["region_features"][row][real].numpy()
            assert has_key_code(features, keys[sample_id].decode()), (sample_id, row)
            # the source row is the same sentence: exactly BERT's ids, right-padded with [PAD]
            ids = net["src_tokens"][row][: net["src_lengths"][row]].tolist()
            assert ids == tokenizer(raw[sample_id])["input_ids"]
            assert (net["src_tokens"][row][net["src_lengths"][row]:] == 0).all()
            tags = [t for t in net["tag_tokens"][row].tolist() if t != 0]
            assert tags == tokenizer("street light dog", add_special_tokens=False)["input_ids"] + [
                tokenizer.sep_token_id]
        seen += batch["id"].tolist()
    assert sorted(seen) == list(range(len(keys)))  # every sentence once, none dropped


def fairseq_train(*argv):
    argv = [*argv, "--max-tokens", "1000"]
    return subprocess.run(["fairseq-train", *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


@pytest.mark.slow
def test_image_index_with_other_line_count_is_refused(toy_data, toy_corpus, tiny_bert_dir, tmp_path):
    index_dir = tmp_path / "indexes"
    index_dir.mkdir()
    lines = (toy_data / "bert" / "valid.img.txt").read_text().splitlines()
    (index_dir / "valid.img.txt").write_text("\n".join(lines[:-3]) + "\n")
    (index_dir / "train.img.txt").write_text((toy_data / "bert" / "train.img.txt").read_text())
    result = fairseq_train(toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt", "--arch", "vlp_mmt_tiny",
                           "--bert-model", tiny_bert_dir, "--image-features", toy_corpus / "features.h5",
                           "--image-index-dir", index_dir, "--max-update", 1, "--cpu",
                           "--save-dir", tmp_path / "ck")
    assert result.returncode != 0
    assert f"{index_dir / 'valid.img.txt'}: the image index has {len(lines) - 3} lines but split 'valid' has " \
           f"{len(lines)} sentences" in result.stdout
    assert not (tmp_path / "ck" / "checkpoint_last.pt").exists()


@pytest.mark.slow
def test_unknown_bert_model_is_refused(toy_data, toy_corpus, tmp_path):
    result = fairseq_train(toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt", "--arch", "vlp_mmt_tiny",
                           "--bert-model", tmp_path / "no_such_bert", "--image-features", toy_corpus / "features.h5",
                           "--cpu", "--save-dir", tmp_path / "ck")
    assert result.returncode != 0
    assert f"--bert-model {tmp_path / 'no_such_bert'}: no such directory" in result.stdout


@pytest.mark.slow
def test_missing_store_is_refused(toy_data, tiny_bert_dir, tmp_path):
    result = fairseq_train(toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt", "--arch", "vlp_mmt_tiny",
                           "--bert-model", tiny_bert_dir, "--image-features", tmp_path / "missing.h5", "--cpu",
                           "--save-dir", tmp_path / "ck")
    assert result.returncode != 0
    assert f"{tmp_path / 'missing.h5'}: feature store not found" in result.stdout


@pytest.mark.slow
def test_help_lists_the_feature_options():
    result = subprocess.run(["fairseq-train", "--user-dir", USER_DIR, "--task", "vlp_mmt", "--help"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    for option in ("--image-features", "--image-index-dir", "--max-regions", "--max-tags", "--no-tags",
                   "--no-images", "--bert-model", "--shuffle-images-seed", "--freeze-bert"):
        assert f"  {option}" in result.stdout, option


def test_readme_opens_with_the_ci_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash\n")[1:3]]
    ci = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert blocks == ci
