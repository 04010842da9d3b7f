"""The BERT-fused NMT baseline: task batches, drop-net, incremental decoding, and the real CLIs
(stock transformer, then bert_fused warm-started from it, then beam search)."""
import os
import shutil
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models.transformer import TransformerConfig

from beam_search import assert_beam_search_matches_full_recompute, make_outputs_peaked
from utils import USER_DIR, run_cli
from vlp_mmt_fairseq.modules.bert_fused_layers import BertFusedDecoderLayer, BertFusedEncoderLayer

# one OpenMP thread per CLI: on a shared, loaded 2-core machine more threads make a tiny model
# many times slower (they spin waiting for each other)
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMMON = ["-s", "en", "-t", "de", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2000",
          "--max-update", "4", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
          "--num-workers", "0", "--cpu", "--seed", "1", "--no-epoch-checkpoints"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # in-process tests too


def bert_fused_args(toy_data, tiny_bert_dir, *extra):
    return [str(toy_data / "text"), "--user-dir", USER_DIR, "--task", "bert_fused_translation",
            "--bert-model", str(tiny_bert_dir), "--arch", "bert_fused_tiny", "-s", "en", "-t", "de",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--dropout", "0",
            *map(str, extra)]


def build(args, build_model=True):
    """The task (and model) that fairseq-train would build from these arguments."""
    parsed = options.parse_args_and_arch(options.get_training_parser(), args)
    cfg = convert_namespace_to_omegaconf(parsed)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    return task, (task.build_model(cfg.model) if build_model else None)


# ------------------------------------------------------------------------------------------ data


@pytest.mark.slow
def test_batches_carry_aligned_bert_tokens_and_lose_nothing(toy_data, tiny_bert_dir):
    task, _ = build(bert_fused_args(toy_data, tiny_bert_dir), build_model=False)
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    pad, bert_pad = task.source_dictionary.pad(), task.bert_dictionary.pad()
    # 7 sentences a batch, multiple of 8 required: fairseq alone would drop sentences
    itr = task.get_batch_iterator(dataset, max_sentences=7, required_batch_size_multiple=8, seed=1)
    seen = []
    for batch in itr.next_epoch_itr(shuffle=False):
        bert_tokens, src_tokens = batch["net_input"]["bert_tokens"], batch["net_input"]["src_tokens"]
        assert bert_tokens.size(0) == src_tokens.size(0) == len(batch["id"])
        for row, index in enumerate(batch["id"].tolist()):
            expected_bert = dataset.bert_source[index]
            assert bert_tokens[row, :len(expected_bert)].tolist() == expected_bert.tolist()
            assert (bert_tokens[row, len(expected_bert):] == bert_pad).all()  # right-padded with [PAD]
            assert expected_bert[0] == task.bert_dictionary.bos() and expected_bert[-1] == task.bert_dictionary.eos()
            text = src_tokens[row][src_tokens[row] != pad]  # the stock source, left-padded
            assert text.tolist() == dataset.pair.src[index].tolist()
        seen.extend(batch["id"].tolist())
    assert sorted(seen) == list(range(len(dataset))) == list(range(100))


@pytest.mark.slow
def test_line_count_mismatch_names_both_files(toy_data, tiny_bert_dir, tmp_path):
    bert_dir = tmp_path / "bert"
    bert_dir.mkdir()
    for ext in ("bin", "idx"):  # 200 test sentences posing as the 100 valid ones
        shutil.copy(toy_data / "bert" / f"test2016.en-de.en.{ext}", bert_dir / f"valid.en-de.en.{ext}")
    task, _ = build(bert_fused_args(toy_data, tiny_bert_dir, "--bert-data", bert_dir), build_model=False)
    with pytest.raises(ValueError) as error:
        task.load_dataset("valid")
    message = str(error.value)
    assert str(bert_dir / "valid.en-de.en.bin") in message and "200" in message
    assert str(toy_data / "text" / "valid.en-de.en.bin") in message and "100" in message


# -------------------------------------------------------------------------------------- drop-net


def layer_config():
    cfg = TransformerConfig()
    cfg.dropout = 0.0
    for side in (cfg.encoder, cfg.decoder):
        side.embed_dim, side.ffn_embed_dim, side.attention_heads = 16, 32, 2
    return cfg


def ffn_block(layer, h):
    """The FFN sub-layer of a post-norm layer, by hand."""
    return layer.final_layer_norm(h + layer.fc2(torch.relu(layer.fc1(h))))


def memories(batch=3, length=5, bert_length=7, dim=16, bert_dim=24):
    torch.manual_seed(0)
    x = torch.randn(length, batch, dim)
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[0, -2:] = True
    bert = torch.randn(bert_length, batch, bert_dim)
    bert_pad = torch.zeros(batch, bert_length, dtype=torch.bool)
    bert_pad[1, -3:] = True
    return x, pad, bert, bert_pad


def assert_dropnet(layer, run, mix):
    """``mix(w_own, w_bert)``: the attention sub-layer by hand, its two attentions weighted.

    Eval: the layer is the FFN over the average of the two attentions. Training with p=1: the
    FFN over exactly one of them, both occurring over draws. Training with p=0: the average.
    """
    average, only_own, only_bert = (ffn_block(layer, mix(*w)) for w in ((0.5, 0.5), (1.0, 0.0), (0.0, 1.0)))
    assert not torch.allclose(only_own, only_bert)  # two really different paths
    layer.eval()
    torch.testing.assert_close(run(), average)
    layer.train()
    chosen = []
    for seed in range(16):
        torch.manual_seed(seed)
        out = run()
        is_own, is_bert = (torch.allclose(out, path, rtol=1e-4, atol=1e-5) for path in (only_own, only_bert))
        assert is_own != is_bert, "in training with p=1 a layer uses exactly one of its two attentions"
        chosen.append(is_own)
    assert any(chosen) and not all(chosen)
    layer.dropnet = 0.0
    torch.testing.assert_close(run(), average)


@torch.no_grad()
def test_dropnet_encoder_layer():
    layer = BertFusedEncoderLayer(layer_config(), bert_dim=24, dropnet=1.0)
    x, pad, bert, bert_pad = memories()
    own = layer.self_attn(query=x, key=x, value=x, key_padding_mask=pad)[0]
    to_bert = layer.bert_attn(query=x, key=bert, value=bert, key_padding_mask=bert_pad)[0]

    def mix(w_own, w_bert):
        return layer.self_attn_layer_norm(x + w_own * own + w_bert * to_bert)

    assert_dropnet(layer, lambda: layer(x, pad, bert, bert_pad), mix)


@torch.no_grad()
def test_dropnet_decoder_layer():
    layer = BertFusedDecoderLayer(layer_config(), bert_dim=24, dropnet=1.0)
    y, _, bert, bert_pad = memories(length=4)
    enc, enc_pad, _, _ = memories(length=6)
    future = torch.triu(torch.full((4, 4), float("-inf")), 1)
    h = layer.self_attn_layer_norm(y + layer.self_attn(query=y, key=y, value=y, attn_mask=future)[0])
    to_encoder = layer.encoder_attn(query=h, key=enc, value=enc, key_padding_mask=enc_pad)[0]
    to_bert = layer.bert_attn(query=h, key=bert, value=bert, key_padding_mask=bert_pad)[0]

    def mix(w_own, w_bert):
        return layer.encoder_attn_layer_norm(h + w_own * to_encoder + w_bert * to_bert)

    assert_dropnet(layer, lambda: layer(y, enc, enc_pad, bert, bert_pad, self_attn_mask=future)[0], mix)


# ----------------------------------------------------------------------------------------- model


@pytest.mark.slow
def test_incremental_decoding_matches_full_pass_and_bert_is_frozen(toy_data, tiny_bert_dir):
    # p=0: every layer averages its two attentions in training too, so both get gradients below
    task, model = build(bert_fused_args(toy_data, tiny_bert_dir, "--dropnet", "0"))
    task.load_dataset("valid")
    itr = task.get_batch_iterator(task.dataset("valid"), max_sentences=4, seed=1).next_epoch_itr(shuffle=False)
    sample = next(iter(itr))
    net_input = sample["net_input"]
    bert_params = list(model.encoder.bert_encoder.bert.parameters())
    assert bert_params and not any(p.requires_grad for p in bert_params)  # frozen by default

    model.eval()
    with torch.no_grad():
        encoder_out = model.encoder(net_input["src_tokens"], net_input["src_lengths"], net_input["bert_tokens"])
        assert encoder_out["bert_encoder_out"][0].shape[:2] == net_input["bert_tokens"].t().shape
        prev = net_input["prev_output_tokens"]
        full = model.decoder(prev, encoder_out=encoder_out)[0]
        state = {}
        steps = [model.decoder(prev[:, :t + 1], encoder_out=encoder_out, incremental_state=state)[0][:, -1]
                 for t in range(prev.size(1))]
    real = prev.ne(task.target_dictionary.pad())
    torch.testing.assert_close(torch.stack(steps, 1)[real], full[real], atol=1e-4, rtol=1e-4)

    model.train()  # the paper's frozen BERT is a fixed feature extractor: no dropout, no gradient
    assert not model.encoder.bert_encoder.bert.training
    loss = model(**net_input)[0].logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is None for p in bert_params)
    assert model.encoder.layers[0].bert_attn.k_proj.weight.grad.abs().sum() > 0
    assert model.decoder.layers[0].bert_attn.k_proj.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_beam_search_projects_both_memories_once_per_sentence(toy_data, tiny_bert_dir):
    task, model = build(bert_fused_args(toy_data, tiny_bert_dir))
    task.load_dataset("valid")
    itr = task.get_batch_iterator(task.dataset("valid"), max_sentences=4, seed=1).next_epoch_itr(shuffle=False)
    model.eval()
    make_outputs_peaked(model)
    projections = [attn.k_proj for layer in model.decoder.layers for attn in (layer.encoder_attn, layer.bert_attn)]
    assert_beam_search_matches_full_recompute(model, next(iter(itr)), task.target_dictionary, projections)


