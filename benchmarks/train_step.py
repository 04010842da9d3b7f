#!/usr/bin/env python3
"""Training throughput of vlp_mmt in stage 2 against the sum of its parts, and the cost of the modality loss.

On the same batches (Multi30K valid sentences with synthetic image features), one after another
for every batch so that machine noise falls on all of them alike, it times:

* ``bert``: BERT alone, forward + backward, on the same input embeddings (text and regions);
* ``decoder``: the transformer decoder alone with label-smoothed cross entropy, forward + backward,
  attending to a fixed encoder output;
* ``model``: the whole model with label-smoothed cross entropy (``--modality-loss off``);
* ``model+modality``: the whole model with the modality loss (``--modality-loss last``);
* ``update``: fairseq's complete training update (``Trainer.train_step``: the modality loss, Adam,
  gradient norm), for reference.

Goals: ``model`` at most 10% over ``bert + decoder``; ``model+modality`` at most 5% over ``model``.

    python benchmarks/train_step.py [--bert-model bundled-minilm] [--max-tokens 512] [--batches 8]
"""
import time
from pathlib import Path

import torch

import common


def timed(fn) -> float:
    common.synchronize()
    start = time.perf_counter()
    fn()
    common.synchronize()
    return time.perf_counter() - start


def main():
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--max-tokens", type=int, default=512, help="tokens a batch (default: 512)")
    parser.add_argument("--batches", type=int, default=8, help="measured batches (default: 8)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured batches first (default: 2)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    data = common.prepared_multi30k(args.work_dir, args.multi30k_dir)
    store = common.synthetic_store(Path(args.work_dir) / "features_2048x36.h5",
                                   common.split_keys(data, ["valid", "test2016"]))
    argv = common.vlp_mmt_args(data, store, args.bert_model, "--max-tokens", args.max_tokens)
    cfg, task, trainer = common.build_trainer(argv)
    model, with_modality = trainer.get_model(), trainer.get_criterion()
    cfg.criterion.modality_loss = "off"
    without_modality = task.build_criterion(cfg.criterion)
    encoder, decoder = model.encoder, model.decoder

    task.load_dataset("valid")
    itr = task.get_batch_iterator(task.dataset("valid"), max_tokens=args.max_tokens, seed=1)
    batches = [b for _, b in zip(range(args.warmup + args.batches), itr.next_epoch_itr(shuffle=True))]
    model.train()

    def bert_alone(sample, _):
        net = sample["net_input"]
        with torch.no_grad():  # the same input embeddings; FFN(v) is not BERT's
            x, keep, _ = encoder.embed(net["src_tokens"], net["tag_tokens"], net["region_features"],
                                       net["region_boxes"], net["region_mask"])
        hidden = encoder.run_bert(x, keep)
        hidden.backward(torch.randn_like(hidden))

    with torch.no_grad():  # the decoder's fixed input, computed beforehand
        memories = [encoder(**sample["net_input"]) for sample in batches]

    def decoder_alone(sample, encoder_out):
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
                "model+modality": whole(with_modality), "update": lambda sample, _: trainer.train_step([sample])}
    seconds = {name: 0.0 for name in variants}
    tokens = sentences = 0
    common.log(f"timing {len(batches)} batches ({args.warmup} warm-up) x {len(variants)} variants")
    for i, (sample, memory) in enumerate(zip(batches, memories)):
        for name, fn in variants.items():
            model.zero_grad(set_to_none=True)
            with_modality.zero_grad(set_to_none=True)
            elapsed = timed(lambda: fn(sample, memory))
            if i >= args.warmup:
                seconds[name] += elapsed
        if i >= args.warmup:
            tokens += sample["ntokens"]
            sentences += sample["nsentences"]

    parts = seconds["bert"] + seconds["decoder"]
    figures = {
        "bert_model": args.bert_model,
        "batches": f"{args.batches} measured, {sentences} sentences, {tokens} target tokens "
                   f"(--max-tokens {args.max_tokens})",
    }
    for name, value in seconds.items():
        figures[f"{name} tokens/s"] = round(tokens / value, 1)
        figures[f"{name} ms/batch"] = round(1000 * value / args.batches, 1)
    figures["bert + decoder tokens/s"] = round(tokens / parts, 1)
    overhead = seconds["model"] / parts - 1
    modality = seconds["model+modality"] / seconds["model"] - 1
    ratios = {
        "model over bert + decoder": f"{overhead:+.1%} (goal <= +10%: {common.verdict(overhead, 0.10)})",
        "modality loss on over off": f"{modality:+.1%} (goal <= +5%: {common.verdict(modality, 0.05)})",
        "update over model+modality": f"{seconds['update'] / seconds['model+modality'] - 1:+.1%}",
    }
    common.report("train_step: vlp_mmt stage 2", figures, ratios, args.json)


if __name__ == "__main__":
    main()
