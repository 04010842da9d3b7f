"""Per decoder layer, the cross-attention mass on text, tag, region and special positions, for several checkpoints.

Example (the first and the best checkpoint of one run, on the validation split)::

    vlp-mmt-attention-mass data/bert --task vlp_mmt --image-features store.h5 --bert-model bundled-minilm \\
        --checkpoint epoch1=ckpt/checkpoint1.pt --checkpoint best=ckpt/checkpoint_best.pt \\
        --gen-subset valid --max-tokens 4000 --cpu --output-prefix results/attention_mass

The task's options are fairseq-generate's (``--image-features``, ``--no-tags``, ``--shuffle-images-seed``, ...);
each model is rebuilt from its checkpoint with ``checkpoint_utils.load_model_ensemble_and_task``, as
fairseq-generate does. The references are force-decoded (see ``vlp_mmt_fairseq/evaluation/attention_mass.py``).
Writes ``PREFIX.json``, ``PREFIX.tsv`` and ``PREFIX.png`` (stacked bars, one panel per checkpoint).
"""
import argparse
import os
import sys

PROG = "vlp-mmt-attention-mass"
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkpoint_spec(spec: str):
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"'{spec}' is not LABEL=PATH")
    return label, path


def get_parser():
    from fairseq import options

    parser = options.get_generation_parser(default_task="vlp_mmt")
    parser.prog = PROG
    group = parser.add_argument_group("attention mass")
    group.add_argument("--checkpoint", type=checkpoint_spec, action="append", required=True, metavar="LABEL=PATH",
                       help="a checkpoint and its label in the outputs (repeat to compare checkpoints)")
    group.add_argument("--output-prefix", required=True, metavar="PREFIX",
                       help="writes PREFIX.json, PREFIX.tsv and PREFIX.png")
    group.add_argument("--max-mass-sentences", type=int, metavar="N", default=None,
                       help="force-decode only the first N sentences of the split (default: all)")
    group.add_argument("--no-plot", action="store_true", help="do not write PREFIX.png")
    return parser


def measure(cfg, task, path: str, subset: str, max_sentences=None) -> dict:
    """One checkpoint's :func:`attention_mass` on ``subset``."""
    import torch
    from fairseq import checkpoint_utils, utils

    from vlp_mmt_fairseq.evaluation.attention_mass import attention_mass

    overrides = eval(cfg.common_eval.model_overrides)  # fairseq-generate's own reading of --model-overrides
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides, task=task)
    model = models[0]
    use_cuda = torch.cuda.is_available() and not cfg.common.cpu
    if use_cuda:
        model.cuda()
    itr = task.get_batch_iterator(
        dataset=task.dataset(subset), max_tokens=cfg.dataset.max_tokens, max_sentences=cfg.dataset.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=cfg.dataset.skip_invalid_size_inputs_valid_test,
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple, seed=cfg.common.seed,
        num_workers=cfg.dataset.num_workers,
    ).next_epoch_itr(shuffle=False)
    batches = (utils.move_to_cuda(sample) if use_cuda else sample for sample in itr)
    result = attention_mass(model, batches, task.target_dictionary.pad(), max_sentences)
    result["checkpoint"] = path
    result["subset"] = subset
    return result


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--user-dir" not in argv:
        argv = ["--user-dir", PACKAGE_DIR] + argv
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from vlp_mmt_fairseq.evaluation.attention_mass import plot, write_json, write_tsv

    args = options.parse_args_and_arch(get_parser(), argv)
    missing = [path for _, path in args.checkpoint if not os.path.isfile(path)]
    if missing:
        print(f"{PROG}: error: checkpoint not found: {missing[0]}", file=sys.stderr)
        return 2
    labels = [label for label, _ in args.checkpoint]
    if len(set(labels)) != len(labels):
        print(f"{PROG}: error: checkpoint labels must differ: {' '.join(labels)}", file=sys.stderr)
        return 2
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    subset = cfg.dataset.gen_subset
    try:
        task.load_dataset(subset)
        results = {label: measure(cfg, task, path, subset, args.max_mass_sentences) for label, path in args.checkpoint}
    except (OSError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    prefix = args.output_prefix
    write_json(results, prefix + ".json")
    write_tsv(results, prefix + ".tsv")
    if not args.no_plot:
        plot(results, prefix + ".png", f"Decoder cross-attention mass ({subset}, references force-decoded)")
    for label, result in results.items():
        masses = "; ".join(f"layer {i}: " + " ".join(f"{k} {v:.3f}" for k, v in layer.items() if k != "pad")
                           for i, layer in enumerate(result["layers"], 1))
        print(f"{label}: {masses}")
    print(f"wrote {prefix}.json, {prefix}.tsv" + ("" if args.no_plot else f", {prefix}.png"))
    return 0


def cli_main():
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