@pytest.mark.slow
def test_finetune_bert_trains_bert(toy_data, tiny_bert_dir):
    task, model = build(bert_fused_args(toy_data, tiny_bert_dir, "--finetune-bert"))
    task.load_dataset("valid")
    sample = next(iter(task.get_batch_iterator(task.dataset("valid"), max_sentences=2).next_epoch_itr(shuffle=False)))
    model.train()
    assert model.encoder.bert_encoder.bert.training
    model(**sample["net_input"])[0].logsumexp(-1).mean().backward()
    assert model.encoder.bert_encoder.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def text_checkpoint(toy_data, tmp_path_factory) -> Path:
    """A stock transformer_tiny trained a few updates by the real fairseq-train on the text data."""
    save_dir = tmp_path_factory.mktemp("text_only")
    run_cli(["fairseq-train", toy_data / "text", "--task", "translation", "--arch", "transformer_tiny",
             "--required-batch-size-multiple", "1", "--save-dir", save_dir, *COMMON], env=CLI_ENV)
    return save_dir / "checkpoint_last.pt"


@pytest.mark.slow
def test_warm_start_copies_every_text_only_weight(toy_data, tiny_bert_dir, text_checkpoint):
    text_state = checkpoint_utils.load_checkpoint_to_cpu(str(text_checkpoint))["model"]
    _, cold = build(bert_fused_args(toy_data, tiny_bert_dir))
    _, model = build(bert_fused_args(toy_data, tiny_bert_dir, "--warmstart-from", text_checkpoint))
    state = model.state_dict()
    for name, value in text_state.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)
    assert not torch.equal(cold.state_dict()["encoder.layers.0.fc1.weight"], text_state["encoder.layers.0.fc1.weight"])
    new = [k for k in state if k not in text_state]
    assert any(".bert_attn." in k for k in new) and any(".encoder_attn2." in k for k in new)
    for name in new:  # what the text model lacks is as built: BERT attentions initialised, BERT pre-trained
        torch.testing.assert_close(state[name], cold.state_dict()[name], rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="not a text-only transformer of this architecture"):
        build(bert_fused_args(toy_data, tiny_bert_dir, "--warmstart-from", text_checkpoint,
                              "--encoder-layers", "3"))
    with pytest.raises(ValueError, match="one weight in this model but differ in the checkpoint"):
        build(bert_fused_args(toy_data, tiny_bert_dir, "--warmstart-from", text_checkpoint,
                              "--share-decoder-input-output-embed"))


