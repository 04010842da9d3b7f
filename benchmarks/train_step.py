#!/usr/bin/env python3
"""Training throughput of vlp_mmt in stage 2 against the sum of its parts, and the cost of the modality loss.

On the same batches (Multi30K valid sentences with synthetic image features) it times, batch after
batch, each of (in an order that rotates from batch to batch, so that machine noise and order
effects fall on all of them alike):

* ``bert``: BERT alone (its embeddings and layers), forward + backward, on the same text and the same
  region vectors;
* ``decoder``: the transformer decoder alone with label-smoothed cross entropy, forward + backward,
  attending to a fixed encoder output;
* ``model``: the whole model with label-smoothed cross entropy (``--modality-loss off``);
* ``model+modality``: the whole model with the modality loss (``--modality-loss last``);
* ``modality``: the modality loss alone, forward + backward, on the same decoder queries, keys
  and values as the model produces them (a direct figure for its cost, where the difference of
  two noisy whole-model times is too coarse);
* ``update`` (with ``--with-update``): fairseq's complete training update (``Trainer.train_step``:
  the modality loss, Adam, gradient norm), for reference.

Besides the times, it counts each variant's floating-point operations on the first batch
(``torch.utils.flop_counter``: matrix products, forward and backward), which machine noise
cannot touch. Goals: ``model`` at most 10% over ``bert + decoder``; ``model+modality`` at most 5%
over ``model``.

    python benchmarks/train_step.py [--bert-model bundled-minilm] [--max-tokens 256] [--batches 8]
"""
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import common
from vlp_mmt_fairseq.modules.text_packing import pack_text
from vlp_mmt_fairseq.trainer_setup import build_trainer


def timed(fn) -> float:
    common.synchronize()
    start = time.perf_counter()
    fn()
    common.synchronize()
    return time.perf_counter() - start


