"""The few fixes fairseq 0.12 needs on current torch and Python, in one place.

1. Safe checkpoint loading. Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``,
   which refuses the ``argparse.Namespace`` and omegaconf objects that fairseq checkpoints hold
   (and the numpy arrays of their saved metrics, with ``--eval-bleu``).
   :func:`register_safe_checkpoint_globals` allow-lists exactly those classes; the safety itself
   stays on.
2. Lost sentences. fairseq's ``batch_by_size`` silently drops the last batch when its size is not
   a multiple of ``--required-batch-size-multiple`` (fairseq issues 5036, 5351).
   :func:`restore_dropped_sentences` appends whatever fairseq's batches left out; every
   dataset of the project's tasks batches through it. Recipes for the stock ``translation`` task pass
   ``--required-batch-size-multiple 1``, which fairseq's batching handles without loss.
3. Help. fairseq's ``--help`` exits before a plugin task's options are added;
   :func:`show_plugin_options_in_help` makes them appear.
4. Crash-safe checkpoints. fairseq copies ``checkpoint_last.pt`` in place (not atomic);
   :func:`make_checkpoints_crash_safe` makes the copy atomic, names unreadable checkpoint files in
   its errors and, at resume, falls back from an unreadable ``checkpoint_last.pt`` to the newest
   readable checkpoint.
5. bf16 on GPUs. fairseq 0.12 ties ``--bf16`` to TPUs; :func:`allow_bf16_without_tpu` keeps the
   GPU (or CPU) when torch_xla is not installed.
6. A quieter start. Importing fairseq's tasks logs "Please install tensorboardX" (for its speech
   tasks); :func:`hide_tensorboardx_note` drops that line from the plugin's own commands.

:func:`apply` applies 3-6 only on the fairseq releases that have these problems (0.12.x).
"""
import argparse
import collections
import typing

import numpy as np

from vlp_mmt_fairseq.errors import PluginError, install_excepthook


def checkpoint_safe_globals() -> list:
    """The classes (beyond torch's defaults) that a fairseq checkpoint's pickle refers to."""
    import omegaconf
    from omegaconf import nodes
    from omegaconf.base import Container, ContainerMetadata, Metadata, Node

    return numpy_array_globals() + [
        argparse.Namespace,
        omegaconf.DictConfig,
        omegaconf.ListConfig,
        Container,
        ContainerMetadata,
        Metadata,
        Node,
        nodes.AnyNode,
        nodes.StringNode,
        nodes.IntegerNode,
        nodes.FloatNode,
        nodes.BooleanNode,
        nodes.EnumNode,
        nodes.ValueNode,
        typing.Any,
        dict,
        list,
        int,
        collections.defaultdict,
        collections.OrderedDict,
    ]


def numpy_array_globals() -> list:
    """What a pickled numpy array or scalar refers to: fairseq's saved metrics hold them (e.g. the
    BLEU n-gram counts that ``--eval-bleu`` logs)."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    found = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    if hasattr(np, "dtypes"):  # numpy >= 1.25 pickles a dtype through its class
        found += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return found


def register_safe_checkpoint_globals() -> None:
    """Allow-list fairseq's checkpoint classes for ``torch.load(weights_only=True)``."""
    import torch

    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(checkpoint_safe_globals())


def restore_dropped_sentences(batches, indices, num_tokens_fn, max_tokens=None, max_sentences=None):
    """Append to fairseq's ``batches`` every index of ``indices`` they left out.

    The missing indices keep their order and form extra batches that respect ``max_tokens`` and
    ``max_sentences`` (they may be smaller than the batch-size multiple).
    """
    batches = list(batches)
    if sum(len(b) for b in batches) == len(indices):
        return batches
    seen = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    batch, batch_max = [], 0
    for i in np.asarray(indices)[~np.isin(indices, seen)].tolist():
        n = int(num_tokens_fn(i))
        new_max = max(batch_max, n)
        too_many = bool(max_sentences) and len(batch) + 1 > max_sentences
        too_long = bool(max_tokens) and new_max * (len(batch) + 1) > max_tokens
        if batch and (too_many or too_long):
            batches.append(np.array(batch, dtype=np.int64))
            batch, new_max = [], n
        batch.append(i)
        batch_max = new_max
    if batch:
        batches.append(np.array(batch, dtype=np.int64))
    return batches


