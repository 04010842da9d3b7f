"""The BERT-fused NMT baseline: task batches, drop-net, incremental decoding, and the real CLIs
(stock transformer, then bert_fused warm-started from it, then beam search)."""
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models.transformer import TransformerConfig

from conftest import run_cli
from vlp_mmt_fairseq.models.bert_fused import BertFusedDecoderLayer, BertFusedEncoderLayer

REPO_ROOT = Path(__file__).resolve().parent.parent
USER_DIR = REPO_ROOT / "vlp_mmt_fairseq"
# one OpenMP thread per CLI: on a shared, loaded 2-core machine more threads make a tiny model
# many times slower (they spin waiting for each other)
CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMMON = ["-s", "en", "-t", "de", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2000",
          "--max-update", "4", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
          "--num-workers", "0", "--cpu", "--seed", "1", "--no-epoch-checkpoints"]


def bert_fused_args(toy_data, tiny_bert_dir, *extra):
    return [str(toy_data / "text"), "--user-dir", str(USER_DIR), "--task", "bert_fused_translation",
            "--bert-model", str(tiny_bert_dir), "--arch", "bert_fused_tiny", "-s", "en", "-t", "de",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--dropout", "0",
            *map(str, extra)]


def setup(args, build_model=True):
    parsed = options.parse_args_and_arch(options.get_training_parser(), args)
    cfg = convert_namespace_to_omegaconf(parsed)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    return task, (task.build_model(cfg.model) if build_model else None)


# ------------------------------------------------------------------------------------------ data


def test_batches_carry_aligned_bert_tokens_and_lose_nothing(toy_data, tiny_bert_dir):
    task, _ = setup(bert_fused_args(toy_data, tiny_bert_dir), build_model=False)
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


def test_line_count_mismatch_names_both_files(toy_data, tiny_bert_dir, tmp_path):
    bert_dir = tmp_path / "bert"
    bert_dir.mkdir()
    for ext in ("bin", "idx"):  # 200 test sentences posing as the 100 valid ones
        shutil.copy(toy_data / "bert" / f"test2016.en-de.en.{ext}", bert_dir / f"valid.en-de.en.{ext}")
    task, _ = setup(bert_fused_args(toy_data, tiny_bert_dir, "--bert-data", bert_dir), build_model=False)
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


def assert_dropnet(layer, run, own_path, bert_path):
    """Eval: the average of the two attentions; training with p=1: exactly one of them, both occur."""
    layer.eval()
    torch.testing.assert_close(run(), ffn_block(layer, own_path(0.5) + bert_path(0.5)))
    assert not torch.allclose(own_path(1.0), bert_path(1.0))  # two really different paths
    only_own, only_bert = ffn_block(layer, own_path(1.0)), ffn_block(layer, bert_path(1.0))
    layer.train()
    chosen = []
    for seed in range(16):
        torch.manual_seed(seed)
        out = run()
        is_own, is_bert = torch.allclose(out, only_own), torch.allclose(out, only_bert)
        assert is_own != is_bert, "in training with p=1 a layer uses exactly one of its two attentions"
        chosen.append(is_own)
    assert any(chosen) and not all(chosen)
    layer.dropnet = 0.0  # p=0: the average in training too
    torch.testing.assert_close(run(), ffn_block(layer, own_path(0.5) + bert_path(0.5)))


@torch.no_grad()
def test_dropnet_encoder_layer():
    cfg = layer_config()
    layer = BertFusedEncoderLayer(cfg, bert_dim=24, dropnet=1.0)
    x, pad, bert, bert_pad = memories()
    own = layer.self_attn(query=x, key=x, value=x, key_padding_mask=pad)[0]
    fused = layer.bert_attn(query=x, key=bert, value=bert, key_padding_mask=bert_pad)[0]

    def own_path(w):  # the residual half of the attention sub-layer, weight w on self-attention
        return x + w * own if w == 1.0 else w * own

    def bert_path(w):
        return layer.self_attn_layer_norm(x + w * fused) if w == 1.0 else w * fused

    def mix(w_own, w_bert):
        return layer.self_attn_layer_norm(x + w_own * own + w_bert * fused)

    assert_dropnet(layer, lambda: layer(x, pad, bert, bert_pad),
                   own_path=lambda w: mix(w, 0.0) if w == 1.0 else mix(0.5, 0.5) / 2,
                   bert_path=lambda w: mix(0.0, w) if w == 1.0 else mix(0.5, 0.5) / 2)


@torch.no_grad()
def test_dropnet_decoder_layer():
    cfg = layer_config()
    layer = BertFusedDecoderLayer(cfg, bert_dim=24, dropnet=1.0)
    y, _, bert, bert_pad = memories(length=4)
    enc, enc_pad, _, _ = memories(length=6)
    future = torch.triu(torch.full((4, 4), float("-inf")), 1)
    h = layer.self_attn_layer_norm(y + layer.self_attn(query=y, key=y, value=y, attn_mask=future)[0])
    to_encoder = layer.encoder_attn(query=h, key=enc, value=enc, key_padding_mask=enc_pad)[0]
    to_bert = layer.bert_attn(query=h, key=bert, value=bert, key_padding_mask=bert_pad)[0]

    def mix(w_enc, w_bert):
        return layer.encoder_attn_layer_norm(h + w_enc * to_encoder + w_bert * to_bert)

    def run():
        return layer(y, enc, enc_pad, bert, bert_pad, self_attn_mask=future)[0]

    assert_dropnet(layer, run,
                   own_path=lambda w: mix(w, 0.0) if w == 1.0 else mix(0.5, 0.5) / 2,
                   bert_path=lambda w: mix(0.0, w) if w == 1.0 else mix(0.5, 0.5) / 2)
