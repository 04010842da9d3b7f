"""Distributed training through fairseq: 2 CPU ranks with gloo against 1 process with --update-freq 2."""
import json
import sys

import pytest
import torch

from utils import PROBE, USER_DIR, finish, free_port, start

UPDATES = 4


def train_args(toy_data, toy_corpus, bert_dir):
    """Stage 2 (BERT trains), dropout 0, 8 sentences a batch, a data-loading worker per process."""
    return [
        toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt",
        "--arch", "vlp_mmt_tiny", "--criterion", "vlp_mmt_loss", "--label-smoothing", "0.1",
        "--bert-model", bert_dir, "--image-features", toy_corpus / "features.h5", "--max-regions", "6",
        "--dropout", "0", "--optimizer", "adam", "--lr", "1e-3", "--max-sentences", "8",
        "--max-update", UPDATES, "--train-subset", "valid", "--disable-validation", "--no-save",
        "--num-workers", "1", "--cpu", "--seed", "1", "--log-format", "json", "--log-interval", "1",
    ]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_with_update_freq_2(toy_data, toy_corpus, tiny_bert_no_dropout_dir,
                                                             tmp_path):
    args = train_args(toy_data, toy_corpus, tiny_bert_no_dropout_dir)
    distributed = ["--distributed-world-size", "2", "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}",
                   "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]
    probe = [sys.executable, PROBE]
    runs = {
        "rank0": start(probe + [tmp_path / "dist"] + args + distributed + ["--distributed-rank", "0"],
                       tmp_path / "rank0.log"),
        "rank1": start(probe + [tmp_path / "dist"] + args + distributed + ["--distributed-rank", "1"],
                       tmp_path / "rank1.log"),
        # the same batches per update: rank r takes every other batch, --update-freq 2 takes two in a row
        "single": start(probe + [tmp_path / "single"] + args + ["--update-freq", "2"], tmp_path / "single.log"),
    }
    logs = {name: finish(run, tmp_path / f"{name}.log") for name, run in runs.items()}
    assert "distributed init (rank 0)" in logs["rank0"] and "training on 2 devices" in logs["rank0"]

    losses = {name: json.loads((tmp_path / f"{name}.json").read_text())
              for name in ("dist.rank0", "dist.rank1", "single.rank0")}
    assert [r["update"] for r in losses["single.rank0"]] == list(range(1, UPDATES + 1))
    assert losses["single.rank0"][-1]["loss"] < losses["single.rank0"][0]["loss"]  # it trains
    for name in ("dist.rank0", "dist.rank1"):
        assert len(losses[name]) == UPDATES
        for got, want in zip(losses[name], losses["single.rank0"]):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-4), (name, got, want)

    rank0, rank1 = torch.load(tmp_path / "dist.rank0.pt"), torch.load(tmp_path / "dist.rank1.pt")
    single = torch.load(tmp_path / "single.rank0.pt")
    assert rank0.keys() == rank1.keys() == single.keys()
    assert any(k.startswith("criterion.") for k in rank0)  # the modality gate is trained and synchronised too
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ in {name}"
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=1e-6, msg=name)
