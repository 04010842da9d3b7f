"""End to end through the real CLIs: stage 1, stage 2, beam search, sacreBLEU; the toy ambiguity test.

On the toy corpus one word per sentence has k = 2 senses that only the region features reveal:
the multimodal model must get >= 90% of them right, while the text-only model and the multimodal
model with shuffled images stay at chance (1/k +- 0.15).
"""
import json
import re

import pytest
import sacrebleu
import torch

from utils import USER_DIR, run_cli
from vlp_mmt_fairseq.evaluation.ambiguity import sense_accuracy

CHANCE = 0.5  # k = 2 senses per ambiguous word
OPTIM = ["--optimizer", "adam", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "30", "--max-tokens", "2000",
         "--num-workers", "0", "--cpu", "--seed", "1", "--no-epoch-checkpoints", "--log-format", "json",
         "--log-interval", "10"]


def train(toy_data, toy_corpus, tiny_bert_dir, save_dir, *extra, env=None):
    run_cli(["fairseq-train", toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt",
             "--arch", "vlp_mmt_tiny", "--criterion", "vlp_mmt_loss", "--label-smoothing", "0.1",
             "--bert-model", tiny_bert_dir, "--image-features", toy_corpus / "features.h5", "--max-regions", "6",
             "--save-dir", save_dir, *OPTIM, *extra], env=env)
    return save_dir / "checkpoint_best.pt"


def generate(toy_data, toy_corpus, tiny_bert_dir, checkpoint, *extra, env=None):
    out = run_cli(["fairseq-generate", toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt",
                   "--bert-model", tiny_bert_dir, "--image-features", toy_corpus / "features.h5",
                   "--max-regions", "6", "--path", checkpoint, "--gen-subset", "test2016", "--beam", "5",
                   "--batch-size", "64", "--max-len-b", "30", "--post-process", "sentencepiece", "--cpu",
                   *extra], env=env).stdout
    hyps = dict((int(i), text) for i, text in re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", out, flags=re.M))
    return [hyps[i] for i in range(len(hyps))]


@pytest.fixture(scope="module")
def two_stage_model(toy_data, toy_corpus, tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("two_stage")
    stage1 = train(toy_data, toy_corpus, tiny_bert_dir, root / "stage1", "--freeze-bert", "--lr", "3e-3",
                   "--max-update", "60")
    stage2 = train(toy_data, toy_corpus, tiny_bert_dir, root / "stage2", "--lr", "3e-3", "--max-update", "600",
                   "--restore-file", stage1, "--reset-optimizer", "--reset-lr-scheduler", "--reset-meters",
                   "--reset-dataloader")
    return stage1, stage2


@pytest.mark.slow
def test_stage1_keeps_bert_and_stage2_trains_it(two_stage_model, tiny_bert_dir):
    from transformers import BertModel

    from vlp_mmt_fairseq.compat import register_safe_checkpoint_globals

    register_safe_checkpoint_globals()
    stage1, stage2 = (torch.load(p, map_location="cpu", weights_only=True) for p in two_stage_model)
    initial = BertModel.from_pretrained(str(tiny_bert_dir), add_pooling_layer=False).state_dict()
    for name, tensor in initial.items():
        assert torch.equal(stage1["model"]["encoder.bert." + name], tensor), name  # frozen in stage 1
    changed = [n for n in initial if not torch.equal(stage2["model"]["encoder.bert." + n], initial[n])]
    assert len(changed) > len(initial) // 2  # stage 2 trained BERT
    # the lambda weights (w_y, w_x, w_v) live in the criterion and carry over from stage 1
    assert set(stage1["criterion"]) == {"gate.w_y", "gate.w_x", "gate.w_v"}
    assert stage1["criterion"]["gate.w_y"].abs().sum() > 0
    assert not torch.equal(stage1["criterion"]["gate.w_y"], stage2["criterion"]["gate.w_y"])


@pytest.mark.slow
def test_beam_search_translates_and_resolves_ambiguity(two_stage_model, toy_data, toy_corpus, tiny_bert_dir,
                                                       tmp_path_factory):
    _, stage2 = two_stage_model
    references = (toy_data / "raw" / "test2016.de").read_text().splitlines()
    senses = str(toy_corpus / "senses.tsv")
    real = generate(toy_data, toy_corpus, tiny_bert_dir, stage2)
    assert len(real) == len(references)
    bleu = sacrebleu.corpus_bleu(real, [references]).score
    assert bleu > 60, bleu
    shuffled = generate(toy_data, toy_corpus, tiny_bert_dir, stage2, "--shuffle-images-seed", "1")
    # the "no image" probe: the multimodal checkpoint, translated without images (its FFN(v) unused)
    assert len(generate(toy_data, toy_corpus, tiny_bert_dir, stage2, "--no-images")) == len(references)
    text_only = train(toy_data, toy_corpus, tiny_bert_dir, tmp_path_factory.mktemp("text_only"), "--no-images",
                      "--modality-loss", "off", "--lr", "3e-3", "--max-update", "300")
    text = generate(toy_data, toy_corpus, tiny_bert_dir, text_only, "--no-images")
    accuracy = {name: sense_accuracy(h, senses) for name, h in
                (("multimodal", real), ("shuffled", shuffled), ("text_only", text))}
    print(json.dumps({"bleu": bleu, **accuracy}))
    assert accuracy["multimodal"] >= 0.9, accuracy
    assert abs(accuracy["text_only"] - CHANCE) <= 0.15, accuracy
    assert abs(accuracy["shuffled"] - CHANCE) <= 0.15, accuracy


@pytest.mark.slow
def test_trains_with_the_real_minilm_weights(toy_data, toy_corpus, tmp_path):
    """The bundled MiniLM (real pre-trained weights) loads into the encoder and trains."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from transformers import BertModel

    from vlp_mmt_fairseq.bert_loading import BUNDLED_MINILM, resolve_bert_path

    args = ["--user-dir", USER_DIR, "--task", "vlp_mmt", "--arch", "vlp_mmt_tiny", "--criterion", "vlp_mmt_loss",
            "--image-features", str(toy_corpus / "features.h5"), "--max-regions", "6"]
    parsed = options.parse_args_and_arch(options.get_training_parser(), [str(toy_data / "bert"), *args])
    model = tasks.setup_task(convert_namespace_to_omegaconf(parsed).task).build_model(
        convert_namespace_to_omegaconf(parsed).model)
    reference = BertModel.from_pretrained(resolve_bert_path(BUNDLED_MINILM), add_pooling_layer=False)
    ours = model.encoder.bert.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(ours[name], tensor), name
    run_cli(["fairseq-train", toy_data / "bert", *args, "--save-dir", tmp_path, "--max-update", "3",
             "--optimizer", "adam", "--lr", "1e-4", "--max-tokens", "600", "--num-workers", "0", "--cpu",
             "--disable-validation", "--no-epoch-checkpoints", "--log-format", "json", "--log-interval", "1"])
    assert (tmp_path / "checkpoint_last.pt").exists()