@pytest.mark.slow
def test_train_warm_started_and_generate_with_the_clis(toy_data, tiny_bert_dir, text_checkpoint, tmp_path):
    from transformers import BertModel

    save_dir = tmp_path / "bert_fused"
    train = run_cli(["fairseq-train", toy_data / "text", "--user-dir", USER_DIR, "--task", "bert_fused_translation",
                     "--bert-model", tiny_bert_dir, "--arch", "bert_fused_tiny", "--warmstart-from", text_checkpoint,
                     "--save-dir", save_dir, *COMMON], env=CLI_ENV)
    assert f"warm start from {text_checkpoint}" in train.stdout
    checkpoint = checkpoint_utils.load_checkpoint_to_cpu(str(save_dir / "checkpoint_last.pt"))
    assert checkpoint["cfg"]["model"].warmstart_from is None  # the weights now live in this checkpoint
    text_state = checkpoint_utils.load_checkpoint_to_cpu(str(text_checkpoint))["model"]
    trained = checkpoint["model"]
    assert not torch.equal(trained["decoder.layers.0.fc1.weight"], text_state["decoder.layers.0.fc1.weight"])
    bert = BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False).state_dict()
    for name, value in bert.items():  # frozen: BERT leaves training as it came
        torch.testing.assert_close(trained["encoder.bert_encoder.bert." + name], value, rtol=0, atol=0)

    result = run_cli(["fairseq-generate", toy_data / "text", "--user-dir", USER_DIR,
                      "--task", "bert_fused_translation", "--bert-model", tiny_bert_dir, "-s", "en", "-t", "de",
                      "--path", save_dir / "checkpoint_last.pt", "--gen-subset", "test2016", "--beam", "5",
                      "--batch-size", "64", "--max-len-a", "1", "--max-len-b", "5", "--cpu", "--num-workers", "0"],
                     env=CLI_ENV)
    hypotheses = [line for line in result.stdout.splitlines() if line.startswith("H-")]
    test_lines = (toy_data / "raw" / "test2016.en").read_text(encoding="utf-8").splitlines()
    assert len(hypotheses) == len(test_lines) == 200
    assert sorted(int(line.split("\t")[0][2:]) for line in hypotheses) == list(range(200))
