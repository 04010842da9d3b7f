"""Helpers shared by the tests: the repository's paths, the real CLIs, and fairseq-train runs side by side."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

REPO_ROOT = Path(__file__).resolve().parent.parent
#: the plugin, as ``--user-dir`` names it
USER_DIR = str(REPO_ROOT / "vlp_mmt_fairseq")
#: the read-only data beside the repository (/work/shared; see its README)
SHARED_DIR = Path(os.environ.get("VLP_MMT_SHARED") or REPO_ROOT.parent / "shared")
#: runs fairseq-train with observers of the logged losses and gradients (tests/fairseq_train_probe.py)
PROBE = Path(__file__).resolve().parent / "fairseq_train_probe.py"


def console_script(name: str) -> str:
    """A console script (fairseq-train, vlp-mmt-prepare-multi30k, ...) of the environment running the tests."""
    return str(Path(sys.executable).parent / name)


def fairseq_train() -> str:
    return console_script("fairseq-train")


def run_cli(args, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output when it exits non-zero."""
    result = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-6000:]}"
    return result


# ----------------------------------------------------------------------------- runs side by side


def cli_env() -> dict:
    """One intra-op thread per process: runs side by side on 2 cores would otherwise oversubscribe them."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def start(args, log: Path) -> subprocess.Popen:
    """Start a command with its stdout and stderr going to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT, env=cli_env())


def finish(process: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    """Wait for ``process``; fail with the end of its log unless it exited with 0; return the log."""
    process.wait(timeout=timeout)
    text = log.read_text()
    assert process.returncode == 0, f"{' '.join(map(str, process.args))}\n{text[-6000:]}"
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged(text: str, tag: str) -> List[dict]:
    """The json records fairseq logged under ``tag`` (``train_inner``, ``valid``, ``train``)."""
    records = []
    for line in text.splitlines():
        marker = f"| {tag} | "
        if marker in line:
            records.append(json.loads(line.split(marker, 1)[1]))
    return records


def wait_for(predicate, process: subprocess.Popen, log: Path, timeout: float = 300, poll: float = 0.05) -> None:
    """Poll until ``predicate(log text)`` holds; fail if the process ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(log.read_text()):
            return
        assert process.poll() is None, f"the run ended before the awaited point:\n{log.read_text()[-4000:]}"
        time.sleep(poll)
    raise AssertionError(f"timed out waiting:\n{log.read_text()[-4000:]}")
