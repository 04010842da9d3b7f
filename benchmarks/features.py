#!/usr/bin/env python3
"""Feature reading: its share of a training step, and the reader's memory with a small and a large store.

1. Share of step time. A stage-2 vlp_mmt (MiniLM) trains on Multi30K valid sentences whose images
   come from a synthetic store (36 regions x 2048 features, 10 tags), with fairseq's default of one
   data-loading worker. The time the training loop waits for its next batch, over the time of the
   whole loop, is the share that feature reading costs. For reference, the time to read and collate
   a batch in the main process (``--num-workers 0``) is given too. Goal: at most 5%.
2. Memory. In a fresh process each, the reader (FeatureStore + ImageDataset, as training uses
   them) reads the same number of images from a 1k-image and from a 50k-image store, both written by
   the synthetic generator. Goal: resident memory within 100 MB of each other.

    python benchmarks/features.py [--batches 6] [--reads 5000]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import common


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory_probe(store: str, reads: int) -> None:
    """In this (fresh) process: open ``store`` as training does and read ``reads`` images; print RSS figures."""
    from vlp_mmt_fairseq.data.feature_store import FeatureStore
    from vlp_mmt_fairseq.data.image_dataset import ImageDataset

    before = resident_mb()
    reader = FeatureStore(store, max_regions=36, max_tags=20)
    keys = np.array(sorted(reader.keys()), dtype=bytes)
    images = ImageDataset(keys, reader, tag_encoder=None, sep=102, pad=0)
    opened = resident_mb()
    order = np.random.default_rng(0).integers(0, len(keys), size=reads)
    start = time.perf_counter()
    for i in order:
        images[int(i)]
    seconds = time.perf_counter() - start
    print(json.dumps({"images": len(keys), "rss_before_mb": before, "rss_open_mb": opened,
                      "rss_after_reads_mb": resident_mb(), "read_us": 1e6 * seconds / reads}))


def held_reads(store: str, reads: int):
    """Microseconds per image: read from ``store``, then again from memory (``--image-memory-mb``)."""
    from vlp_mmt_fairseq.data.feature_store import FeatureStore

    reader = FeatureStore(store, max_regions=36, max_tags=20, memory_mb=1024)
    keys = sorted(reader.keys())[:reads]
    times = []
    for _ in range(2):
        start = time.perf_counter()
        for key in keys:
            reader.get(key)
        times.append(1e6 * (time.perf_counter() - start) / len(keys))
    return times


def reading_share(data, store, bert_model: str, max_tokens: int, batches: int, warmup: int):
    """(seconds waiting for batches, seconds in training steps, seconds reading a batch in-process) per batch."""
    from vlp_mmt_fairseq.trainer_setup import build_trainer

    cfg, task, trainer = build_trainer(common.vlp_mmt_args(data, store, bert_model, "--max-tokens", max_tokens))
    task.load_dataset("valid")
    workers = cfg.dataset.num_workers  # fairseq's default: 1
    common.log(f"training {warmup + batches} steps with {workers} data-loading worker(s)")
    loader = task.get_batch_iterator(task.dataset("valid"), max_tokens=max_tokens, seed=1,
                                     num_workers=workers).next_epoch_itr(shuffle=True)
    wait = step = 0.0
    for i in range(warmup + batches):
        start = time.perf_counter()
        sample = next(loader)
        got = time.perf_counter()
        trainer.train_step([sample])
        done = time.perf_counter()
        if i >= warmup:
            wait, step = wait + got - start, step + done - got
    common.log("reading the same number of batches in the main process")
    inline = task.get_batch_iterator(task.dataset("valid"), max_tokens=max_tokens, seed=1,
                                     num_workers=0).next_epoch_itr(shuffle=True)
    start = time.perf_counter()
    for _ in range(warmup + batches):
        next(inline)
    read = (time.perf_counter() - start) / (warmup + batches)
    return wait / batches, step / batches, read, workers


def main():
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--batches", type=int, default=6, help="measured training steps (default: 6)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reads", type=int, default=5000, help="images read for the memory figure")
    parser.add_argument("--small", type=int, default=1000, help="images in the small store (default: 1000)")
    parser.add_argument("--large", type=int, default=50000, help="images in the large store (default: 50000)")
    parser.add_argument("--store-dim", type=int, default=64,
                        help="feature size of the memory stores (default: 64; the region count stays 36)")
    parser.add_argument("--memory-probe", nargs=2, metavar=("STORE", "READS"), help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    common.set_threads(args.threads)
    if args.memory_probe:
        return memory_probe(args.memory_probe[0], int(args.memory_probe[1]))

    work = Path(args.work_dir)
    data = common.prepared_multi30k(args.work_dir, args.multi30k_dir)
    store = common.synthetic_store(work / "features_2048x36.h5", common.split_keys(data, ["valid", "test2016"]))
    wait, step, read, workers = reading_share(data, store, args.bert_model, args.max_tokens, args.batches,
                                              args.warmup)

    memory = {}
    for count in (args.small, args.large):
        path = common.synthetic_store(work / f"memory_{count}x{args.store_dim}.h5",
                                      [f"img{i:06d}" for i in range(count)], feature_dim=args.store_dim)
        output = subprocess.run([sys.executable, __file__, "--memory-probe", str(path), str(args.reads)],
                                stdout=subprocess.PIPE, text=True, check=True).stdout
        memory[count] = json.loads(output.strip().splitlines()[-1])
        memory[count]["store_mb"] = round(os.path.getsize(path) / 2 ** 20, 1)

    from_file, from_memory = held_reads(store, args.reads)
    share = wait / (wait + step)
    inline_share = read / (read + step)
    small, large = memory[args.small], memory[args.large]
    growth = large["rss_after_reads_mb"] - small["rss_after_reads_mb"]
    figures = {
        "training step (stage 2, MiniLM, --max-tokens %d) s/batch" % args.max_tokens: round(step, 3),
        f"waiting for the next batch ({workers} worker) s/batch": round(wait, 4),
        "reading + collating a batch in the main process s/batch": round(read, 4),
    }
    for count, m in memory.items():
        figures[f"store of {count} images ({m['store_mb']} MB)"] = (
            f"RSS {m['rss_before_mb']:.0f} MB before, {m['rss_open_mb']:.0f} MB open, "
            f"{m['rss_after_reads_mb']:.0f} MB after {args.reads} reads; {m['read_us']:.0f} us/image")
    figures["image read (36 x 2048 regions): from the store, then held in memory, us/image"] = (
        f"{from_file:.0f}, {from_memory:.1f}")
    ratios = {
        "image read from the store over from memory": f"{from_file / from_memory:.0f}x",
        f"feature reading share of step time ({workers} worker)":
            f"{share:.2%} (goal <= 5%: {common.verdict(share, 0.05)})",
        "feature reading share without workers (--num-workers 0)": f"{inline_share:.2%}",
        f"resident memory, {args.large} vs {args.small} images":
            f"{growth:+.1f} MB (goal within 100 MB: {common.verdict(abs(growth), 100)})",
    }
    common.report("features: reading share and reader memory", figures, ratios, args.json)


if __name__ == "__main__":
    main()
