"""Average the model weights of several fairseq checkpoints into one.

pip does not install fairseq's ``scripts/average_checkpoints.py``; this is the project's own.
Examples::

    vlp-mmt-average-checkpoints --inputs ckpt/checkpoint8.pt ckpt/checkpoint9.pt --output avg.pt
    vlp-mmt-average-checkpoints --input-dir ckpt --num-epoch-checkpoints 5 --output avg.pt

Floating-point weights are averaged in float32 (float64 stays float64) and written back in the
newest checkpoint's dtype; integer and boolean tensors are taken from the newest checkpoint, as is
everything outside ``"model"`` (cfg, optimizer history, extra state). Checkpoints are read with
``torch.load(weights_only=True)`` only.
"""

import argparse
import os
import pickle
import re
import sys
from typing import Dict, List, Optional, Tuple

from vlp_mmt_fairseq.errors import PluginError

PROG = "vlp-mmt-average-checkpoints"
EPOCH_CHECKPOINT = re.compile(r"^checkpoint(\d+)\.pt$")
UPDATE_CHECKPOINT = re.compile(r"^checkpoint_\d+_(\d+)\.pt$")


class CheckpointError(PluginError, ValueError):
    """A checkpoint is missing, unreadable or does not fit the others; the message names the files."""


def last_checkpoints(directory: str, count: int, by_update: bool, upper_bound: Optional[int] = None) -> List[str]:
    """The ``count`` latest epoch (or update) checkpoints of ``directory``, oldest first."""
    pattern = UPDATE_CHECKPOINT if by_update else EPOCH_CHECKPOINT
    try:
        names = os.listdir(directory)
    except OSError as e:
        raise CheckpointError(f"{directory}: cannot list it ({e})") from e
    numbered = []
    for name in names:
        match = pattern.match(name)
        if match and (upper_bound is None or int(match.group(1)) <= upper_bound):
            numbered.append((int(match.group(1)), name))
    kind = "update (checkpoint_<epoch>_<update>.pt)" if by_update else "epoch (checkpoint<epoch>.pt)"
    if len(numbered) < count:
        bound = f" at or below {upper_bound}" if upper_bound is not None else ""
        raise CheckpointError(f"{directory}: asked for {count} {kind} checkpoints{bound}, found {len(numbered)}")
    latest = sorted(numbered)[-count:]
    return [os.path.join(directory, name) for _, name in latest]


def _unpickling_reason(error: Exception) -> str:
    """The useful sentence of torch's weights-only refusal (which global was not allowed)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    found = re.search(r"WeightsUnpickler error: (.*?)\.(?:\s|$)", text)
    return found.group(1) if found else text.strip().splitlines()[-1]


def load_checkpoint_safely(path: str) -> dict:
    """``torch.load(path, weights_only=True)`` with fairseq's config classes allow-listed."""
    import torch

    from vlp_mmt_fairseq.compat import register_safe_checkpoint_globals

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    # Process-wide, as the plugin does on import. (torch's ``safe_globals`` context manager would
    # remove the classes again on exit, even when the plugin had registered them before.)
    register_safe_checkpoint_globals()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused by safe loading (torch.load weights_only=True): {_unpickling_reason(e)}. "
            "This tool never loads arbitrary pickled objects; if the file is trusted, its extra class "
            "belongs in vlp_mmt_fairseq.compat.checkpoint_safe_globals"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return state


def num_updates(state: dict) -> Optional[int]:
    """The training step a fairseq checkpoint was saved at, if recorded."""
    history = state.get("optimizer_history") or []
    if history and isinstance(history[-1], dict) and "num_updates" in history[-1]:
        return int(history[-1]["num_updates"])
    return None


def _layout(model: dict) -> Dict[str, Tuple]:
    """Per parameter: (shape, averaged?) -- what every checkpoint must agree on."""
    return {key: (tuple(getattr(value, "shape", ())), _is_averaged(value)) for key, value in model.items()}


