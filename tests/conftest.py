"""Shared pytest fixtures."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """Multi30K task1 text: ``$MULTI30K_DIR``, else ``../shared/multi30k`` beside the repository."""
    path = Path(os.environ.get("MULTI30K_DIR") or REPO_ROOT.parent / "shared" / "multi30k")
    if not (path / "raw" / "train.en.gz").exists():
        pytest.fail(f"Multi30K not found at {path}: set MULTI30K_DIR to a Multi30K data/task1 folder")
    return path


@pytest.fixture(scope="session")
def prepared_multi30k_en_de(multi30k_dir, tmp_path_factory) -> Path:
    """The real Multi30K en-de prepared once per session by preprocess/prepare_multi30k.py (all splits)."""
    out = tmp_path_factory.mktemp("multi30k") / "en-de"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "preprocess" / "prepare_multi30k.py"),
         "--multi30k-dir", str(multi30k_dir), "--src", "en", "--tgt", "de", "--out", str(out), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out