def main():
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens a batch (default: 256)")
    parser.add_argument("--batches", type=int, default=8, help="measured batches (default: 8)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured batches first (default: 1)")
    parser.add_argument("--with-update", action="store_true", help="also time fairseq's whole training update")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    common.set_threads(args.threads)

    data = common.prepared_multi30k(args.work_dir, args.multi30k_dir)
    store = common.synthetic_store(Path(args.work_dir) / "features_2048x36.h5",
                                   common.split_keys(data, ["valid", "test2016"]))
    argv = common.vlp_mmt_args(data, store, args.bert_model, "--max-tokens", args.max_tokens)
    cfg, task, trainer = build_trainer(argv)
    model, with_modality = trainer.get_model(), trainer.get_criterion()
    cfg.criterion.modality_loss = "off"
    without_modality = task.build_criterion(cfg.criterion)
    encoder, decoder = model.encoder, model.decoder

    task.load_dataset("valid")
    itr = task.get_batch_iterator(task.dataset("valid"), max_tokens=args.max_tokens, seed=1)
    batches = [b for _, b in zip(range(args.warmup + args.batches), itr.next_epoch_itr(shuffle=True))]
    model.train()

    def bert_input(sample):
        """BERT's text input and the (fixed) region embeddings, computed beforehand: FFN(v) is not BERT."""
        net, dictionary = sample["net_input"], encoder.dictionary
        tokens, segments, _ = pack_text(net["src_tokens"], net["tag_tokens"], dictionary.pad(), dictionary.eos(),
                                        dictionary.bos())
        regions = encoder.visual(net["region_features"], net["region_boxes"])
        return tokens, segments, regions, torch.cat([tokens.ne(dictionary.pad()), net["region_mask"]], dim=1)

    def bert_alone(sample, inputs):
        tokens, segments, regions, keep = inputs["bert"]
        x = torch.cat([encoder.bert.embeddings(input_ids=tokens, token_type_ids=segments), regions], dim=1)
        hidden = encoder.run_bert(x, keep)
        hidden.backward(torch.randn_like(hidden))

    with torch.no_grad():  # the parts' fixed inputs, computed beforehand
        memories = [{"bert": bert_input(sample), "decoder": encoder(**sample["net_input"]),
                     "model": model(**sample["net_input"], return_cross_attn_queries=True)} for sample in batches]

    def modality_alone(sample, inputs):
        features, extra = inputs["model"]
        leaves = {name: [t.detach().requires_grad_() for t in extra[name]]
                  for name in ("cross_attn_queries", "cross_attn_keys", "cross_attn_values")}
        encoder_out = dict(extra["encoder_out"])
        encoder_out["encoder_out"] = [encoder_out["encoder_out"][0].detach().requires_grad_()]
        terms = with_modality.modality_terms(model, (features, dict(extra, encoder_out=encoder_out, **leaves)), sample)
        terms["loss"].backward()

    def decoder_alone(sample, inputs):
        encoder_out = inputs["decoder"]
        memory = encoder_out["encoder_out"][0].detach().requires_grad_()  # gradients flow into it, as in the model
        encoder_out = dict(encoder_out, encoder_out=[memory])
        net_output = decoder(sample["net_input"]["prev_output_tokens"], encoder_out=encoder_out)
        loss, _ = without_modality.compute_loss(model, net_output, sample)
        loss.backward()

    def whole(criterion):
        def step(sample, _):
            loss, _, _ = criterion(model, sample)
            loss.backward()
        return step

    variants = {"bert": bert_alone, "decoder": decoder_alone, "model": whole(without_modality),
                "model+modality": whole(with_modality), "modality": modality_alone}
    if args.with_update:
        variants["update"] = lambda sample, _: trainer.train_step([sample])

    def run(name, sample, memory):
        model.zero_grad(set_to_none=True)
        with_modality.zero_grad(set_to_none=True)
        return timed(lambda: variants[name](sample, memory))

    flops = {}
    for name in variants:
        if name != "update":
            with FlopCounterMode(display=False) as counter:
                variants[name](batches[0], memories[0])
            flops[name] = counter.get_total_flops()
    seconds = {name: [] for name in variants}
    tokens = sentences = 0
    common.log(f"timing {len(batches)} batches ({args.warmup} warm-up) x {len(variants)} variants")
    names = list(variants)
    for i, (sample, memory) in enumerate(zip(batches, memories)):
        order = names[i % len(names):] + names[: i % len(names)]
        elapsed = {name: run(name, sample, memory) for name in order}
        if i >= args.warmup:
            for name in names:
                seconds[name].append(elapsed[name])
            tokens += sample["ntokens"]
            sentences += sample["nsentences"]

    per_batch = {name: np.array(values) for name, values in seconds.items()}
    seconds = {name: float(values.sum()) for name, values in per_batch.items()}
    parts = seconds["bert"] + seconds["decoder"]
    figures = {
        "bert_model": args.bert_model,
        "batches": f"{args.batches} measured, {sentences} sentences, {tokens} target tokens "
                   f"(--max-tokens {args.max_tokens})",
    }
    for name, value in seconds.items():
        if name != "modality":
            figures[f"{name} tokens/s"] = round(tokens / value, 1)
        figures[f"{name} ms/batch"] = round(1000 * value / args.batches, 1)
    figures["bert + decoder tokens/s"] = round(tokens / parts, 1)
    for name, value in flops.items():
        figures[f"{name} GFLOP (first batch, forward + backward)"] = round(value / 1e9, 2)
    overhead = seconds["model"] / parts - 1
    modality = seconds["model+modality"] / seconds["model"] - 1
    batch_overhead = per_batch["model"] / (per_batch["bert"] + per_batch["decoder"]) - 1
    batch_modality = per_batch["model+modality"] / per_batch["model"] - 1
    flop_overhead = flops["model"] / (flops["bert"] + flops["decoder"]) - 1
    flop_modality = flops["model+modality"] / flops["model"] - 1
    alone, batch_alone = seconds["modality"] / seconds["model"], per_batch["modality"] / per_batch["model"]
    ratios = {
        "model over bert + decoder (time)": f"{overhead:+.1%} (goal <= +10%: {common.verdict(overhead, 0.10)}); "
                                            f"per batch: median {np.median(batch_overhead):+.1%}, "
                                            f"range {batch_overhead.min():+.1%} .. {batch_overhead.max():+.1%}",
        "model over bert + decoder (FLOPs)": f"{flop_overhead:+.1%}",
        "modality loss on over off (time)": f"{modality:+.1%}; "
                                            f"per batch: median {np.median(batch_modality):+.1%}, "
                                            f"range {batch_modality.min():+.1%} .. {batch_modality.max():+.1%}",
        "modality loss on over off (FLOPs)": f"{flop_modality:+.1%}",
        "modality loss alone over model (time)": f"{alone:+.1%} (goal <= +5%: {common.verdict(alone, 0.05)}); per "
                                                 f"batch: median {np.median(batch_alone):+.1%}, range "
                                                 f"{batch_alone.min():+.1%} .. {batch_alone.max():+.1%}",
    }
    if "update" in seconds:
        ratios["update over model+modality (time)"] = f"{seconds['update'] / seconds['model+modality'] - 1:+.1%}"
    common.report("train_step: vlp_mmt stage 2", figures, ratios, args.json)


if __name__ == "__main__":
    main()
