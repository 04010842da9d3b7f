#!/usr/bin/env python3
"""Resident memory of the ``vlp_pretrain`` caption dataset against the number of captions.

Usage::

    python benchmarks/vlp_caption_memory.py --sizes 10000 100000 1000000 [--workdir DIR] [--json OUT.json]
    python benchmarks/vlp_caption_memory.py --sizes 10000 200000 --reads 500 --one-process   # quick (tests)

For each size N it writes N synthetic captions (random BERT ids, 6-30 tokens, fairseq mmap format)
and an image index (``.npy``) naming 1,000 images of one small feature store, then measures, in a
fresh process, the growth of resident memory (Linux ``/proc/self/status``) when

1. ``load``: the task loads the split (captions and image index memory-mapped);
2. ``read``: ``--reads`` random captions are read and collated into batches (masking, negatives,
   regions and tags from the store);
3. ``batch``: fairseq orders and batches every index (``ordered_indices`` + ``batch_by_size``),
   which any fairseq training does once per epoch.

``anon`` is the process's own memory (heap, tensors, arrays), ``file`` the pages of memory-mapped
files it touched (page cache: shared, clean and reclaimable; it grows with the pages read, not
with N). Steps 1-2 are the dataset; step 3 is fairseq's index arrays, a few bytes per caption.

Each size is measured in a fresh interpreter, after a warm-up on a corpus of 1,000 captions (so the
first-use allocations of torch, h5py and the tokenizer are not counted); ``--one-process`` measures
all sizes in one interpreter, largest first (faster, for tests).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES = 1000
WARMUP_CAPTIONS = 1000
FEATURE_DIM = 64
MB = 1024 * 1024


def rss() -> dict:
    """Resident memory of this process in bytes: anonymous and file-backed."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                name, kb, _ = line.split()
                values[name[:-1]] = int(kb) * 1024
    return {"anon": values["RssAnon"], "file": values["RssFile"] + values.get("RssShmem", 0)}


def write_corpus(directory: str, size: int, store: str, seed: int = 0) -> None:
    """``size`` random captions ``train.en.bin/idx`` and ``train.img.npy`` in ``directory``."""
    import numpy as np
    import torch
    from fairseq.data import indexed_dataset
    from tqdm import tqdm

    from vlp_mmt_fairseq.file_utils import atomic_output

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    prefix = os.path.join(directory, "train.en")
    builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=30522)
    lengths = rng.integers(4, 29, size=size)
    words = rng.integers(1999, 30000, size=int(lengths.sum()), dtype=np.int32)
    start = 0
    for length in tqdm(lengths, desc=f"write {size} captions", unit="caption", mininterval=2):
        caption = np.concatenate([[101], words[start:start + length], [102]]).astype(np.int32)
        builder.add_item(torch.from_numpy(caption))
        start += length
    builder.finalize(prefix + ".idx")
    keys = np.array([f"img{i % NUM_IMAGES:06d}".encode() for i in range(size)])
    with atomic_output(os.path.join(directory, "train.img.npy"), suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, keys)


def write_store(path: str) -> None:
    from vlp_mmt_fairseq.features.synthetic_features import write_synthetic_store

    write_synthetic_store(path, [f"img{i:06d}" for i in range(NUM_IMAGES)],
                          tags_per_key={f"img{i:06d}": ["dog", "grass"] for i in range(NUM_IMAGES)},
                          feature_dim=FEATURE_DIM, num_regions=10)


def measure(directory: str, store: str, reads: int, batch_size: int = 64) -> dict:
    """In this process: memory growth of loading, reading and batching ``directory``'s train split."""
    import gc

    import numpy as np

    from vlp_mmt_fairseq.tasks.vlp_pretrain import VlpPretrainConfig, VlpPretrainTask

    cfg = VlpPretrainConfig(data=directory, image_features=store, max_regions=10, dataset_impl="mmap", seed=1)
    task = VlpPretrainTask.setup_task(cfg)
    task.tag_encoder("dog")  # load the tag tokenizer before measuring
    gc.collect()
    before = rss()
    task.load_dataset("train")
    dataset = task.dataset("train")
    gc.collect()
    loaded = rss()
    rng = np.random.default_rng(0)
    indices = rng.integers(len(dataset), size=reads)
    for start in range(0, reads, batch_size):
        batch = dataset.collater([dataset[int(i)] for i in indices[start:start + batch_size]])
        assert batch["net_input"]["src_tokens"].size(0) > 0
    gc.collect()
    read = rss()
    started = time.time()
    order = dataset.ordered_indices()
    batches = dataset.batch_by_size(order, max_sentences=batch_size)
    assert sum(len(b) for b in batches) == len(dataset)
    batched = rss()
    result = {
        "captions": len(dataset),
        "load": {k: loaded[k] - before[k] for k in before},
        "read": {k: read[k] - before[k] for k in before},
        "batch": {k: batched[k] - read[k] for k in before},
        "batch_seconds": time.time() - started,
    }
    del task, dataset, batches, order
    gc.collect()
    return result


def run_measurements(directories, store: str, reads: int) -> list:
    """:func:`measure` of each directory in turn, in one fresh interpreter, after the warm-up corpus.

    ``directories[0]`` is the warm-up corpus: measured first, not reported.
    """
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--measure", *directories, "--store", store, "--reads", str(reads)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f"measurement of {directories} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--reads", type=int, default=2000, help="random captions read per size (default 2000)")
    parser.add_argument("--workdir", help="where to write the corpora (default: a temporary directory)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--one-process", action="store_true", help="measure every size in one interpreter")
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # child process
        import fairseq  # noqa: F401  (the plugin registers its task only when fairseq is loaded)

        warmup, *directories = args.measure
        measure(warmup, args.store, args.reads)
        print(json.dumps([measure(directory, args.store, args.reads) for directory in directories]))
        return []
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        store = os.path.join(workdir, "features.h5")
        write_store(store)
        warmup = os.path.join(workdir, "captions-warmup")
        write_corpus(warmup, WARMUP_CAPTIONS, store, seed=1)
        directories = {}
        for size in sorted(args.sizes, reverse=True):
            directories[size] = os.path.join(workdir, f"captions-{size}")
            write_corpus(directories[size], size, store)
        if args.one_process:
            results = run_measurements([warmup] + [directories[size] for size in sorted(args.sizes, reverse=True)],
                                       store, args.reads)
        else:
            results = [run_measurements([warmup, directories[size]], store, args.reads)[0] for size in args.sizes]
        results.sort(key=lambda r: r["captions"])
    print(f"{'captions':>10} | {'load anon':>9} | {'read anon':>9} | {'read file':>9} | {'batch anon':>10} "
          "| MiB (growth)")
    for r in results:
        print(f"{r['captions']:>10,} | {r['load']['anon'] / MB:9.1f} | {r['read']['anon'] / MB:9.1f} | "
              f"{r['read']['file'] / MB:9.1f} | {r['batch']['anon'] / MB:10.1f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
