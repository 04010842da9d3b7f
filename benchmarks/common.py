"""What the benchmarks share: prepared Multi30K data, synthetic feature stores, fairseq set-up, figures.

Everything is built once in a work directory (``--work-dir``, default ``$TMPDIR/vlp_mmt_benchmarks``)
and reused by later runs: the Multi30K en-de data (``vlp-mmt-prepare-multi30k``), synthetic
feature stores for its images (``vlp_mmt_fairseq.features.synthetic_features``: 36 regions of 2048
features, 10 object tags an image), small splits cut from the valid split, and a bert-base-sized
BERT configuration (random weights).
"""
import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
USER_DIR = REPO_ROOT / "vlp_mmt_fairseq"
SRC, TGT = "en", "de"
TAGS_PER_IMAGE = 10


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "vlp_mmt_benchmarks"),
                        help="where data, stores and models are built once and reused")
    parser.add_argument("--multi30k-dir", default=None, help="Multi30K task1 (default: as prepare_multi30k.py)")
    parser.add_argument("--bert-model", default="bundled-minilm", help="the encoder's BERT (default: MiniLM)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice; 1 is steadier on a busy machine)")
    return parser


def set_threads(threads: Optional[int]) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(command: Sequence, **kwargs) -> str:
    """Run a command, failing with its output when it fails; return its output."""
    command = [str(c) for c in command]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-5000:]}")
    return result.stdout


# ----------------------------------------------------------------------------- data


def prepared_multi30k(work_dir: str, multi30k_dir: Optional[str] = None) -> Path:
    """Multi30K en-de prepared for vlp_mmt (bert/) and the stock translation task (text/)."""
    out = Path(work_dir) / f"multi30k.{SRC}-{TGT}"
    if not (out / "prepare.json").exists():
        log(f"preparing Multi30K {SRC}-{TGT} in {out}")
        command = [sys.executable, REPO_ROOT / "preprocess" / "prepare_multi30k.py", "--src", SRC, "--tgt", TGT,
                   "--out", out, "--splits", "train", "valid", "test2016", "--force"]
        if multi30k_dir:
            command += ["--multi30k-dir", multi30k_dir]
        run(command)
    return out


def split_keys(data: Path, splits: Sequence[str]) -> List[str]:
    from vlp_mmt_fairseq.data.feature_store import read_image_index

    keys = []
    for split in splits:
        keys.extend(k.decode() if isinstance(k, bytes) else str(k) for k in read_image_index(str(data / "bert" /
                                                                                                f"{split}.img.npy")))
    return sorted(set(keys))


def synthetic_store(path: Path, keys: Sequence[str], feature_dim: int = 2048, regions: int = 36,
                    tags: bool = True) -> Path:
    """A synthetic store for ``keys`` (written once), with object tags drawn from the detector's vocabulary."""
    from vlp_mmt_fairseq.features.synthetic_features import write_synthetic_store

    if path.exists():
        return path
    tags_per_key = None
    if tags:
        vocab = (REPO_ROOT.parent / "shared" / "bottom-up-attention" / "objects_vocab.txt")
        words = vocab.read_text().split("\n") if vocab.exists() else ["man", "dog", "ball", "street", "shirt"]
        words = [w.split(",")[0] for w in words if w]
        rng = np.random.default_rng(0)
        tags_per_key = {k: list(rng.choice(words, size=TAGS_PER_IMAGE)) for k in keys}
    log(f"writing {len(keys)} synthetic images ({regions} x {feature_dim}) to {path}")
    write_synthetic_store(str(path), keys, tags_per_key=tags_per_key, feature_dim=feature_dim, num_regions=regions,
                          progress=True)
    return path


def subset_split(data: Path, source: str, target: str, size: int) -> str:
    """The first ``size`` sentences of split ``source`` as split ``target``, in bert/ and text/ (written once)."""
    from fairseq.data import data_utils, indexed_dataset

    if (data / "bert" / f"{target}.img.npy").exists():
        return target
    for folder in ("text", "bert"):
        for lang in (SRC, TGT):
            dataset = data_utils.load_indexed_dataset(str(data / folder / f"{source}.{SRC}-{TGT}.{lang}"), None)
            out = str(data / folder / f"{target}.{SRC}-{TGT}.{lang}")
            builder = indexed_dataset.make_builder(out + ".bin", impl="mmap", vocab_size=1 << 20)
            for i in range(min(size, len(dataset))):
                builder.add_item(dataset[i])
            builder.finalize(out + ".idx")
    np.save(data / "bert" / f"{target}.img.npy", np.load(data / "bert" / f"{source}.img.npy")[:size])
    return target


def bert_base_config_dir(work_dir: str) -> Path:
    """A bert-base-sized BERT (12 layers, 768 wide) with the MiniLM tokenizer: for --bert-random-init."""
    from transformers import BertConfig

    from vlp_mmt_fairseq.bert_loading import BUNDLED_MINILM, resolve_bert_path

    out = Path(work_dir) / "bert-base-random"
    if not (out / "config.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        source = Path(resolve_bert_path(BUNDLED_MINILM))
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (source / name).exists():
                shutil.copy(source / name, out / name)
        BertConfig(vocab_size=30522).save_pretrained(out)  # bert-base's defaults: 12 x 768, 12 heads, 3072
    return out


# ----------------------------------------------------------------------------- fairseq in process


def device_args() -> List[str]:
    """``--cpu`` unless a GPU is there."""
    import torch

    return [] if torch.cuda.is_available() else ["--cpu"]


def synchronize() -> None:
    """Wait for the GPU (if any), so that a timer sees the work done."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def vlp_mmt_args(data: Path, store: Optional[Path], bert_model: str, *extra) -> List[str]:
    """fairseq-train arguments of a vlp_mmt_base model on ``data``."""
    args = [str(data / "bert"), "--user-dir", str(USER_DIR), "--task", "vlp_mmt", "--arch", "vlp_mmt_base",
            "--criterion", "vlp_mmt_loss", "--label-smoothing", "0.1", "--bert-model", str(bert_model),
            "--optimizer", "adam", "--lr", "5e-5", "--seed", "1"] + device_args()
    args += ["--image-features", str(store), "--max-regions", "36"] if store else ["--no-images",
                                                                               "--modality-loss", "off"]
    return args + [str(a) for a in extra]


# ----------------------------------------------------------------------------- figures


def machine() -> Dict[str, object]:
    import torch

    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": os.getloadavg()[0]}


def report(title: str, figures: Dict[str, object], ratios: Dict[str, str], json_out: Optional[str] = None) -> None:
    """Print figures and ratios (and write them as JSON to ``json_out``)."""
    print(f"== {title}")
    print(f"machine: {json.dumps(machine())}")
    for key, value in figures.items():
        print(f"{key}: {value}")
    print("-- ratios")
    for key, value in ratios.items():
        print(f"{key}: {value}")
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"title": title, "machine": machine(), "figures": figures, "ratios": ratios}, f, indent=2,
                      default=str)


def verdict(value: float, goal: float) -> str:
    return "meets the goal" if value <= goal else "MISSES the goal"
