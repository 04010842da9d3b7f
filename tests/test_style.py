"""The project's style: ruff (configured in pyproject.toml) finds nothing in the code."""
import subprocess
import sys

import pytest

from utils import REPO_ROOT

CHECKED = ("vlp_mmt_fairseq", "tests", "examples", "benchmarks", "preprocess")


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                             *CHECKED], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert "No module named ruff" not in result.stdout, "install the test extra: pip install -e .[test]"
    if result.returncode != 0:
        pytest.fail(f"ruff check {' '.join(CHECKED)} found (fix with ruff check --fix FILE):\n{result.stdout}",
                    pytrace=False)
