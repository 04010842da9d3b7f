"""vlp-mmt-average-checkpoints on fairseq-style checkpoints (Namespace args, DictConfig cfg)."""

import argparse
import collections
import datetime
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from utils import REPO_ROOT
from vlp_mmt_fairseq.cli.average_checkpoints import CheckpointError, average_checkpoints, load_checkpoint_safely


def fake_checkpoint(path: Path, seed: int, num_updates: int, weight_shape=(6, 4)) -> dict:
    """What fairseq writes: model weights (fp16 and fp32), args, cfg and training state."""
    generator = torch.Generator().manual_seed(seed)
    model = collections.OrderedDict(
        [
            ("encoder.embed.weight", torch.randn(*weight_shape, generator=generator).half()),
            ("decoder.fc.bias", torch.randn(4, generator=generator)),
            ("decoder.version", torch.tensor([3.0])),
            ("encoder.bn.num_batches_tracked", torch.tensor(num_updates)),
        ]
    )
    state = {
        "args": argparse.Namespace(arch="vlp_mmt", lr=[0.0005], max_tokens=4096, fp16=True),
        # fairseq's load_checkpoint_to_cpu turns "cfg" into a DictConfig; re-saved checkpoints keep it.
        "cfg": OmegaConf.create(
            {
                "model": {"_name": "vlp_mmt", "dropout": 0.3},
                "optimization": {"lr": [0.0005], "max_epoch": 0},
                "checkpoint": {"save_dir": "checkpoints", "no_epoch_checkpoints": False},
                "task": None,
            }
        ),
        "model": model,
        "optimizer_history": [
            {"criterion_name": "LabelSmoothed", "optimizer_name": "Adam", "num_updates": num_updates}
        ],
        "extra_state": {
            "epoch": seed,
            "train_iterator": {"epoch": seed, "iterations_in_epoch": 0},
            # fairseq's saved meters: with --eval-bleu they hold numpy arrays and scalars
            "metrics": {"valid": [("_bleu_counts_0", "AverageMeter", {"val": np.array([3, 1]),
                                                                       "sum": np.array([7.5]),
                                                                       "count": np.float64(2.0)})]},
        },
        "last_optimizer_state": {"state": {}, "param_groups": [{"lr": 0.0005}]},
    }
    torch.save(state, path)
    return state


@pytest.mark.slow
def test_average_of_last_epoch_checkpoints(tmp_path):
    states = [fake_checkpoint(tmp_path / f"checkpoint{epoch}.pt", epoch, 100 * epoch) for epoch in (1, 2, 3)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlp_mmt_fairseq.cli.average_checkpoints",
            "--input-dir",
            str(tmp_path),
            "--num-epoch-checkpoints",
            "2",
            "--output",
            str(tmp_path / "avg.pt"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    averaged = load_checkpoint_safely(str(tmp_path / "avg.pt"))
    second, third = states[1]["model"], states[2]["model"]
    for key in ("encoder.embed.weight", "decoder.fc.bias", "decoder.version"):
        expected = ((second[key].float() + third[key].float()) / 2).to(third[key].dtype)
        assert averaged["model"][key].dtype == third[key].dtype
        assert torch.equal(averaged["model"][key], expected), key
    assert not torch.equal(averaged["model"]["encoder.embed.weight"], third["encoder.embed.weight"])
    # Integer buffers and everything outside "model" come from the newest checkpoint (epoch 3).
    assert torch.equal(averaged["model"]["encoder.bn.num_batches_tracked"], torch.tensor(300))
    assert isinstance(averaged["cfg"], DictConfig) and averaged["cfg"].model.dropout == 0.3
    assert averaged["args"] == states[2]["args"]
    assert averaged["optimizer_history"][-1]["num_updates"] == 300
    assert averaged["extra_state"]["epoch"] == 3
    assert sorted(os.listdir(tmp_path)) == ["avg.pt", "checkpoint1.pt", "checkpoint2.pt", "checkpoint3.pt"]


def test_newest_is_chosen_by_updates_not_by_order(tmp_path):
    fake_checkpoint(tmp_path / "late.pt", 7, num_updates=900)
    fake_checkpoint(tmp_path / "early.pt", 8, num_updates=100)
    state, newest = average_checkpoints([str(tmp_path / "late.pt"), str(tmp_path / "early.pt")])
    assert newest == str(tmp_path / "late.pt")
    assert state["optimizer_history"][-1]["num_updates"] == 900


def test_shape_mismatch_names_both_files(tmp_path):
    fake_checkpoint(tmp_path / "a.pt", 1, 100)
    fake_checkpoint(tmp_path / "b.pt", 2, 200, weight_shape=(7, 4))
    with pytest.raises(CheckpointError, match=r"encoder\.embed\.weight.*\(7, 4\) in .*b\.pt.*\(6, 4\) in .*a\.pt"):
        average_checkpoints([str(tmp_path / "a.pt"), str(tmp_path / "b.pt")])


def test_missing_key_names_both_files(tmp_path):
    fake_checkpoint(tmp_path / "a.pt", 1, 100)
    state = fake_checkpoint(tmp_path / "b.pt", 2, 200)
    del state["model"]["decoder.fc.bias"]
    torch.save(state, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"b\.pt and .*a\.pt hold different parameters.*decoder\.fc\.bias"):
        average_checkpoints([str(tmp_path / "a.pt"), str(tmp_path / "b.pt")])


def test_unsafe_pickle_is_refused(tmp_path):
    state = fake_checkpoint(tmp_path / "a.pt", 1, 100)
    state["extra_state"]["elapsed"] = datetime.timedelta(seconds=5)  # a class outside the allow-list
    torch.save(state, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match=r"unsafe\.pt: refused by safe loading.*datetime\.timedelta"):
        load_checkpoint_safely(str(tmp_path / "unsafe.pt"))


def test_eval_bleu_metrics_load_safely(tmp_path):
    """The numpy arrays and scalars of --eval-bleu's saved meters are allow-listed."""
    state = fake_checkpoint(tmp_path / "a.pt", 1, 100)
    loaded = load_checkpoint_safely(str(tmp_path / "a.pt"))
    meters = loaded["extra_state"]["metrics"]["valid"][0][2]
    np.testing.assert_array_equal(meters["val"], state["extra_state"]["metrics"]["valid"][0][2]["val"])
    assert meters["count"] == 2.0
