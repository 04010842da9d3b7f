"""The plugin's own errors reach the user as one line, ``error: <message>``, with a non-zero exit code.

Under the real fairseq-train and fairseq-generate (also when the error comes from a DataLoader worker or a
distributed rank), from torch.multiprocessing.spawn workers, and from the project's console scripts. Errors that
are not the plugin's own keep their traceback, and VLP_MMT_DEBUG=1 keeps it for all.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from utils import USER_DIR, cli_env, console_script, free_port
from vlp_mmt_fairseq.data.feature_store import FeatureStore, FeatureStoreWriter

TRAIN = ["--user-dir", USER_DIR, "--task", "vlp_mmt", "--arch", "vlp_mmt_tiny", "--criterion", "vlp_mmt_loss",
         "--max-regions", "6", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2000", "--cpu",
         "--max-update", "1", "--disable-validation", "--no-save", "--log-format", "simple"]


def run(args, env=None, timeout=300):
    result = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or cli_env(), timeout=timeout)
    return result.returncode, result.stdout + result.stderr, result.stderr.strip().splitlines()


def assert_one_line(returncode, output, stderr_lines, pattern):
    assert returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert stderr_lines and re.fullmatch(pattern, stderr_lines[-1]), output[-3000:]


@pytest.fixture(scope="module")
def store_without_the_images(toy_corpus, tmp_path_factory):
    """A store like the toy corpus's (feature size, extractor) that holds none of its images."""
    toy = FeatureStore(str(toy_corpus / "features.h5"))
    dim = toy.feature_dim
    path = tmp_path_factory.mktemp("bad_store") / "f.h5"
    with FeatureStoreWriter(str(path), feature_dim=dim, extractor=toy.extractor) as writer:
        writer.add("unrelated", np.ones((2, dim)), np.array([[0, 0, 1, 1]] * 2), width=10, height=10)
    return path


def missing_key(store):
    return re.escape(f"error: {store}: image '") + r"[^']+" + re.escape("': key not in the store")


@pytest.mark.slow
def test_fairseq_train_dataloader_worker_error_is_one_line(toy_data, tiny_bert_dir, store_without_the_images):
    result = run([console_script("fairseq-train"), toy_data / "bert", *TRAIN, "--bert-model", tiny_bert_dir,
                  "--image-features", store_without_the_images, "--num-workers", "1"])
    assert_one_line(*result, missing_key(store_without_the_images))


@pytest.mark.slow
def test_fairseq_train_bad_option_is_one_line(toy_data, tiny_bert_dir):
    result = run([console_script("fairseq-train"), toy_data / "bert", *TRAIN, "--bert-model", tiny_bert_dir])
    assert_one_line(*result, re.escape("error: --image-features is required unless --no-images is given"))


