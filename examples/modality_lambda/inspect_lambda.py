"""What lambda learns: force-decode a split's references with a trained vlp_mmt checkpoint and write, per target
token, lambda_j, cos(h_x, h_v) and d_j = 1 - cos of the modality loss, plus two pictures.

    .venv/bin/python examples/modality_lambda/inspect_lambda.py --path ckpt/checkpoint_best.pt \\
        --data data/multi30k.en-de/bert --split valid --image-features features.h5 --out lambda_out

Writes (each file atomically):
    OUT/lambda.<split>.tsv              sentence, position, token, type frequency rank and count, frequent (one of
                                        the 100 most frequent target types), layer, lambda, cos, d, and lambda* =
                                        sigmoid(logit(p0) - d / tau) when the gate has a prior
    OUT/lambda_by_frequency.<split>.png mean lambda (and d) by frequency-rank bucket of the target type
    OUT/lambda_sentences.<split>.png    a few sentences as heat maps of lambda and d per token
and prints the mean and std of lambda and of d, and lambda for frequent vs other tokens.
A fixed-lambda checkpoint (--modality-lambda) has no gate: its lambda column is that constant.
"""
import argparse
import csv
import json
import math
import os
import sys

import numpy as np
import torch

BUCKETS = [(1, 10), (11, 30), (31, 100), (101, 300), (301, 1000), (1001, 10 ** 9)]


def load(args):
    """(task, model, criterion) from the checkpoint, with the data and feature paths of this machine."""
    import vlp_mmt_fairseq  # noqa: F401  (registers the plugin; first, as it quiets fairseq's import)
    # isort: split
    from fairseq import checkpoint_utils, tasks

    if not os.path.isfile(args.path):
        sys.exit(f"{args.path}: no such checkpoint")
    state = checkpoint_utils.load_checkpoint_to_cpu(args.path)
    cfg = state["cfg"]
    cfg.task.data = args.data
    for key in ("image_features", "bert_model"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg.task, key, value)
    if getattr(cfg.criterion, "modality_loss", "off") == "off":
        sys.exit(f"{args.path}: trained with --modality-loss off, so it has no lambda to inspect")
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    if state.get("criterion") is not None:
        criterion.load_state_dict(state["criterion"], strict=True)
    elif criterion.gate is not None:
        sys.exit(f"{args.path}: the checkpoint holds no gate weights (criterion state) for its learnable lambda")
    task.load_dataset(args.split)
    return task, model.eval(), criterion.eval()


def rows_of(task, model, criterion, split, max_tokens):
    """One dict per (sentence, target position, modality-loss layer)."""
    dictionary = task.target_dictionary
    counts = np.asarray(dictionary.count, dtype=np.int64)
    ranked = np.argsort(-np.where(np.arange(len(counts)) < dictionary.nspecial, -1, counts), kind="stable")
    rank = np.empty(len(counts), dtype=np.int64)
    rank[ranked] = np.arange(1, len(counts) + 1)
    gate = criterion.gate
    itr = task.get_batch_iterator(task.dataset(split), max_tokens=max_tokens, seed=1).next_epoch_itr(shuffle=False)
    rows = []
    with torch.no_grad():
        for sample in itr:
            net_output = model(**sample["net_input"], return_cross_attn_queries=True)
            terms = criterion.modality_terms(model, net_output, sample)
            target = sample["target"].t()  # T x B
            valid, frequent = terms["valid"], terms["frequent"]
            for index, layer in zip(criterion.modality_layer_indices(model), terms["layers"]):
                best = gate.optimum(layer["d"]) if gate is not None and gate.prior_p0 is not None else None
                for t, b in valid.nonzero().tolist():
                    token = int(target[t, b])
                    rows.append({
                        "sentence": int(sample["id"][b]), "position": t, "token": dictionary[token],
                        "rank": int(rank[token]), "count": int(counts[token]), "frequent": int(frequent[t, b]),
                        "layer": index, "lambda": float(layer["lambda"][t, b]), "cos": float(layer["cos"][t, b]),
                        "d": float(layer["d"][t, b]), "lambda_star": "" if best is None else float(best[t, b]),
                    })
    rows.sort(key=lambda r: (r["sentence"], r["layer"], r["position"]))
    return rows


