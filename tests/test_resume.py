"""Crash-safe resumption: fairseq-train killed with SIGKILL in stage 2, restarted, finishes as if never stopped."""
import logging
import math
import shutil
import signal

import pytest
import torch

from utils import USER_DIR, fairseq_train, finish, logged, start, wait_for
from vlp_mmt_fairseq.trainer_setup import build_trainer, load_plugin

KILL_AFTER_UPDATE = 6  # after the checkpoint of update 4, before the one of update 8


def model_args(toy_data, toy_corpus, bert_dir):
    return [
        toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt",
        "--arch", "vlp_mmt_tiny", "--criterion", "vlp_mmt_loss", "--label-smoothing", "0.1",
        "--bert-model", bert_dir, "--image-features", toy_corpus / "features.h5", "--max-regions", "6",
        "--dropout", "0", "--optimizer", "adam", "--cpu", "--seed", "1",
    ]


def stage2_args(toy_data, toy_corpus, bert_dir, stage1, save_dir):
    """Stage 2 as the README runs it: from stage 1's checkpoint, with BERT trained (its dropout 0, like
    everything here); a checkpoint every 4 updates, 16 updates in all."""
    return model_args(toy_data, toy_corpus, bert_dir) + [
        "--finetune-from-model", stage1, "--lr", "2e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4",
        "--max-sentences", "16", "--max-update", "16", "--save-interval-updates", "4", "--max-valid-steps", "2",
        "--batch-size-valid", "16", "--save-dir", save_dir, "--num-workers", "0", "--log-format", "json",
        "--log-interval", "1",
    ]


def stage1_checkpoint(toy_data, toy_corpus, bert_dir, path):
    """A stage-1 (frozen BERT) checkpoint, written by fairseq's own Trainer (untrained: stage 2 is tested)."""
    _, _, trainer = build_trainer(model_args(toy_data, toy_corpus, bert_dir) + ["--freeze-bert", "--lr", "1e-3"])
    trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint does first
    trainer.save_checkpoint(str(path), {"val_loss": None})
    return path


def validation_loss(checkpoint) -> float:
    """The label-smoothed loss (bits per token) of a checkpoint on the whole valid split, at full precision."""
    load_plugin()
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    model = models[0].eval()
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset("valid")
    batches = task.get_batch_iterator(task.dataset("valid"), max_sentences=16, seed=1).next_epoch_itr(shuffle=False)
    loss = size = 0.0
    with torch.no_grad():
        for sample in batches:
            batch_loss, batch_size, _ = criterion(model, sample)
            loss, size = loss + float(batch_loss), size + float(batch_size)
    return loss / size / math.log(2)


def loaded_updates(text: str, path) -> int:
    """The update count fairseq reports for the checkpoint it loaded from ``path``."""
    for line in text.splitlines():
        if f"Loaded checkpoint {path} (epoch" in line:
            return int(line.split(" @ ")[1].split(" updates")[0])
    raise AssertionError(f"no 'Loaded checkpoint {path}' in the log:\n{text[-3000:]}")


def truncate_half(path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.slow
def test_sigkill_then_restart_matches_uninterrupted_run(toy_data, toy_corpus, tiny_bert_no_dropout_dir, tmp_path,
                                                        caplog):
    from vlp_mmt_fairseq.compat import CheckpointError, checkpoint_problem

    stage1 = stage1_checkpoint(toy_data, toy_corpus, tiny_bert_no_dropout_dir, tmp_path / "stage1.pt")
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    def stage2(save_dir):
        return stage2_args(toy_data, toy_corpus, tiny_bert_no_dropout_dir, stage1, save_dir)

    uninterrupted = start([fairseq_train()] + stage2(whole), tmp_path / "whole.log")
    command = [fairseq_train()] + stage2(killed)
    first = start(command, tmp_path / "killed.log")

    def past_first_checkpoint(text):
        updates = [int(r["num_updates"]) for r in logged(text, "train_inner")]
        return (killed / "checkpoint_1_4.pt").exists() and updates and updates[-1] >= KILL_AFTER_UPDATE

    wait_for(past_first_checkpoint, first, tmp_path / "killed.log")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    first_log = (tmp_path / "killed.log").read_text()
    assert f"loading pretrained model from {stage1}" in first_log and "done training" not in first_log
    for path in killed.glob("checkpoint*.pt"):  # the writes are atomic: no half-written checkpoint
        assert checkpoint_problem(str(path)) is None, path
    truncated = tmp_path / "truncated"
    shutil.copytree(killed, truncated)

    # the same command again: it resumes from checkpoint_last.pt and finishes the schedule
    restarted = start(command, tmp_path / "restarted.log")

    # meanwhile: a crash in fairseq's (non-atomic) copy leaves a truncated checkpoint_last.pt;
    # resuming skips it, with a warning that names it, for the newest readable checkpoint
    last = truncated / "checkpoint_last.pt"
    truncate_half(last)
    load_plugin()
    from fairseq import checkpoint_utils

    with pytest.raises(CheckpointError, match=str(last)):  # loading it anywhere else: an error naming it
        checkpoint_utils.load_checkpoint_to_cpu(str(last))
    cfg, _, trainer = build_trainer(stage2(truncated))
    with caplog.at_level(logging.WARNING, logger="vlp_mmt_fairseq.compat"):
        checkpoint_utils.load_checkpoint(cfg.checkpoint, trainer)
    assert f"{last}: unreadable" in caplog.text
    assert trainer.get_num_updates() >= 4
    assert cfg.checkpoint.restore_file == "checkpoint_last.pt"  # the configuration is left as it was
    assert cfg.checkpoint.finetune_from_model == str(stage1)

    whole_log = finish(uninterrupted, tmp_path / "whole.log")
    restarted_log = finish(restarted, tmp_path / "restarted.log")
    assert loaded_updates(restarted_log, killed / "checkpoint_last.pt") >= 4  # not stage 1 again
    assert "loading pretrained model" not in restarted_log
    assert "done training" in restarted_log
    assert logged(restarted_log, "train_inner")[-1]["num_updates"] == "16"

    # the same final validation loss as the uninterrupted run: as logged, and at full precision
    assert logged(restarted_log, "valid")[-1]["valid_loss"] == logged(whole_log, "valid")[-1]["valid_loss"]
    assert validation_loss(killed / "checkpoint_last.pt") == pytest.approx(
        validation_loss(whole / "checkpoint_last.pt"), rel=1e-4)