@pytest.mark.slow
def test_distributed_ranks_report_one_line(toy_data, tiny_bert_dir, store_without_the_images, tmp_path):
    distributed = ["--distributed-world-size", "2", "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}",
                   "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]
    args = [console_script("fairseq-train"), toy_data / "bert", *TRAIN, "--bert-model", tiny_bert_dir,
            "--image-features", store_without_the_images, "--num-workers", "0", *distributed]
    ranks = [subprocess.Popen([str(a) for a in args + ["--distributed-rank", str(rank)]], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=cli_env()) for rank in (0, 1)]
    for rank in ranks:
        out, err = rank.communicate(timeout=300)
        # torch.distributed prefixes a rank's stderr lines with "[rankN]: "
        assert_one_line(rank.returncode, out + err, err.strip().splitlines(),
                        r"(\[rank\d\]: )?" + missing_key(store_without_the_images))


@pytest.fixture(scope="module")
def checkpoint(toy_data, toy_corpus, tiny_bert_dir, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("one_update")
    args = [a for a in TRAIN if a != "--no-save"]
    code, output, _ = run([console_script("fairseq-train"), toy_data / "bert", *args, "--bert-model", tiny_bert_dir,
                           "--image-features", toy_corpus / "features.h5", "--num-workers", "0",
                           "--save-dir", save_dir, "--no-epoch-checkpoints"])
    assert code == 0, output[-3000:]
    return save_dir / "checkpoint_last.pt"


@pytest.mark.slow
def test_fairseq_generate_error_is_one_line(toy_data, tiny_bert_dir, checkpoint, store_without_the_images):
    result = run([console_script("fairseq-generate"), toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt",
                  "--bert-model", tiny_bert_dir, "--image-features", store_without_the_images, "--max-regions", "6",
                  "--path", checkpoint, "--gen-subset", "test2016", "--beam", "1", "--batch-size", "16", "--cpu",
                  "--num-workers", "1"])
    assert_one_line(*result, missing_key(store_without_the_images))


WORKER = """
from vlp_mmt_fairseq.data.feature_store import FeatureStore


def read_missing(rank, path):
    FeatureStore(path).get("missing")
"""


@pytest.mark.slow
def test_spawned_worker_error_is_one_line(store_without_the_images, tmp_path):
    """fairseq's GPU runs spawn one process per GPU: their errors come back as ProcessRaisedException."""
    (tmp_path / "spawn_worker.py").write_text(WORKER)
    script = ("import sys, torch.multiprocessing as mp, vlp_mmt_fairseq, spawn_worker\n"
              "mp.spawn(spawn_worker.read_missing, args=(sys.argv[1],), nprocs=1)")
    env = dict(cli_env(), PYTHONPATH=str(tmp_path))
    result = run([sys.executable, "-c", script, store_without_the_images], env=env)
    assert_one_line(*result, re.escape(f"error: {store_without_the_images}: image 'missing': key not in the store"))


@pytest.mark.slow
def test_foreign_errors_and_debug_mode_keep_the_traceback(tmp_path):
    from vlp_mmt_fairseq.errors import one_line_message

    store = tmp_path / "absent.h5"
    plugin_error = ("import vlp_mmt_fairseq\nfrom vlp_mmt_fairseq.data.feature_store import FeatureStore\n"
                    f"FeatureStore({str(store)!r})")
    code, output, _ = run([sys.executable, "-c", plugin_error], env=dict(cli_env(), VLP_MMT_DEBUG="1"))
    assert code == 1 and "Traceback" in output and f"FeatureStoreError: {store}: feature store not found" in output
    code, output, _ = run([sys.executable, "-c", "import vlp_mmt_fairseq\nraise KeyError('not ours')"])
    assert code == 1 and "Traceback" in output and "KeyError: 'not ours'" in output
    # a ValueError is the plugin's when the plugin's code raised it, not when numpy did
    with pytest.raises(ValueError) as numpy_error:
        np.zeros(2).reshape(3)
    assert one_line_message(numpy_error.value) is None
    with pytest.raises(ValueError) as plugin_error:
        FeatureStoreWriter(str(tmp_path / "s.h5"), feature_dim=8, extractor="x", dtype="int8")
    expected = f"{tmp_path / 's.h5'}: feature dtype must be float16 or float32, got int8"
    assert one_line_message(plugin_error.value) == expected


@pytest.mark.slow
def test_console_script_refusal_is_one_line(tmp_path):
    """vlp-mmt-tsv-to-store refuses pixel boxes outside the image (once clipped silently), in one line."""
    import base64

    def b64(a):
        return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()

    boxes = np.array([[10, 20, 300, 200], [0, 0, 500, 450]], np.float32)  # the second is below a 375-pixel image
    line = "\t".join(["img1", "375", "500", b64(np.zeros(2, np.int64)), b64(np.ones(2, np.float32)),
                      b64(np.zeros(2, np.int64)), b64(np.zeros(2, np.float32)), "2", b64(boxes),
                      b64(np.ones((2, 4), np.float32))])
    tsv, vocab, out = tmp_path / "d.tsv", tmp_path / "vocab.txt", tmp_path / "out.h5"
    tsv.write_text(line + "\n")
    vocab.write_text("thing\n")
    result = run([console_script("vlp-mmt-tsv-to-store"), "--tsv", tsv, "--objects-vocab", vocab, "--output", out,
                  "--no-progress"])
    assert_one_line(*result, re.escape(f"error: {tsv}:1: region 1's box") + ".*" +
                    re.escape("lies outside the 500 x 375 image (width and height swapped?)"))
    assert sorted(os.listdir(tmp_path)) == ["d.tsv", "vocab.txt"]  # no store, no temporary file
