#!/usr/bin/env python3
"""Stage-1 epoch time with and without ``--cache-frozen-encoder``, for a bert-base-sized and the MiniLM encoder.

Stage 1 (``--freeze-bert --load-vlp``: BERT and FFN(v) frozen) of vlp_mmt_base trains on the first
``--sentences`` Multi30K valid sentences with synthetic image features (36 x 2048, 10 tags). Two
trainers run side by side, epoch by epoch (plain 1, cached 1, plain 2, cached 2): the cached one
fills its cache in epoch 1 and reuses it in epoch 2. The bert-base-sized encoder (12 x 768) has
random weights (timing does not depend on them). Goal: a cached epoch at least 2x faster than a
plain one with the bert-base-sized encoder.

    python benchmarks/frozen_cache.py [--sentences 64] [--encoders bert-base minilm]
"""
import time
from pathlib import Path

import torch

import common


def vlp_export(work: Path, name: str, bert_dir: str, random_weights: bool) -> Path:
    """A --load-vlp directory: the BERT (random or its own weights) and a random FFN(v) for 2048-dim features."""
    from transformers import BertConfig, BertModel

    from vlp_mmt_fairseq.bert_export import export_encoder
    from vlp_mmt_fairseq.bert_loading import resolve_bert_path
    from vlp_mmt_fairseq.modules.visual_projection import VisualProjection

    out = work / f"vlp-{name}"
    if not (out / "config.json").exists():
        common.log(f"writing the --load-vlp directory {out}")
        torch.manual_seed(0)
        path = resolve_bert_path(bert_dir)
        bert = (BertModel(BertConfig.from_pretrained(path), add_pooling_layer=False) if random_weights
                else BertModel.from_pretrained(path, add_pooling_layer=False))
        export_encoder(bert, VisualProjection(2048, bert.config.hidden_size), str(out), bert_dir)
    return out


def run_epoch(trainer, epoch_itr):
    """One training epoch as fairseq-train runs it; (seconds, the next epoch's iterator)."""
    start = time.perf_counter()
    trainer.begin_epoch(epoch_itr.epoch)
    for sample in epoch_itr.next_epoch_itr(shuffle=True):
        trainer.train_step([sample])
    trainer.lr_step(epoch_itr.epoch)
    seconds = time.perf_counter() - start
    return seconds, trainer.get_train_iterator(epoch_itr.next_epoch_idx, load_dataset=False)


def compare(data, store, split, bert_model, export, max_tokens, extra=()):
    from vlp_mmt_fairseq.trainer_setup import build_trainer

    args = common.vlp_mmt_args(data, store, bert_model, "--freeze-bert", "--load-vlp", export, "--max-tokens",
                               max_tokens, "--train-subset", split, *extra)
    _, _, plain = build_trainer(args)
    _, _, cached = build_trainer(args + ["--cache-frozen-encoder"])
    plain_itr = plain.get_train_iterator(epoch=1, load_dataset=True)
    cached_itr = cached.get_train_iterator(epoch=1, load_dataset=True)
    seconds = {}
    for epoch in (1, 2):
        common.log(f"{bert_model}: epoch {epoch} without the cache")
        seconds[f"plain {epoch}"], plain_itr = run_epoch(plain, plain_itr)
        common.log(f"{bert_model}: epoch {epoch} with the cache")
        seconds[f"cached {epoch}"], cached_itr = run_epoch(cached, cached_itr)
    cache = cached.get_model().encoder.cache
    return seconds, cache


def main():
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=64, help="valid sentences an epoch (default: 64)")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--encoders", nargs="+", choices=["bert-base", "minilm"], default=["bert-base", "minilm"])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    common.set_threads(args.threads)

    work = Path(args.work_dir)
    data = common.prepared_multi30k(args.work_dir, args.multi30k_dir)
    store = common.synthetic_store(work / "features_2048x36.h5", common.split_keys(data, ["valid", "test2016"]))
    split = common.subset_split(data, "valid", f"validfirst{args.sentences}", args.sentences)
    encoders = {
        "bert-base": (str(common.bert_base_config_dir(args.work_dir)), True, ["--bert-random-init"]),
        "minilm": (args.bert_model, False, []),
    }
    figures, ratios = {"sentences an epoch": args.sentences, "max_tokens": args.max_tokens}, {}
    for name in args.encoders:
        bert_model, random_weights, extra = encoders[name]
        export = vlp_export(work, name, bert_model, random_weights)
        seconds, cache = compare(data, store, split, bert_model, export, args.max_tokens, extra)
        plain = (seconds["plain 1"] + seconds["plain 2"]) / 2
        for key, value in seconds.items():
            figures[f"{name}: epoch {key} s"] = round(value, 2)
        figures[f"{name}: cache"] = f"{len(cache)} entries, {cache.memory_mb:.1f} MB in memory"
        speedup = plain / seconds["cached 2"]
        goal = " (goal >= 2x: %s)" % ("meets the goal" if speedup >= 2 else "MISSES the goal") \
            if name == "bert-base" else ""
        ratios[f"{name}: cached epoch speed-up"] = f"{speedup:.2f}x{goal}"
        ratios[f"{name}: filling epoch over plain"] = f"{seconds['cached 1'] / seconds['plain 1'] - 1:+.1%}"
    common.report("frozen_cache: stage-1 epochs with --cache-frozen-encoder", figures, ratios, args.json)


if __name__ == "__main__":
    main()