#: the architecture whose options ``--help`` shows for a plugin task given without ``--arch``
HELP_ARCHITECTURES = {
    "vlp_mmt": "vlp_mmt_base",
    "vlp_pretrain": "vlp_pretrain_base",
    "bert_fused_translation": "bert_fused_base",
}


def show_plugin_options_in_help() -> None:
    """Make ``fairseq-train --user-dir ... --task vlp_mmt --help`` list the plugin's options.

    fairseq parses the command line once before it adds the task's and model's options, and
    ``--help`` exits during that first pass. The wrapper lets the first pass run without ``--help``
    (with a placeholder data directory when none is given, and the task's base architecture when
    no ``--arch`` is given), then prints the complete help.
    """
    import sys

    from fairseq import options

    original = options.parse_args_and_arch
    if getattr(original, "_vlp_mmt_full_help", False):
        return

    def parse_args_and_arch(parser, input_args=None, parse_known=False, suppress_defaults=False,
                            modify_parser=None):
        argv = list(sys.argv[1:] if input_args is None else input_args)
        if not any(a in ("-h", "--help") for a in argv):
            return original(parser, input_args, parse_known, suppress_defaults, modify_parser)
        argv = [a for a in argv if a not in ("-h", "--help")]
        if not argv or argv[0].startswith("-"):
            argv = ["."] + argv  # the data directory is positional and required
        if "--task" in argv and not {"--arch", "-a"} & set(argv):
            task = argv[argv.index("--task") + 1] if argv.index("--task") + 1 < len(argv) else ""
            if task in HELP_ARCHITECTURES:
                argv += ["--arch", HELP_ARCHITECTURES[task]]
        original(parser, argv, True, suppress_defaults, modify_parser)
        parser.print_help()
        sys.exit(0)

    parse_args_and_arch._vlp_mmt_full_help = True
    options.parse_args_and_arch = parse_args_and_arch


# ----------------------------------------------------------------------------- crash-safe checkpoints


class CheckpointError(PluginError, RuntimeError):
    """A checkpoint file cannot be read (truncated or corrupt); the message names the file."""


def checkpoint_problem(path: str) -> typing.Optional[str]:
    """Why the checkpoint at ``path`` is unreadable, or None when it looks complete.

    torch writes a zip archive whose directory sits at the end of the file, so a file cut short by a
    crash has no directory; the members' CRCs catch the rest. Other formats are left to ``torch.load``.
    """
    import os
    import zipfile

    if not os.path.isfile(path):
        return "no such file"
    if os.path.getsize(path) == 0:
        return "empty file (truncated?)"
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return None  # not torch's zip format (legacy pickle): torch.load is the judge
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        return f"incomplete archive, truncated? ({e})"
    return f"corrupt member {bad}" if bad else None


def newest_readable_checkpoint(save_dir: str, suffix: str = "",
                               skip: typing.Sequence[str] = ()) -> typing.Optional[str]:
    """The most recently written complete ``checkpoint*{suffix}.pt`` of ``save_dir``."""
    import glob
    import os

    skip = {os.path.abspath(p) for p in skip}
    candidates = [p for p in glob.glob(os.path.join(save_dir, f"checkpoint*{suffix}.pt"))
                  if os.path.abspath(p) not in skip]
    for path in sorted(candidates, key=os.path.getmtime, reverse=True):
        if checkpoint_problem(path) is None:
            return path
    return None


