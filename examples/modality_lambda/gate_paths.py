"""How much of L_M's gradient on the model goes through the gate's inputs (``--modality-gate-inputs``)?

    .venv/bin/python examples/modality_lambda/gate_paths.py --path ckpt/checkpoint_best.pt \\
        --data data/bert --split valid --image-features features.h5

With the checkpoint's gate, on the split's batches (dropout off), it computes the gradient of L_M with respect to the
model's parameters twice: with the gate reading Emb(y), h_x and h_v detached (only d_j's gradient reaches the model)
and attached (the gate can also lower L_M by moving the decoder and, with tied embeddings, the output softmax).
It prints ||g_attached - g_detached|| / ||g_detached|| for the whole model, the decoder and the (tied) embedding.
"""
import argparse
import sys

import torch
from inspect_lambda import load  # this folder: Python puts a script's own folder first on its path


def gradients(task, model, criterion, split, max_tokens, batches, attached):
    criterion.gate.detach_inputs = not attached
    model.zero_grad()
    itr = task.get_batch_iterator(task.dataset(split), max_tokens=max_tokens, seed=1).next_epoch_itr(shuffle=False)
    for _, sample in zip(range(batches), itr):
        net_output = model(**sample["net_input"], return_cross_attn_queries=criterion.modality_layer_indices(model))
        criterion.modality_terms(model, net_output, sample)["loss"].backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--image-features", default=None)
    parser.add_argument("--bert-model", default=None)
    parser.add_argument("--max-tokens", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args(argv)
    task, model, criterion = load(args)
    if criterion.gate is None:
        sys.exit(f"{args.path}: a fixed lambda has no gate")
    detached = gradients(task, model, criterion, args.split, args.max_tokens, args.batches, attached=False)
    attached = gradients(task, model, criterion, args.split, args.max_tokens, args.batches, attached=True)
    groups = {"model": lambda n: True, "decoder": lambda n: n.startswith("decoder."),
              "embedding": lambda n: n.endswith("embed_tokens.weight")}
    for group, keep in groups.items():
        names = [n for n in detached if keep(n)]
        if not names:
            continue
        base = torch.sqrt(sum(detached[n].pow(2).sum() for n in names))
        diff = torch.sqrt(sum((attached.get(n, 0 * detached[n]) - detached[n]).pow(2).sum() for n in names))
        print(f"{group}: ||g_attached - g_detached|| / ||g_detached|| = {float(diff / base):.4g} "
              f"(||g_detached|| {float(base):.4g})")
    print(f"gate weights: |w_y| {criterion.gate.w_y.norm():.4g}, |w_x| {criterion.gate.w_x.norm():.4g}, "
          f"|w_v| {criterion.gate.w_v.norm():.4g}")


if __name__ == "__main__":
    main()
