"""Caption plus tags never exceed BERT's positions (decided at load time), and --truncate-source keeps [SEP] last."""
import json
import re
import subprocess

import numpy as np
import pytest
import torch

from utils import USER_DIR, cli_env, console_script
from vlp_mmt_fairseq.data.feature_store import FeatureStore, FeatureStoreWriter

POSITIONS = 40  # BERT's position embeddings in these tests: a toy caption (~12) plus 40 tags does not fit
WORDS = ("dog cat man woman child tree car bus street water grass sky shirt hat ball bike horse table chair "
         "boat road wall window door flower beach snow rock hill field bird fish cup plate bag shoe jacket "
         "light sign").split()


@pytest.fixture(scope="module")
def short_bert_dir(tiny_bert_dir, tmp_path_factory):
    """tiny_bert_dir's vocabulary with only POSITIONS position embeddings."""
    from transformers import BertConfig, BertModel

    out = tmp_path_factory.mktemp("short_bert")
    config = json.loads((tiny_bert_dir / "config.json").read_text())
    config["max_position_embeddings"] = POSITIONS
    torch.manual_seed(0)
    BertModel(BertConfig(**config), add_pooling_layer=False).save_pretrained(out)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert_dir / name).exists():
            (out / name).write_bytes((tiny_bert_dir / name).read_bytes())
    return out


@pytest.fixture(scope="module")
def many_tags_store(toy_corpus, tmp_path_factory):
    """The toy store with 40 tags per image (scores decreasing in WORDS order)."""
    toy = FeatureStore(str(toy_corpus / "features.h5"))
    path = tmp_path_factory.mktemp("many_tags") / "features.h5"
    with FeatureStoreWriter(str(path), feature_dim=toy.feature_dim, extractor=toy.extractor) as writer:
        for key in toy.keys():
            item = toy.get(key)
            writer.add(key, item.features, item.boxes, width=item.width, height=item.height,
                       tags=WORDS, tag_scores=np.linspace(1.0, 0.1, len(WORDS)))
    return path


def vlp_mmt_task(data_dir, *args):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    parsed = options.parse_args_and_arch(parser, [str(data_dir), "--user-dir", USER_DIR, "--task", "vlp_mmt",
                                                  "--arch", "vlp_mmt_tiny", *map(str, args)])
    return tasks.setup_task(convert_namespace_to_omegaconf(parsed).task)


@pytest.mark.slow
def test_tags_that_do_not_fit_are_dropped_lowest_score_first(toy_data, short_bert_dir, many_tags_store, caplog):
    task = vlp_mmt_task(toy_data / "bert", "--bert-model", short_bert_dir, "--image-features", many_tags_store,
                        "--max-tags", len(WORDS))
    with caplog.at_level("WARNING"):
        task.load_dataset("train")
    dataset = task.datasets["train"]
    sizes = dataset.pair.src_sizes
    message = re.search(r"train: (\d+) of (\d+) sentences have caption \+ tags over BERT's 40 positions", caplog.text)
    assert message and int(message.group(2)) == len(sizes) and int(message.group(1)) == len(sizes), caplog.text
    encode = task.tag_encoder
    full = [piece for word in WORDS for piece in encode(word)]
    for index in np.argsort(sizes)[[0, len(sizes) // 2, -1]]:  # shortest, median and longest caption
        tags = dataset[int(index)]["image"]["tags"].tolist()
        assert int(sizes[index]) + len(tags) <= POSITIONS
        assert tags[-1] == task.source_dictionary.eos() and tags[:-1] == full[: len(tags) - 1]  # the best ones
        kept_words = len(dataset[int(index)]["image"]["tag_sizes"])
        assert kept_words < len(WORDS) and int(sizes[index]) + len(tags) + len(encode(WORDS[kept_words])) > POSITIONS


@pytest.mark.slow
def test_fairseq_train_with_more_tags_than_positions_does_not_crash(toy_data, short_bert_dir, many_tags_store,
                                                                     tmp_path):
    args = [console_script("fairseq-train"), toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt",
            "--arch", "vlp_mmt_tiny", "--criterion", "vlp_mmt_loss", "--bert-model", short_bert_dir,
            "--image-features", many_tags_store, "--max-tags", len(WORDS), "--max-regions", "6", "--optimizer",
            "adam", "--lr", "1e-3", "--max-tokens", "2000", "--max-update", "3", "--cpu", "--num-workers", "0",
            "--disable-validation", "--no-save", "--log-format", "simple"]
    result = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cli_env())
    assert result.returncode == 0, result.stdout[-4000:]
    assert "sentences have caption + tags over BERT's 40 positions" in result.stdout
    assert "done training" in result.stdout


@pytest.mark.slow
def test_truncate_source_keeps_sep_last(toy_data, tiny_bert_dir):
    task = vlp_mmt_task(toy_data / "bert", "--bert-model", tiny_bert_dir, "--no-images", "--truncate-source",
                        "--max-source-positions", 8)
    task.load_dataset("train")
    pair = task.datasets["train"].pair
    d = task.source_dictionary
    longest = int(np.argmax(pair.src_sizes))
    source = pair.src[longest].tolist()
    assert len(source) == 8 == int(pair.src_sizes[longest])
    assert source[0] == d.bos() and source[-1] == d.eos() and d.symbols[d.eos()] == "[SEP]"
    assert d.symbols.index("[unused1]") not in source
    short = int(np.argmin(pair.src_sizes))
    assert pair.src[short][-1] == d.eos() and len(pair.src[short]) == int(pair.src_sizes[short])


@pytest.mark.slow
def test_vlp_pretrain_batches_fit_bert(toy_corpus, many_tags_store, short_bert_dir):
    """vlp_pretrain: a caption keeps as many of its (or the random image's) best tags as fit."""
    from vlp_mmt_fairseq.data.bert_dictionary import BertDictionary
    from vlp_mmt_fairseq.data.image_dataset import ImageDataset
    from vlp_mmt_fairseq.data.tag_encoder import TagEncoder
    from vlp_mmt_fairseq.data.vlp_pretrain_dataset import VlpPretrainDataset

    class Captions(list):
        @property
        def sizes(self):
            return np.array([len(c) for c in self])

    d = BertDictionary(str(short_bert_dir / "vocab.txt"))
    store = FeatureStore(str(many_tags_store), max_tags=len(WORDS))
    keys = np.array(sorted(store.keys())[:8], dtype=bytes)
    captions = Captions(torch.tensor([d.bos()] + [d.index("dog")] * (3 + 3 * i) + [d.eos()]) for i in range(8))
    images = ImageDataset(keys, store, TagEncoder(str(short_bert_dir)), sep=d.eos(), pad=d.pad())
    dataset = VlpPretrainDataset(captions, images, d, negative_prob=0.5, max_text_positions=POSITIONS)
    batch = dataset.collater([dataset[i] for i in range(8)])
    text = torch.cat([batch["net_input"]["src_tokens"], batch["net_input"]["tag_tokens"]], dim=1)
    assert (text.ne(d.pad()).sum(1) <= POSITIONS).all() and batch["net_input"]["tag_tokens"].size(1) > 0