class _AtomicCopyPathManager:
    """fairseq's PathManager, but ``copy`` (how checkpoint_last.pt is written) is atomic for local files."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def copy(self, src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if "://" in src_path or "://" in dst_path:
            return self._path_manager.copy(src_path, dst_path, overwrite)
        from vlp_mmt_fairseq.file_utils import atomic_copy

        return bool(atomic_copy(src_path, dst_path))

    def __getattr__(self, name):
        return getattr(self._path_manager, name)


def make_checkpoints_crash_safe() -> None:
    """Atomic checkpoint copies, named errors for unreadable checkpoints, fallback at resume.

    fairseq writes the first checkpoint of a save through a temporary file, but *copies* it to the
    others (``checkpoint_last.pt``, ``checkpoint_best.pt``) in place, so a crash during the copy
    leaves a truncated ``checkpoint_last.pt``. Here the copy goes through a temporary file too.
    ``load_checkpoint_to_cpu`` raises :class:`CheckpointError` naming an unreadable file. When
    ``fairseq-train`` resumes (default ``--restore-file``) and ``checkpoint_last.pt`` is unreadable,
    training resumes from the newest readable checkpoint of ``--save-dir`` instead, with a warning;
    with none, it stops with an error naming the file.
    """
    import logging
    import os

    from fairseq import checkpoint_utils
    from omegaconf import open_dict

    if getattr(checkpoint_utils.load_checkpoint, "_vlp_mmt_crash_safe", False):
        return
    logger = logging.getLogger(__name__)
    checkpoint_utils.PathManager = _AtomicCopyPathManager(checkpoint_utils.PathManager)
    original_to_cpu = checkpoint_utils.load_checkpoint_to_cpu
    original_load = checkpoint_utils.load_checkpoint

    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        try:
            return original_to_cpu(path, arg_overrides=arg_overrides, load_on_all_ranks=load_on_all_ranks)
        except Exception as e:
            problem = checkpoint_problem(path) if os.path.isfile(path) else None
            if problem is None:
                raise
            raise CheckpointError(f"{path}: cannot read the checkpoint: {problem}") from e

    def load_checkpoint(cfg, trainer, **passthrough_args):
        suffix = trainer.checkpoint_suffix
        last = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
        problem = checkpoint_problem(last) if cfg.restore_file == "checkpoint_last.pt" and os.path.isfile(last) \
            else None
        if problem is None:
            return original_load(cfg, trainer, **passthrough_args)
        fallback = newest_readable_checkpoint(cfg.save_dir, suffix, skip=[last])
        if fallback is None:
            raise CheckpointError(f"{last}: cannot resume: {problem}; no other readable checkpoint in {cfg.save_dir}")
        logger.warning("%s: unreadable (%s); resuming from %s instead", last, problem, fallback)
        saved = cfg.restore_file, cfg.finetune_from_model
        with open_dict(cfg):
            cfg.restore_file = fallback[: len(fallback) - len(suffix + ".pt")] + ".pt"
            cfg.finetune_from_model = None
        try:
            return original_load(cfg, trainer, **passthrough_args)
        finally:
            with open_dict(cfg):
                cfg.restore_file, cfg.finetune_from_model = saved

    load_checkpoint._vlp_mmt_crash_safe = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
    checkpoint_utils.load_checkpoint = load_checkpoint


# ----------------------------------------------------------------------------- bf16 without a TPU


def allow_bf16_without_tpu() -> None:
    """Let ``--bf16`` run on a GPU (or the CPU) when there is no TPU software.

    fairseq 0.12's option parser turns ``--bf16`` into ``--tpu``, and a TPU run needs torch_xla. When
    torch_xla is not installed, the wrapped ``call_main`` (which every fairseq CLI goes through before
    it builds its trainer) clears the TPU flag again, so the trainer keeps its device and casts the
    model to bfloat16 with fp32 master weights (fairseq's FP16Optimizer, no loss scaling).
    """
    import importlib.util
    import logging

    from fairseq.distributed import utils as distributed_utils
    from omegaconf import open_dict

    original = distributed_utils.call_main
    if getattr(original, "_vlp_mmt_bf16", False):
        return

    def call_main(cfg, main, **kwargs):
        common = cfg.common
        if getattr(common, "bf16", False) and getattr(common, "tpu", False) \
                and importlib.util.find_spec("torch_xla") is None:
            logging.getLogger(__name__).info("--bf16 without torch_xla: bfloat16 on %s, not on a TPU",
                                             "the CPU" if common.cpu else "the GPU")
            with open_dict(common):
                common.tpu = False
        return original(cfg, main, **kwargs)

    call_main._vlp_mmt_bf16 = True
    distributed_utils.call_main = call_main


# ----------------------------------------------------------------------------- validation BLEU


def _validation_bleu(meters) -> float:
    """Corpus BLEU of the validation so far, from the statistics ``--eval-bleu`` logs; 0 without hypotheses."""
    from sacrebleu.metrics import BLEU

    if "_bleu_totals" not in meters or max(meters["_bleu_totals"].sum) == 0:
        return 0.0
    bleu = BLEU.compute_bleu(correct=meters["_bleu_counts"].sum, total=meters["_bleu_totals"].sum,
                             sys_len=int(meters["_bleu_sys_len"].sum), ref_len=int(meters["_bleu_ref_len"].sum),
                             smooth_method="exp")
    return round(bleu.score, 2)


def score_empty_validation_batches() -> None:
    """``--eval-bleu`` with validation batches whose hypotheses are all empty (an untrained model).

    fairseq's translation task logs nothing for such a batch (not even its reference length), and no
    ``bleu`` at all when every batch is empty, so ``--best-checkpoint-metric bleu`` fails (KeyError).
    Worse, the trainer reduces each batch on its own: a project task that logged a BLEU of 0 for an empty
    batch either crashed on fairseq's derived meter or, coming first, kept the validation's BLEU at 0. The
    wrapped ``reduce_metrics`` logs an empty batch's statistics as zeros with its reference length, and
    registers the corpus BLEU before fairseq does, as one derived meter that is 0 only without hypotheses.
    Every task built on ``TranslationTask`` (fairseq's own, ``vlp_mmt``, ``bert_fused_translation``) gets it.
    """
    import numpy as np
    from fairseq.logging import metrics
    from fairseq.tasks.translation import EVAL_BLEU_ORDER, TranslationTask

    original = TranslationTask.reduce_metrics
    if getattr(original, "_vlp_mmt_bleu", False):
        return

    def reduce_metrics(self, logging_outputs, criterion):
        validated = [log for log in logging_outputs if "_bleu_totals_0" in log]
        if getattr(self.cfg, "eval_bleu", False) and validated:
            metrics.log_derived("bleu", _validation_bleu)  # first: fairseq's own is then not registered

            def total(key):
                return float(sum(log.get(key, 0) for log in validated))

            if max(total(f"_bleu_totals_{i}") for i in range(EVAL_BLEU_ORDER)) == 0:  # fairseq skips these
                metrics.log_scalar("_bleu_counts", np.zeros(EVAL_BLEU_ORDER))
                metrics.log_scalar("_bleu_totals", np.zeros(EVAL_BLEU_ORDER))
                metrics.log_scalar("_bleu_sys_len", total("_bleu_sys_len"))
                metrics.log_scalar("_bleu_ref_len", total("_bleu_ref_len"))
        original(self, logging_outputs, criterion)

    reduce_metrics._vlp_mmt_bleu = True
    TranslationTask.reduce_metrics = reduce_metrics


# ----------------------------------------------------------------------------- quieter logs


def _not_tensorboardx_note(record) -> bool:
    return "tensorboardX" not in record.getMessage()


def hide_tensorboardx_note() -> None:
    """Drop the "Please install tensorboardX" line that importing fairseq's tasks logs (an optional extra
    of its speech tasks; the plugin never uses it). Works for whatever imports fairseq after the plugin."""
    import logging

    logging.getLogger("fairseq.tasks.text_to_speech").addFilter(_not_tensorboardx_note)


# ----------------------------------------------------------------------------- applying the fixes

#: the fairseq releases whose behaviour the fixes above were written against (0.12.2, fairseq-fixed 0.12.3.1)
AFFECTED_FAIRSEQ = (0, 12)


def fairseq_version() -> typing.Tuple[int, ...]:
    """The installed fairseq's version as integers (``0.12.3.1`` -> ``(0, 12, 3, 1)``), without importing it."""
    from importlib import metadata

    for name in ("fairseq-fixed", "fairseq"):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return tuple(int(part) for part in version.split("+")[0].split(".") if part.isdigit())
    return ()


def fairseq_needs_fixes(version: typing.Optional[typing.Tuple[int, ...]] = None) -> bool:
    """Whether fairseq is a release with the problems above (0.12.x); newer ones are left alone."""
    version = fairseq_version() if version is None else version
    return not version or version[:2] <= AFFECTED_FAIRSEQ


def apply() -> None:
    """Every fix this fairseq needs; the package applies them when it is imported.

    The checkpoint allow-list depends on torch (only torch >= 2.6 loads with ``weights_only=True``,
    and only torch >= 2.4 has ``add_safe_globals``), the others on fairseq's version. The lost-sentence
    fix is no patch: the project's datasets call :func:`restore_dropped_sentences` themselves.
    """
    register_safe_checkpoint_globals()
    install_excepthook()  # the plugin's own errors as one line (errors.py)
    if fairseq_needs_fixes():
        hide_tensorboardx_note()
        show_plugin_options_in_help()
        make_checkpoints_crash_safe()
        allow_bf16_without_tpu()
        score_empty_validation_batches()
