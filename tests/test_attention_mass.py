"""vlp-mmt-attention-mass: per decoder layer the cross-attention mass on text, tag, region and special positions,
from checkpoints that fairseq-train wrote (a tiny model on the toy corpus)."""
import json
import subprocess

import pytest

from utils import USER_DIR, console_script, run_cli


@pytest.fixture(scope="module")
def text_memory_run(toy_data, toy_corpus, tiny_bert_dir, tmp_path_factory):
    """Two epochs of stage 1 whose decoder never sees the regions (--decoder-memory text)."""
    save_dir = tmp_path_factory.mktemp("mass") / "ckpt"
    run_cli([console_script("fairseq-train"), toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt",
             "--arch", "vlp_mmt_tiny", "--criterion", "vlp_mmt_loss", "--modality-loss", "off",
             "--decoder-memory", "text", "--bert-model", tiny_bert_dir, "--image-features", toy_corpus / "features.h5",
             "--freeze-bert", "--optimizer", "adam", "--lr", "2e-3", "--max-tokens", "2000", "--max-epoch", "2",
             "--train-subset", "valid", "--valid-subset", "test2016", "--save-dir", save_dir, "--cpu",
             "--num-workers", "0", "--seed", "1"])
    return save_dir


def mass_command(toy_data, toy_corpus, tiny_bert_dir, prefix, *checkpoints):
    return [console_script("vlp-mmt-attention-mass"), toy_data / "bert", "--task", "vlp_mmt",
            "--bert-model", tiny_bert_dir, "--image-features", toy_corpus / "features.h5", "--gen-subset", "valid",
            "--max-tokens", "2000", "--cpu", "--num-workers", "0", "--output-prefix", prefix,
            *[a for c in checkpoints for a in ("--checkpoint", c)]]


@pytest.mark.slow
def test_masses_sum_to_one_and_hidden_regions_get_none(text_memory_run, toy_data, toy_corpus, tiny_bert_dir, tmp_path):
    prefix = tmp_path / "out" / "mass"
    run_cli(mass_command(toy_data, toy_corpus, tiny_bert_dir, prefix, f"first={text_memory_run / 'checkpoint1.pt'}",
                         f"last={text_memory_run / 'checkpoint_last.pt'}"))
    results = json.loads(prefix.with_suffix(".json").read_text())
    assert list(results) == ["first", "last"]
    for result in results.values():
        assert result["sentences"] == 100 and result["tokens"] > 100 and len(result["layers"]) == 2
        for layer in result["layers"]:
            assert sum(layer.values()) == pytest.approx(1.0, abs=1e-4)
            assert layer["region"] == 0 and layer["pad"] == 0  # the decoder cannot see the regions
            assert layer["text"] > 0 and layer["tag"] > 0 and layer["special"] > 0
    assert results["first"]["layers"] != results["last"]["layers"]  # training moved the attention
    rows = prefix.with_suffix(".tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["checkpoint", "layer", "text", "tag", "region", "special", "tokens"]
    assert len(rows) == 1 + 2 * 2
    assert prefix.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_missing_checkpoint_is_one_line_of_error(toy_data, toy_corpus, tiny_bert_dir, tmp_path):
    prefix = tmp_path / "mass"
    result = subprocess.run([str(a) for a in mass_command(toy_data, toy_corpus, tiny_bert_dir, prefix,
                                                          f"a={tmp_path / 'absent.pt'}")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"vlp-mmt-attention-mass: error: checkpoint not found: " \
                                                     f"{tmp_path / 'absent.pt'}"
    assert not list(tmp_path.glob("mass*"))