def _check_same_layout(reference: Dict[str, Tuple], reference_path: str, model: dict, path: str) -> None:
    missing = [k for k in reference if k not in model]
    extra = [k for k in model if k not in reference]
    if missing or extra:
        raise CheckpointError(
            f"{path} and {reference_path} hold different parameters: "
            f"missing in {path}: {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            f"only in {path}: {extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    for key, (shape, averaged) in _layout(model).items():
        if shape != reference[key][0]:
            raise CheckpointError(
                f"parameter '{key}' has shape {shape} in {path} but {reference[key][0]} in {reference_path}"
            )
        if averaged != reference[key][1]:
            raise CheckpointError(f"parameter '{key}' is floating-point in only one of {path} and {reference_path}")


def _is_averaged(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _accumulate(sums: Dict, model: dict) -> None:
    import torch

    for key, value in model.items():
        if _is_averaged(value):
            dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
            total = value.detach().to(dtype=dtype, copy=True)
            sums[key] = total if key not in sums else sums[key].add_(total)


def _newer(state: dict, index: int, best: Tuple[Optional[int], int]) -> bool:
    """Is checkpoint ``index`` newer than ``best`` = (num_updates, index)? Ties go to the later file."""
    updates = num_updates(state)
    best_updates, best_index = best
    if updates is None or best_updates is None:
        return index > best_index
    return (updates, index) > (best_updates, best_index)


def average_checkpoints(paths: List[str]) -> Tuple[dict, str]:
    """Average the ``"model"`` weights of ``paths``; returns (averaged state, path of the newest).

    The newest checkpoint is the one with the most updates (``optimizer_history``), else the last
    path; the averaged state is that checkpoint with its ``"model"`` weights replaced.
    """
    from tqdm import tqdm

    if not paths:
        raise CheckpointError("no checkpoints to average")
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise CheckpointError(f"checkpoint given more than once: {', '.join(duplicates)}")
    sums: Dict = {}
    layout, first_path = None, None
    newest_state, newest_index = None, -1
    for index, path in enumerate(tqdm(paths, desc="averaging", unit="checkpoint", file=sys.stderr)):
        state = load_checkpoint_safely(path)
        if layout is None:
            layout, first_path = _layout(state["model"]), path
        else:
            _check_same_layout(layout, first_path, state["model"], path)
        _accumulate(sums, state["model"])
        if newest_state is None or _newer(state, index, (num_updates(newest_state), newest_index)):
            newest_state, newest_index = state, index
    model = newest_state["model"]
    for key, total in sums.items():
        model[key] = total.div_(len(paths)).to(dtype=model[key].dtype)
    return newest_state, paths[newest_index]


def save_checkpoint_atomically(state: dict, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, renamed onto it when complete."""
    import torch

    from vlp_mmt_fairseq.file_utils import atomic_output

    with atomic_output(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--inputs", nargs="+", metavar="CHECKPOINT", help="checkpoint files to average")
    source.add_argument("--input-dir", help="directory of checkpoint<epoch>.pt / checkpoint_<epoch>_<update>.pt files")
    count = parser.add_mutually_exclusive_group()
    count.add_argument(
        "--num-epoch-checkpoints", type=int, metavar="N", help="with --input-dir: the last N epoch checkpoints"
    )
    count.add_argument(
        "--num-update-checkpoints", type=int, metavar="N", help="with --input-dir: the last N update checkpoints"
    )
    parser.add_argument(
        "--checkpoint-upper-bound",
        type=int,
        metavar="K",
        help="with --input-dir: ignore checkpoints after epoch (or update) K",
    )
    parser.add_argument("--output", required=True, help="where to write the averaged checkpoint")
    return parser


def input_paths(args, parser: argparse.ArgumentParser) -> List[str]:
    """The checkpoint files the arguments select, oldest first for ``--input-dir``."""
    by_update = args.num_update_checkpoints is not None
    count = args.num_update_checkpoints if by_update else args.num_epoch_checkpoints
    if args.inputs:
        if count is not None or args.checkpoint_upper_bound is not None:
            parser.error("--num-*-checkpoints and --checkpoint-upper-bound go with --input-dir, not --inputs")
        return args.inputs
    if count is None:
        parser.error("--input-dir needs --num-epoch-checkpoints N or --num-update-checkpoints N")
    if count < 1:
        parser.error(f"the number of checkpoints must be at least 1, got {count}")
    return last_checkpoints(args.input_dir, count, by_update, args.checkpoint_upper_bound)


def main(args, parser: argparse.ArgumentParser) -> None:
    paths = input_paths(args, parser)
    state, newest = average_checkpoints(paths)
    save_checkpoint_atomically(state, args.output)
    print(f"averaged {len(paths)} checkpoints into {args.output}: {', '.join(paths)} (other state from {newest})")


def cli_main(argv: Optional[List[str]] = None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        main(args, parser)
    except CheckpointError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli_main()
