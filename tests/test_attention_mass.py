"""vlp-mmt-attention-mass on bad input. Its outputs from real checkpoints (per layer, the first and last epoch, the
TSV and the plot) are checked in test_ablation_runner.py, which runs it on each row; the masses themselves, and
that ``--decoder-memory text`` leaves the regions none, in test_ablation_options.py."""
import subprocess

import pytest

from utils import console_script


@pytest.mark.slow
def test_missing_checkpoint_is_one_line_of_error(toy_data, toy_corpus, tiny_bert_dir, tmp_path):
    prefix = tmp_path / "mass"
    result = subprocess.run([console_script("vlp-mmt-attention-mass"), str(toy_data / "bert"), "--task", "vlp_mmt",
                             "--bert-model", str(tiny_bert_dir), "--image-features", str(toy_corpus / "features.h5"),
                             "--gen-subset", "valid", "--cpu", "--output-prefix", str(prefix),
                             "--checkpoint", f"a={tmp_path / 'absent.pt'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"vlp-mmt-attention-mass: error: checkpoint not found: " \
                                                     f"{tmp_path / 'absent.pt'}"
    assert not list(tmp_path.glob("mass*"))