def summary(rows) -> dict:
    """lambda's mean and std over tokens, lambda of frequent and other tokens, and d's mean and std."""
    lam = np.array([r["lambda"] for r in rows])
    d = np.array([r["d"] for r in rows])
    frequent = np.array([r["frequent"] for r in rows], dtype=bool)

    def mean(x):
        return float(x.mean()) if x.size else math.nan

    return {"tokens": len(rows), "frequent_tokens": int(frequent.sum()), "lambda_mean": mean(lam),
            "lambda_std": float(lam.std()), "lambda_frequent": mean(lam[frequent]),
            "lambda_other": mean(lam[~frequent]), "d_mean": mean(d), "d_std": float(d.std()),
            "cos_mean": mean(1 - d)}


def write_tsv(rows, path):
    from vlp_mmt_fairseq.file_utils import atomic_output

    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def plot_buckets(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlp_mmt_fairseq.file_utils import atomic_output

    labels, lam_means, lam_stds, d_means, sizes = [], [], [], [], []
    for low, high in BUCKETS:
        inside = [r for r in rows if low <= r["rank"] <= high]
        if not inside:
            continue
        lam = np.array([r["lambda"] for r in inside])
        labels.append(f"{low}-{high}" if high < 10 ** 9 else f">{low - 1}")
        lam_means.append(lam.mean())
        lam_stds.append(lam.std())
        d_means.append(np.mean([r["d"] for r in inside]))
        sizes.append(len(inside))
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, lam_means, 0.4, yerr=lam_stds, capsize=3, label="lambda (mean, std)")
    ax.bar(x + 0.2, d_means, 0.4, label="d = 1 - cos (mean)")
    ax.set_xticks(x, [f"{label}\n({n} tok)" for label, n in zip(labels, sizes)])
    ax.set_xlabel("frequency rank of the target type in the training data")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_sentences(rows, path, sentences, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlp_mmt_fairseq.file_utils import atomic_output

    last = max(r["layer"] for r in rows)
    chosen = sorted({r["sentence"] for r in rows})[:sentences]
    fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 1.3 * len(chosen) + 0.6), squeeze=False)
    lam_all = [r["lambda"] for r in rows]
    vmin, vmax = min(lam_all), max(max(lam_all), min(lam_all) + 1e-6)
    for ax, sentence in zip(axes[:, 0], chosen):
        tokens = [r for r in rows if r["sentence"] == sentence and r["layer"] == last]
        grid = np.array([[r["lambda"] for r in tokens]])
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(tokens)), [r["token"] for r in tokens], fontsize=8)
        ax.set_yticks([0], [f"#{sentence}"])
        for i, r in enumerate(tokens):
            ax.text(i, 0, f"{r['lambda']:.2f}\nd {r['d']:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="lambda")
    fig.suptitle(title)
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", required=True, help="a vlp_mmt checkpoint trained with the modality loss")
    parser.add_argument("--data", required=True, help="the prepared data directory (bert/)")
    parser.add_argument("--split", default="valid", help="split to force-decode (default: valid)")
    parser.add_argument("--image-features", default=None, help="feature store (default: the checkpoint's)")
    parser.add_argument("--bert-model", default=None, help="BERT (default: the checkpoint's)")
    parser.add_argument("--max-tokens", type=int, default=4000)
    parser.add_argument("--sentences", type=int, default=6, help="sentences drawn as heat maps")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--summary-json", default=None, help="also write the printed summary here, as JSON")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    task, model, criterion = load(args)
    rows = rows_of(task, model, criterion, args.split, args.max_tokens)
    if not rows:
        sys.exit(f"{args.data}: split {args.split} has no target token with both text and regions")
    os.makedirs(args.out, exist_ok=True)
    name = os.path.basename(os.path.dirname(os.path.abspath(args.path)))
    write_tsv(rows, os.path.join(args.out, f"lambda.{args.split}.tsv"))
    plot_buckets(rows, os.path.join(args.out, f"lambda_by_frequency.{args.split}.png"), f"{name}: {args.split}")
    plot_sentences(rows, os.path.join(args.out, f"lambda_sentences.{args.split}.png"), args.sentences,
                   f"{name}: lambda per target token ({args.split})")
    figures = summary(rows)
    print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    if args.summary_json:
        from vlp_mmt_fairseq.file_utils import atomic_output

        with atomic_output(args.summary_json) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
