#!/usr/bin/env python3
"""Generation speed: sentences/s of ``fairseq-generate --beam 5``, multimodal against text-only and transformer.

Three models with the same decoder (vlp_mmt_base's: 6 layers, 512 wide, 2048 FFN, shared
input/output embedding) translate the same sentences (the first ``--sentences`` of Multi30K
test2016, en-de):

* ``multimodal``: vlp_mmt with the MiniLM encoder over text, 10 object tags and 36 regions
  (synthetic features of the real image keys);
* ``text-only``: the same vlp_mmt in its text-only mode (``--no-images``: no regions, no tags);
* ``transformer``: fairseq's own ``transformer`` (6-layer encoder over SentencePiece source).

The checkpoints come from one training update each: speed does not depend on the weights, but how
long the hypotheses get does. So every run decodes exactly ``L`` tokens a hypothesis
(``--min-len L --max-len-a 0 --max-len-b L``, L = the mean reference length), and the models do the
same amount of search. The figure is fairseq-generate's own "sentences/s" (search time, without
loading); the runs alternate between models for ``--rounds`` rounds, and each model's best round
counts. Goal: multimodal at most 1.25x the time of text-only.

    python benchmarks/generation.py [--sentences 200] [--rounds 2]
"""
import re
import sys
from pathlib import Path

import numpy as np

import common

TRANSLATED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s \(([\d.]+) sentences/s")


def train_one_update(name: str, work: Path, command) -> Path:
    checkpoint = work / "generation_models" / name / "checkpoint_last.pt"
    if not checkpoint.exists():
        common.log(f"making the {name} checkpoint (one update)")
        common.run([Path(sys.executable).parent / "fairseq-train"] + command +
                   ["--max-update", "1", "--max-tokens", "512", "--train-subset", "valid", "--disable-validation",
                    "--no-epoch-checkpoints", "--num-workers", "0", "--save-dir", checkpoint.parent])
    return checkpoint


def main():
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=200, help="test2016 sentences (default: 200)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each model, alternating (default: 2)")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    work = Path(args.work_dir)
    data = common.prepared_multi30k(args.work_dir, args.multi30k_dir)
    store = common.synthetic_store(work / "features_2048x36.h5", common.split_keys(data, ["valid", "test2016"]))
    split = common.subset_split(data, "test2016", f"test2016first{args.sentences}", args.sentences)
    from fairseq.data import data_utils

    references = data_utils.load_indexed_dataset(str(data / "text" / f"{split}.{common.SRC}-{common.TGT}."
                                                     f"{common.TGT}"), None)
    length = int(round(float(np.mean(references.sizes)) - 1))  # without the eos

    vlp = common.vlp_mmt_args(data, store, args.bert_model)
    text_only = common.vlp_mmt_args(data, None, args.bert_model)
    transformer = [str(data / "text"), "--task", "translation", "--arch", "transformer",
                   "--share-decoder-input-output-embed", "--criterion", "label_smoothed_cross_entropy",
                   "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "5e-5", "--seed", "1",
                   *common.device_args()]
    checkpoints = {
        "multimodal": train_one_update("multimodal", work, vlp),
        "text-only": train_one_update("text-only", work, text_only),
        "transformer": train_one_update("transformer", work, transformer),
    }
    plugin = ["--user-dir", common.USER_DIR, "--task", "vlp_mmt", "--bert-model", args.bert_model]
    generate_args = {
        "multimodal": [data / "bert"] + plugin + ["--image-features", store, "--max-regions", "36"],
        "text-only": [data / "bert"] + plugin + ["--no-images"],
        # the plugin's --user-dir also lets the stock task load its checkpoint on torch >= 2.6
        "transformer": [data / "text", "--user-dir", common.USER_DIR, "--task", "translation"],
    }
    search = ["--gen-subset", split, "--beam", args.beam, "--batch-size", args.batch_size, "--min-len", length,
              "--max-len-a", "0", "--max-len-b", length, "--quiet"] + common.device_args()
    rates = {name: [] for name in checkpoints}
    for round_ in range(args.rounds):
        order = list(checkpoints)[round_ % 3:] + list(checkpoints)[: round_ % 3]
        for name in order:
            common.log(f"round {round_ + 1}: {name}")
            output = common.run([Path(sys.executable).parent / "fairseq-generate"] + generate_args[name] +
                                ["--path", checkpoints[name]] + search)
            match = TRANSLATED.search(output)
            if not match:
                raise SystemExit(f"no 'Translated ...' line in fairseq-generate's output:\n{output[-3000:]}")
            rates[name].append(float(match.group(4)))
    best = {name: max(values) for name, values in rates.items()}
    figures = {"sentences": f"{args.sentences} (test2016), beam {args.beam}, batch {args.batch_size}, "
                            f"{length} tokens a hypothesis",
               "bert_model": args.bert_model}
    for name, values in rates.items():
        figures[f"{name} sentences/s"] = f"{best[name]:.2f} (rounds: {', '.join(f'{v:.2f}' for v in values)})"
    slowdown = best["text-only"] / best["multimodal"]
    ratios = {
        "multimodal time over text-only": f"{slowdown:.2f}x (goal <= 1.25x: {common.verdict(slowdown, 1.25)})",
        "multimodal time over transformer": f"{best['transformer'] / best['multimodal']:.2f}x",
        "text-only time over transformer": f"{best['transformer'] / best['text-only']:.2f}x",
    }
    common.report("generation: fairseq-generate --beam %d" % args.beam, figures, ratios, args.json)


if __name__ == "__main__":
    main()
