#!/usr/bin/env python
"""Stage-1 ablations of issue 14: why the multimodal model translates worse than text-only, one budget for all.

Example (the full ablation on the prepared Multi30K en-de and the caption-proxy store; see README.md)::

    python examples/ablations/ablate.py --data data/multi30k.en-de --features features/caption_proxy.h5 \\
        --budget cpu --threads 1

Every variant (``VARIANTS``) is stage 1 (BERT frozen, no modality loss) with the same decoder, batch size,
optimiser, schedule and number of epochs; it differs from ``base`` (short VLP, FFN(v) frozen, tags and regions,
the paper's Eq. 1) in one thing. Its steps: ``train.V`` (fairseq-train, the frozen-encoder cache where nothing
before BERT trains), ``generate.V.valid`` / ``generate.V.test2016`` / ``generate.V.test2016.incongruent``
(fairseq-generate from the best checkpoint on valid BLEU; the probe shuffles the images with
``--shuffle-images-seed 1``), ``mass.V`` (vlp-mmt-attention-mass at the first and the last epoch checkpoint, on
valid) and ``prune.V`` (deletes the intermediate epoch checkpoints and the encoder cache). Steps run through
vlp_mmt_fairseq/step_runner.py (the StepRunner of the Multi30K comparison): finished steps are reused, an
interrupted run continues.

The table (``WORK/results/ablation.{md,csv,json}``, ``attention_mass.png``) gives per variant the detokenized
sacreBLEU on valid and test2016 (and the lowercased tokenized BLEU where the data has ``tok/``), the BLEU lost with
shuffled images (and its paired bootstrap against the real images), the step times, and the cross-attention mass on
text, tag and region positions (mean over decoder layers) after the first and the last epoch.
"""
import argparse
import functools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

from vlp_mmt_fairseq.evaluation.train_logs import interrupted_attempt_seconds, valid_bleu_per_epoch
from vlp_mmt_fairseq.file_utils import atomic_output
from vlp_mmt_fairseq.step_runner import (
    Step,
    StepError,
    StepRunner,
    add_parallel_arguments,
    order_steps,
    python_env,
    shell_command,
    stop_on_sigterm,
)

# The same conventions as examples/multi30k/compare.py and recipe.py (placeholders, decoding lengths, a frozen
# dataclass per budget): the two examples run alone, each with its own step list, so the short blocks of the same
# shape (these constants and imports, Budget beside recipe.System) are kept in both rather than imported across.
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

USER_DIR = "{REPO}/vlp_mmt_fairseq"
EVAL_SPLITS = ("valid", "test2016")
PROBE_SPLIT = "test2016"
PROBE = ["--shuffle-images-seed", "1"]
GEN_LEN = ["--max-len-a", "1.5", "--max-len-b", "10"]


# ----------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """What every variant of one ablation shares."""

    name: str
    summary: str
    arch: str
    decoder: Tuple[str, ...]  # decoder-size flags on top of the arch
    max_tokens: int
    lr: float
    warmup_updates: int
    dropout: float
    epochs: int
    vlp_lr: float
    vlp_short_updates: int
    vlp_long_updates: int
    regions_few: int  # the "number of regions" variant keeps this many (the others keep every stored region)
    valid_beam: int
    test_beam: int
    gen_max_tokens: int
    lenpens: Tuple[float, ...]  # the length penalties tried on valid; test2016 is decoded again at the best one
    device: Tuple[str, ...] = ("--cpu", "--num-workers", "0")


BUDGETS = {
    "tiny": Budget(
        name="tiny",
        summary="pipeline check on the toy corpus (tests): vlp_mmt_tiny, 2 epochs, VLP of 4 updates, continued to 8",
        arch="vlp_mmt_tiny", decoder=(), max_tokens=2000, lr=2e-3, warmup_updates=10, dropout=0.1, epochs=2,
        vlp_lr=1e-4, vlp_short_updates=4, vlp_long_updates=8, regions_few=1, valid_beam=1, test_beam=2,
        gen_max_tokens=4000, lenpens=(1.0, 2.0),
    ),
    "cpu": Budget(
        name="cpu",
        summary="full Multi30K on one CPU thread per step: the bundled MiniLM frozen, a 4-layer d=128 decoder "
                "(FFN 256, 4 heads), 4,096 tokens per batch, lr 2e-3 inverse_sqrt with 200 warm-up updates, "
                "5 epochs (about 675 updates); VLP of 300 updates (short), continued to 600 (long)",
        arch="vlp_mmt_tiny",
        decoder=("--decoder-layers", "4", "--decoder-embed-dim", "128", "--decoder-ffn-embed-dim", "256",
                 "--decoder-attention-heads", "4"),
        max_tokens=4096, lr=2e-3, warmup_updates=200, dropout=0.3, epochs=5,
        vlp_lr=5e-5, vlp_short_updates=300, vlp_long_updates=600, regions_few=1, valid_beam=1, test_beam=5,
        gen_max_tokens=8000, lenpens=(0.5, 1.0, 1.5, 2.0, 3.0),
    ),
}


# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One row: how it differs from ``base``.

    ``task_flags`` go to training, generation and the attention mass (fairseq-generate takes task options from
    its own command line); ``model_flags`` to training only (the checkpoint keeps them).
    """

    name: str
    label: str
    vlp: Optional[str] = "short"  # None (the plain BERT), "short" or "long"
    images: bool = True
    task_flags: Tuple[str, ...] = ()
    model_flags: Tuple[str, ...] = ()
    seed: int = 1  # another seed repeats a row, to see how far the budget's results move with the seed alone

    @property
    def regions_after_bert(self) -> bool:
        """``--region-fusion decoder``: BERT reads the text alone, so its output is cacheable while FFN(v) trains."""
        return "--region-fusion" in self.model_flags and \
            self.model_flags[self.model_flags.index("--region-fusion") + 1] == "decoder"

    @property
    def cacheable(self) -> bool:
        """Whether nothing before BERT trains, so --cache-frozen-encoder applies."""
        if not self.images or "--no-regions" in self.task_flags or self.regions_after_bert:
            return True
        return self.vlp is not None and "--no-train-visual-projection" in self.model_flags and \
            "type" not in self.model_flags


#: one softmax over text, tag and region positions (the paper's decoder); given explicitly, as below
JOINT = ("--cross-attention", "joint")
#: the regions bypass BERT's layers and meet the text in the decoder's (joint) cross-attention
LATE = ("--region-fusion", "decoder", *JOINT)
#: Eq. 1, the regions inside BERT: given explicitly, so that the rows keep it whatever the model's default is
EQ1 = ("--region-fusion", "bert", *JOINT)
#: the paper's stage 1: Eq. 1 with FFN(v) from VLP frozen with BERT (the rows from VLP; a fresh FFN(v) trains)
PAPER = (*EQ1, "--no-train-visual-projection")
#: the regions after BERT, behind the decoder's per-head gate that starts closed
GATED = ("--region-fusion", "decoder", "--cross-attention", "gated")


def variants(budget: Budget) -> Dict[str, Variant]:
    few = str(budget.regions_few)
    rows = (
        Variant("text_plain", "text only, plain BERT (BERT-enc)", vlp=None, images=False),
        Variant("text_vlp", "text only, BERT from the short VLP", images=False),
        Variant("text_vlp_long", "text only, BERT from the long VLP", vlp="long", images=False),
        Variant("base", "short VLP, FFN(v) frozen, tags + regions (the paper's stage 1)", model_flags=PAPER),
        Variant("vlp_none", "no VLP (plain BERT, fresh FFN(v), trained)", vlp=None, model_flags=EQ1),
        Variant("vlp_none_noise", "vlp_none, trained and tested with another sentence's image (--shuffle-images-seed "
                "1): FFN(v)'s trained input to BERT, without what the image says", vlp=None, task_flags=tuple(PROBE),
                model_flags=EQ1),
        Variant("vlp_long", "long VLP", vlp="long", model_flags=PAPER),
        Variant("ffn_trained", "FFN(v) trained in stage 1 (today's default)",
                model_flags=(*EQ1, "--train-visual-projection")),
        Variant("tags_only", "tags only (no regions)", task_flags=("--no-regions",), model_flags=PAPER),
        Variant("regions_only", "regions only (no tags)", task_flags=("--no-tags",), model_flags=PAPER),
        Variant(f"regions_{few}", f"at most {few} region(s)", task_flags=("--max-regions", few), model_flags=PAPER),
        Variant("emb_segment", "regions + segment embedding", model_flags=(*PAPER, "--region-embedding", "segment")),
        Variant("emb_position", "regions + position embedding",
                model_flags=(*PAPER, "--region-embedding", "position")),
        Variant("emb_type", "regions + learned type embedding", model_flags=(*PAPER, "--region-embedding", "type")),
        Variant("decoder_text", "decoder sees no region position", model_flags=(*PAPER, "--decoder-memory", "text")),
        Variant("late", "regions after BERT (--region-fusion decoder), FFN(v) from VLP, trained",
                model_flags=LATE),
        Variant("late_novlp", "regions after BERT, no VLP (plain BERT, fresh FFN(v), trained)", vlp=None,
                model_flags=LATE),
        Variant("late_novlp_regions", "regions after BERT, no VLP, no tags: BERT's states are text_plain's",
                vlp=None, task_flags=("--no-tags",), model_flags=LATE),
        Variant("late_novlp_regions_noise", "late_novlp_regions, trained and tested with another sentence's image "
                "(--shuffle-images-seed 1): regions present, but saying nothing of the sentence", vlp=None,
                task_flags=("--no-tags", *PROBE), model_flags=LATE),
        Variant("late_novlp_regions_gated", "late_novlp_regions with the regions behind a per-head gate that "
                "starts closed (--cross-attention gated): training starts from text_plain's model", vlp=None,
                task_flags=("--no-tags",), model_flags=GATED),
        Variant("text_plain_seed2", "text_plain with another seed (--seed 2)", vlp=None, images=False, seed=2),
        Variant("late_gated", "late (short VLP, tags inside BERT, regions after it) with the regions behind the "
                "closed gate", model_flags=GATED),
    )
    return {v.name: v for v in rows}


# ----------------------------------------------------------------------------- steps


def train_log(run: str) -> str:
    return f"logs/train.{run}.log"


def vlp_checkpoint(which: str) -> str:
    """The checkpoint the VLP step ``which`` (short or long) leaves: the long run starts from the short one's, and
    the rows load theirs with --load-vlp."""
    return f"ckpt/pretrain_{which}/checkpoint_last.pt"


def vlp_step(budget: Budget, args, which: str) -> Step:
    """VLP (Algorithm 1, steps 3-4) on the training sources and their images: ``which`` is short or long."""
    run = f"pretrain_{which}"  # not vlp_*: the variant vlp_long has its own train step and save dir
    updates = budget.vlp_short_updates if which == "short" else budget.vlp_long_updates
    # the long run is the short one continued (its optimiser, schedule and data order): the two differ in the
    # updates alone, and the long one costs only the updates it adds
    resume, after = ([], []) if which == "short" else \
        (["--continue-once", vlp_checkpoint("short")], ["train.pretrain_short"])
    return Step(
        f"train.{run}",
        ["fairseq-train", "{DATA}/bert", "--user-dir", USER_DIR, "--task", "vlp_pretrain", "--source-lang", args.src,
         "--arch", "vlp_pretrain_base", "--criterion", "vlp_pretrain_loss", "--bert-model", args.bert_model,
         "--image-features", "{FEATURES}", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
         "--lr", str(budget.vlp_lr), "--lr-scheduler", "inverse_sqrt",
         "--warmup-updates", str(max(1, budget.vlp_short_updates // 10)),
         "--warmup-init-lr", "1e-07", "--weight-decay", "0.01", "--max-tokens", str(budget.max_tokens),
         "--max-update", str(updates), "--save-dir", f"ckpt/{run}", "--no-epoch-checkpoints",
         "--seed", "1", "--log-format", "json", "--log-interval", "10", *resume, *budget.device],
        outputs=[vlp_checkpoint(which)], after=after, log=train_log(run),
        clean=[f"ckpt/{run}", train_log(run)],
    )


def image_flags(variant: Variant) -> List[str]:
    if not variant.images:
        return ["--no-images"]
    return ["--image-features", "{FEATURES}", *variant.task_flags]


def train_step(budget: Budget, args, variant: Variant) -> Step:
    v = variant.name
    command = ["fairseq-train", "{DATA}/bert", "--user-dir", USER_DIR, "--task", "vlp_mmt", "-s", args.src,
               "-t", args.tgt, "--bert-model", args.bert_model, "--arch", budget.arch, *budget.decoder,
               "--criterion", "vlp_mmt_loss", "--modality-loss", "off", "--freeze-bert", *image_flags(variant),
               *variant.model_flags]
    after = []
    if variant.vlp:
        command += ["--load-vlp", vlp_checkpoint(variant.vlp)]
        after.append(f"train.pretrain_{variant.vlp}")
    if variant.cacheable:
        command += ["--cache-frozen-encoder", "--cache-frozen-encoder-dir", f"cache/{v}"]
    valid_generation = json.dumps({"beam": budget.valid_beam, "max_len_a": 1.5, "max_len_b": 10})
    command += [
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(budget.lr), "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", str(budget.warmup_updates), "--warmup-init-lr", "1e-07", "--weight-decay", "0.0001",
        "--dropout", str(budget.dropout), "--label-smoothing", "0.1", "--max-tokens", str(budget.max_tokens),
        "--required-batch-size-multiple", "1", "--max-epoch", str(budget.epochs), "--save-dir", f"ckpt/{v}",
        "--eval-bleu", "--eval-bleu-args", valid_generation, "--eval-bleu-detok", "space",
        "--eval-bleu-remove-bpe", "sentencepiece", "--best-checkpoint-metric", "bleu",
        "--maximize-best-checkpoint-metric", "--seed", str(variant.seed), "--log-format", "json", "--log-interval",
        "10", *budget.device,
    ]
    return Step(f"train.{v}", command, outputs=[f"ckpt/{v}/checkpoint_last.pt", f"ckpt/{v}/checkpoint_best.pt"],
                after=after, log=train_log(v), clean=[f"ckpt/{v}", f"cache/{v}", train_log(v)])


#: fairseq-generate's default --lenpen: the generation steps without a length-penalty suffix use it
DEFAULT_LENPEN = 1.0


def generation_suffix(probe: bool = False, lenpen: float = DEFAULT_LENPEN, checkpoint: str = "best") -> str:
    """What a generation step's name and output add for the probe, a length penalty and a checkpoint other than
    the best (``last``)."""
    return f"{'.incongruent' if probe else ''}{'' if lenpen == DEFAULT_LENPEN else f'.lenpen{lenpen:g}'}" \
        f"{'' if checkpoint == 'best' else '.' + checkpoint}"


def generation_output(variant: str, split: str, probe: bool = False, lenpen: float = DEFAULT_LENPEN,
                      checkpoint: str = "best") -> str:
    return f"gen/{variant}/{split}{generation_suffix(probe, lenpen, checkpoint)}.txt"


def generate_step(budget: Budget, args, variant: Variant, split: str, probe: bool,
                  lenpen: float = DEFAULT_LENPEN, checkpoint: str = "best") -> Step:
    v = variant.name
    output = generation_output(v, split, probe, lenpen, checkpoint)
    command = ["fairseq-generate", "{DATA}/bert", "--user-dir", USER_DIR, "--task", "vlp_mmt", "-s", args.src,
               "-t", args.tgt, "--bert-model", args.bert_model, *image_flags(variant),
               "--path", f"ckpt/{v}/checkpoint_{checkpoint}.pt", "--gen-subset", split, "--beam", str(budget.test_beam),
               "--max-tokens", str(budget.gen_max_tokens), *GEN_LEN, "--required-batch-size-multiple", "1",
               "--post-process", "sentencepiece", *budget.device, *(PROBE if probe else []),
               *([] if lenpen == DEFAULT_LENPEN else ["--lenpen", f"{lenpen:g}"])]
    return Step(f"generate.{v}.{split}{generation_suffix(probe, lenpen, checkpoint)}", command,
                outputs=[output], after=[f"train.{v}"], stdout=output, log=f"logs/generate.{v}.log")


def lenpen_sweep_steps(budget: Budget, args, variant: Variant) -> List[Step]:
    """valid decoded at each of the budget's other length penalties (the default's is ``generate.V.valid``)."""
    return [generate_step(budget, args, variant, "valid", False, lenpen)
            for lenpen in budget.lenpens if lenpen != DEFAULT_LENPEN]


def last_epoch_steps(budget: Budget, args, variant: Variant) -> List[Step]:
    """valid, test2016 and its probe decoded from the last epoch's checkpoint: every row at the same epoch (planned
    only where that checkpoint is not the best one, see :func:`best_is_last`)."""
    steps = [generate_step(budget, args, variant, split, False, checkpoint="last") for split in EVAL_SPLITS]
    if variant.images:
        steps.append(generate_step(budget, args, variant, PROBE_SPLIT, True, checkpoint="last"))
    return steps


def tuned_steps(budget: Budget, args, variant: Variant, lenpen: float) -> List[Step]:
    """test2016 (and its shuffled-image probe) at the length penalty chosen on valid: none for the default."""
    if lenpen == DEFAULT_LENPEN:
        return []
    probes = (False, True) if variant.images else (False,)
    return [generate_step(budget, args, variant, PROBE_SPLIT, probe, lenpen) for probe in probes]


def mass_step(budget: Budget, args, variant: Variant) -> Step:
    v = variant.name
    return Step(
        f"mass.{v}",
        ["vlp-mmt-attention-mass", "{DATA}/bert", "--user-dir", USER_DIR, "--task", "vlp_mmt", "-s", args.src,
         "-t", args.tgt, "--bert-model", args.bert_model, *image_flags(variant),
         "--checkpoint", f"first=ckpt/{v}/checkpoint1.pt", "--checkpoint", f"last=ckpt/{v}/checkpoint_last.pt",
         "--gen-subset", "valid", "--max-tokens", str(budget.gen_max_tokens), "--required-batch-size-multiple", "1",
         *budget.device, "--output-prefix", f"mass/{v}"],
        outputs=[f"mass/{v}.json"], after=[f"train.{v}"], log=f"logs/mass.{v}.log",
    )


PRUNE = ("import glob, os, re, shutil, sys; "
         "[os.remove(p) for p in glob.glob(os.path.join(sys.argv[1], 'checkpoint*.pt')) "
         "if re.fullmatch(r'checkpoint([2-9]|\\d\\d+)\\.pt', os.path.basename(p))]; "
         "shutil.rmtree(sys.argv[2], ignore_errors=True)")


def prune_step(variant: Variant, after: List[str]) -> Step:
    """Free the disk: epoch checkpoints but the first (best and last stay), and the encoder cache."""
    v = variant.name
    return Step(f"prune.{v}", ["{PYTHON}", "-c", PRUNE, f"ckpt/{v}", f"cache/{v}"], after=after,
                log=f"logs/prune.{v}.log")


def variant_steps(budget: Budget, args, variant: Variant) -> List[Step]:
    steps = [train_step(budget, args, variant)]
    steps += [generate_step(budget, args, variant, split, False) for split in EVAL_SPLITS]
    if variant.images:
        steps.append(generate_step(budget, args, variant, PROBE_SPLIT, True))
    steps.append(mass_step(budget, args, variant))
    steps.append(prune_step(variant, [s.name for s in steps]))
    return steps


def all_steps(budget: Budget, args) -> Dict[str, Step]:
    steps = {s.name: s for s in (vlp_step(budget, args, "short"), vlp_step(budget, args, "long"))}
    for variant in variants(budget).values():
        steps.update({s.name: s for s in variant_steps(budget, args, variant)})
        steps.update({s.name: s for s in lenpen_sweep_steps(budget, args, variant)})
        steps.update({s.name: s for s in last_epoch_steps(budget, args, variant)})
    return steps


def wanted_steps(budget: Budget, args) -> List[Step]:
    known = variants(budget)
    wanted = [f"prune.{v}" for v in args.variants]
    wanted += [s.name for v in args.variants for s in lenpen_sweep_steps(budget, args, known[v])]
    return order_steps(all_steps(budget, args), wanted)


def best_is_last(work: str, variant: str) -> Optional[bool]:
    """Whether the run's best checkpoint is its last one, None before both exist. fairseq writes an epoch's
    checkpoint once and copies it to the other names, so the two files are then the same bytes (and on a tie in
    valid BLEU the later epoch becomes the best)."""
    import filecmp

    best, last = (os.path.join(work, f"ckpt/{variant}/checkpoint_{which}.pt") for which in ("best", "last"))
    if not (os.path.exists(best) and os.path.exists(last)):
        return None
    return filecmp.cmp(best, last, shallow=False)


def chosen_lenpen(runner: StepRunner, budget: Budget, args, variant: Variant,
                  current: Dict[str, bool]) -> Optional[dict]:
    """valid BLEU at each of the budget's length penalties and the best of them (a tie goes to the one nearest
    fairseq's default), once valid has been decoded at all of them; None before."""
    sweep = [generate_step(budget, args, variant, "valid", False), *lenpen_sweep_steps(budget, args, variant)]
    if not all(current.get(step.name) for step in sweep):
        return None
    valid = {lenpen: score(args.data, args.tgt, os.path.join(runner.work_dir,
                                                             generation_output(variant.name, "valid", False, lenpen)),
                           "valid")["bleu"]
             for lenpen in budget.lenpens}
    best = max(budget.lenpens, key=lambda lenpen: (valid[lenpen], -abs(lenpen - DEFAULT_LENPEN)))
    return {"valid_bleu": {f"{lenpen:g}": bleu for lenpen, bleu in valid.items()}, "chosen": best}


def steps_with_tuned(runner: StepRunner, budget: Budget, args) -> Tuple[List[Step], Dict[str, Optional[dict]]]:
    """:func:`wanted_steps` and, for each variant whose length-penalty sweep on valid is done, test2016 at the
    chosen length penalty; for each trained variant whose last checkpoint is not its best, the decodings from the
    last one; with each variant's :func:`chosen_lenpen`."""
    known = variants(budget)
    ordered = wanted_steps(budget, args)
    current = runner.plan(ordered, strict=False)
    steps = all_steps(budget, args)
    choices = {name: chosen_lenpen(runner, budget, args, known[name], current) for name in args.variants}
    later = []
    for name, choice in choices.items():
        for step in tuned_steps(budget, args, known[name], choice["chosen"]) if choice else []:
            steps[step.name] = step
            later.append(step.name)
        if current.get(f"train.{name}") and best_is_last(runner.work_dir, name) is False:
            later += [step.name for step in last_epoch_steps(budget, args, known[name])]
    return order_steps(steps, [step.name for step in ordered] + later), choices


# ----------------------------------------------------------------------------- results


def score(data: str, tgt: str, output: str, split: str) -> Dict[str, Optional[float]]:
    """Detokenized sacreBLEU against ``DATA/raw``; lowercased tokenized BLEU where ``DATA/tok`` has the split."""
    from vlp_mmt_fairseq.evaluation.bleu import detokenized_bleu_parts, lowercase_normalize_tokenize, tokenized_bleu
    from vlp_mmt_fairseq.evaluation.generate_output import read_detokenized_hypotheses
    from vlp_mmt_fairseq.evaluation.references import read_lines

    raw = read_lines(os.path.join(data, "raw", f"{split}.{tgt}"))
    hypotheses = read_detokenized_hypotheses(output, len(raw), references=f"{data}/raw/{split}.{tgt}")
    parts = detokenized_bleu_parts(hypotheses, raw)
    result = {"bleu": round(parts["bleu"], 2), "bleu_tok": None, "length_ratio": round(parts["ratio"], 3),
              "brevity_penalty": round(parts["bp"], 3), "precisions": [round(p, 1) for p in parts["precisions"]]}
    tok_path = os.path.join(data, "tok", f"{split}.{tgt}")
    if os.path.exists(tok_path):
        tok = [" ".join(line.split()) for line in read_lines(tok_path)]
        result["bleu_tok"] = round(tokenized_bleu(lowercase_normalize_tokenize(hypotheses, tgt), tok)[0], 2)
    return result


def mean_mass(result: dict) -> Dict[str, float]:
    layers = result["layers"]
    return {kind: round(sum(layer[kind] for layer in layers) / len(layers), 4)
            for kind in ("text", "tag", "region", "special")}


def variant_row(runner: StepRunner, budget: Budget, args, variant: Variant, current: Dict[str, bool],
                choice: Optional[dict]) -> dict:
    steps = variant_steps(budget, args, variant)
    records = {s.name: runner.record(s) if current.get(s.name) else None for s in steps}
    row = {"variant": variant.name, "label": variant.label, "cache": variant.cacheable, "finished": False}
    if not all(records.values()):
        return row
    work = runner.work_dir
    for split in EVAL_SPLITS:
        row[split] = score(args.data, args.tgt, os.path.join(work, generation_output(variant.name, split)), split)
    if variant.images:
        row["incongruent"] = score(args.data, args.tgt,
                                   os.path.join(work, generation_output(variant.name, PROBE_SPLIT, True)), PROBE_SPLIT)
        row["bleu_lost_incongruent"] = round(row[PROBE_SPLIT]["bleu"] - row["incongruent"]["bleu"], 2)
    with open(os.path.join(work, f"mass/{variant.name}.json"), encoding="utf-8") as f:
        mass = json.load(f)
    row["mass"] = {label: mean_mass(result) for label, result in mass.items()}
    row["mass_per_layer"] = {label: result["layers"] for label, result in mass.items()}
    row["valid_curve"] = valid_bleu_per_epoch(os.path.join(work, train_log(variant.name)))  # greedy, per epoch
    row["lenpen"] = tuned_results(runner, budget, args, variant, current, choice)
    row["last"] = last_epoch_results(runner, budget, args, variant, current, row)
    interrupted = sum(interrupted_attempt_seconds(os.path.join(work, train_log(variant.name))))
    row["train_seconds"] = round(records[f"train.{variant.name}"]["seconds"] + interrupted, 1)  # every attempt
    row["step_seconds"] = round(sum(r["seconds"] for r in records.values()) + interrupted, 1)
    row["command"] = shell_command(train_step(budget, args, variant))
    row["finished"] = True
    return row


def tuned_results(runner: StepRunner, budget: Budget, args, variant: Variant, current: Dict[str, bool],
                  choice: Optional[dict]) -> Optional[dict]:
    """``choice`` (:func:`chosen_lenpen`) and test2016 (with its probe) decoded at it; None until all are done."""
    if choice is None or not all(current.get(s.name) for s in tuned_steps(budget, args, variant, choice["chosen"])):
        return None
    return dict(choice, **test_results(runner.work_dir, args, variant, lenpen=choice["chosen"]))


def last_epoch_results(runner: StepRunner, budget: Budget, args, variant: Variant, current: Dict[str, bool],
                       row: dict) -> Optional[dict]:
    """valid, test2016 and its probe from the last epoch's checkpoint, and the epoch the best checkpoint is from;
    where the best checkpoint is the last, the scores ``row`` already has of its decodings; None until all are
    decoded."""
    epochs = {int(epoch): bleu for epoch, bleu in row["valid_curve"].items()}
    last_epoch = max(epochs) if epochs else None
    same = best_is_last(runner.work_dir, variant.name)
    if same:
        scored = ("valid", PROBE_SPLIT, "incongruent", "bleu_lost_incongruent")
        return {"best_epoch": last_epoch, "last_epoch": last_epoch, "same_checkpoint": True,
                **{key: row[key] for key in scored if key in row}}
    if same is None or not all(current.get(s.name) for s in last_epoch_steps(budget, args, variant)):
        return None
    earlier = {epoch: bleu for epoch, bleu in epochs.items() if epoch != last_epoch}
    valid_output = os.path.join(runner.work_dir, generation_output(variant.name, "valid", checkpoint="last"))
    return {"best_epoch": max(earlier, key=lambda epoch: (earlier[epoch], epoch)) if earlier else None,
            "last_epoch": last_epoch, "same_checkpoint": False,
            "valid": score(args.data, args.tgt, valid_output, "valid"),
            **test_results(runner.work_dir, args, variant, checkpoint="last")}


def test_results(work: str, args, variant: Variant, lenpen: float = DEFAULT_LENPEN, checkpoint: str = "best") -> dict:
    """test2016 scored, and with images its shuffled probe and the BLEU that shuffling loses."""
    def scored(probe: bool) -> dict:
        output = os.path.join(work, generation_output(variant.name, PROBE_SPLIT, probe, lenpen, checkpoint))
        return score(args.data, args.tgt, output, PROBE_SPLIT)

    result = {PROBE_SPLIT: scored(False)}
    if variant.images:
        result["incongruent"] = scored(True)
        result["bleu_lost_incongruent"] = round(result[PROBE_SPLIT]["bleu"] - result["incongruent"]["bleu"], 2)
    return result


#: the row every other row is compared with by paired bootstrap resampling: the text-only BERT-enc
REFERENCE = "text_plain"


def tokenized_hypotheses(data: str, tgt: str, output: str, split: str) -> List[str]:
    """The lowercased, tokenized hypotheses of a fairseq-generate output, as ``score`` counts 'BLEU tok'."""
    from vlp_mmt_fairseq.evaluation.bleu import lowercase_normalize_tokenize
    from vlp_mmt_fairseq.evaluation.generate_output import read_detokenized_hypotheses
    from vlp_mmt_fairseq.evaluation.references import read_lines

    count = len(read_lines(os.path.join(data, "raw", f"{split}.{tgt}")))
    return lowercase_normalize_tokenize(read_detokenized_hypotheses(output, count), tgt)


def row_hypotheses(work: str, args, name: str, probe: bool = False, *, lenpen: float = DEFAULT_LENPEN,
                   checkpoint: str = "best") -> List[str]:
    """A row's tokenized test2016 hypotheses (its real or, with ``probe``, shuffled images), as 'BLEU tok' counts."""
    output = os.path.join(work, generation_output(name, PROBE_SPLIT, probe, lenpen, checkpoint))
    return tokenized_hypotheses(args.data, args.tgt, output, PROBE_SPLIT)


def significance_references(args) -> List[str]:
    """test2016's tokenized references of 'BLEU tok': ``DATA/tok``, or else the raw ones lowercased and tokenized
    as the hypotheses are."""
    from vlp_mmt_fairseq.evaluation.bleu import lowercase_normalize_tokenize
    from vlp_mmt_fairseq.evaluation.references import read_lines

    tok_path = os.path.join(args.data, "tok", f"{PROBE_SPLIT}.{args.tgt}")
    if os.path.exists(tok_path):
        return [" ".join(line.split()) for line in read_lines(tok_path)]
    raw = read_lines(os.path.join(args.data, "raw", f"{PROBE_SPLIT}.{args.tgt}"))
    return lowercase_normalize_tokenize(raw, args.tgt)


def versus_reference(system: List[str], reference_system: List[str], references: List[str],
                     against: str = REFERENCE) -> dict:
    """Paired bootstrap (1,000 resamples) of two systems' tokenized test2016 outputs: the difference in BLEU, its
    95% interval and p; identical outputs get p = 1. ``against`` names what ``reference_system`` is."""
    from vlp_mmt_fairseq.evaluation.significance import paired_bootstrap

    result = paired_bootstrap(system, reference_system, references)
    return {"reference": against, "delta": round(result.delta, 2), "delta_low": round(result.delta_low, 2),
            "delta_high": round(result.delta_high, 2), "p_value": round(result.p_value, 4)}


def add_significance(rows: List[dict], work: str, args) -> None:
    """Each finished row's test2016 'BLEU tok' against the reference row's (``vs_reference``); where both have
    their length penalty tuned on valid, the same at the tuned length penalties (``lenpen.vs_reference``), and
    where both were decoded from their last epoch, the same at the last epoch (``last.vs_reference``)."""
    by_name = {row["variant"]: row for row in rows}
    reference = by_name.get(REFERENCE)
    if not (reference and reference["finished"]):
        return
    references = significance_references(args)

    hypotheses = functools.partial(row_hypotheses, work, args)  # real images: the rows' own decodings

    def last_hypotheses(row: dict) -> List[str]:  # where the best checkpoint is the last, its own decoding
        return hypotheses(row["variant"], checkpoint="best" if row["last"].get("same_checkpoint") else "last")

    default = hypotheses(REFERENCE)
    tuned = hypotheses(REFERENCE, lenpen=reference["lenpen"]["chosen"]) if reference.get("lenpen") else None
    last = last_hypotheses(reference) if reference.get("last") else None
    for name, row in by_name.items():
        if not row["finished"] or name == REFERENCE:
            continue
        row["vs_reference"] = versus_reference(hypotheses(name), default, references)
        if tuned is not None and row.get("lenpen"):
            row["lenpen"]["vs_reference"] = versus_reference(hypotheses(name, lenpen=row["lenpen"]["chosen"]), tuned,
                                                             references)
        if last is not None and row.get("last"):
            row["last"]["vs_reference"] = versus_reference(last_hypotheses(row), last, references)


def add_shuffle_significance(rows: List[dict], work: str, args) -> None:
    """Each finished image row's test2016 'BLEU tok' with shuffled images against its own with the real ones
    (``incongruent.vs_real_images``): whether what the image says, not only that there is one, moves the BLEU."""
    references = None
    for row in rows:
        if not (row["finished"] and "incongruent" in row):
            continue
        references = references or significance_references(args)
        real, shuffled = (row_hypotheses(work, args, row["variant"], probe) for probe in (False, True))
        row["incongruent"]["vs_real_images"] = versus_reference(shuffled, real, references, against="real images")


def add_previous_rows(rows: List[dict], path: str) -> List[str]:
    """Replace each row not finished here by the same variant's finished row of an earlier ``ablation.json`` (a run
    on another machine, whose work folder is gone); returns the variants taken from it."""
    try:
        with open(path, encoding="utf-8") as f:
            previous = {row["variant"]: row for row in json.load(f)["rows"] if row.get("finished")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StepError(f"--previous-results {path}: not an ablation.json of this script ({e})") from None
    taken = []
    for i, row in enumerate(rows):
        if not row["finished"] and row["variant"] in previous:
            rows[i] = dict(previous[row["variant"]], measured_in=path)
            taken.append(row["variant"])
    return taken


def significance_cell(test: Optional[dict]) -> str:
    if not test:
        return ""
    return f"{test['delta']:+.2f} [{test['delta_low']:+.2f}, {test['delta_high']:+.2f}]" + \
        ("*" if test["p_value"] < 0.05 else "")


def curve_cell(row: dict) -> str:
    return " ".join(f"{bleu:.1f}" for bleu in row.get("valid_curve", {}).values())


def fmt(value, digits=1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def mass_cell(row: dict, kind: str) -> str:
    if "mass" not in row:
        return ""
    return f"{row['mass']['first'][kind]:.2f} → {row['mass']['last'][kind]:.2f}"


COLUMNS = ["variant", "what differs from base", "valid BLEU", "test2016 BLEU", "test2016 BLEU tok",
           f"tok vs {REFERENCE}", "test2016 length ratio", "test2016 BLEU without BP", "shuffled",
           "BLEU lost shuffled", "tok shuffled vs real", "valid BLEU per epoch (greedy)", "train min",
           "steps min", "text mass", "tag mass", "region mass"]


def length_cells(result: dict) -> List[str]:
    """The hypotheses' length over the references' and the BLEU before its brevity penalty."""
    without_bp = result["bleu"] / result["brevity_penalty"] if result["brevity_penalty"] else None
    return [fmt(result["length_ratio"], 2), fmt(without_bp)]


def table_cells(row: dict) -> List[str]:
    if not row["finished"]:
        return [row["variant"], row["label"]] + ["not run"] + [""] * (len(COLUMNS) - 3)
    incongruent = row.get("incongruent", {})
    return [row["variant"], row["label"], fmt(row["valid"]["bleu"]), fmt(row["test2016"]["bleu"]),
            fmt(row["test2016"]["bleu_tok"]), significance_cell(row.get("vs_reference")),
            *length_cells(row["test2016"]), fmt(incongruent.get("bleu")), fmt(row.get("bleu_lost_incongruent"), 2),
            significance_cell(incongruent.get("vs_real_images")), curve_cell(row),
            fmt(row["train_seconds"] / 60), fmt(row["step_seconds"] / 60),
            mass_cell(row, "text"), mass_cell(row, "tag"), mass_cell(row, "region")]


LENPEN_COLUMNS = ["variant", "valid BLEU per length penalty", "chosen", "test2016 BLEU", "test2016 BLEU tok",
                  f"tok vs {REFERENCE} (tuned)", "test2016 length ratio", "test2016 BLEU without BP",
                  "BLEU lost shuffled"]


LAST_COLUMNS = ["variant", "best checkpoint's epoch", "valid BLEU", "test2016 BLEU", "test2016 BLEU tok",
                f"tok vs {REFERENCE} (last)", "test2016 length ratio", "test2016 BLEU without BP", "BLEU lost shuffled"]


def last_cells(row: dict) -> List[str]:
    """The row of the third table: every variant decoded from its last epoch's checkpoint."""
    last = row.get("last")
    if not last:
        return [row["variant"]] + ["not run" if not row["finished"] else "not decoded"] + [""] * (len(LAST_COLUMNS) - 2)
    return [row["variant"], f"{last['best_epoch']} of {last['last_epoch']}", fmt(last["valid"]["bleu"]),
            fmt(last[PROBE_SPLIT]["bleu"]), fmt(last[PROBE_SPLIT]["bleu_tok"]),
            significance_cell(last.get("vs_reference")), *length_cells(last[PROBE_SPLIT]),
            fmt(last.get("bleu_lost_incongruent"), 2)]


def lenpen_cells(row: dict) -> List[str]:
    """The row of the second table: the length penalty chosen on valid, and test2016 decoded with it."""
    tuned = row.get("lenpen")
    if not tuned:
        return [row["variant"]] + ["not run" if not row["finished"] else "sweep not run"] + \
            [""] * (len(LENPEN_COLUMNS) - 2)
    sweep = " ".join(f"{lenpen}: {bleu:.1f}" for lenpen, bleu in tuned["valid_bleu"].items())
    return [row["variant"], sweep, f"{tuned['chosen']:g}", fmt(tuned[PROBE_SPLIT]["bleu"]),
            fmt(tuned[PROBE_SPLIT]["bleu_tok"]), significance_cell(tuned.get("vs_reference")),
            *length_cells(tuned[PROBE_SPLIT]), fmt(tuned.get("bleu_lost_incongruent"), 2)]


def write_results(runner: StepRunner, budget: Budget, args, vlp_seconds: Dict[str, Optional[float]]) -> str:
    """``results/ablation.{md,csv,json}`` and ``results/attention_mass.png``; returns the Markdown."""
    import csv
    import io

    every, choices = steps_with_tuned(runner, budget, args)
    current = runner.plan(every, strict=False)
    rows = [variant_row(runner, budget, args, variants(budget)[name], current, choices[name])
            for name in args.variants]
    add_significance(rows, runner.work_dir, args)
    add_shuffle_significance(rows, runner.work_dir, args)
    earlier = add_previous_rows(rows, args.previous_results) if args.previous_results else []
    out = os.path.join(runner.work_dir, "results")
    os.makedirs(out, exist_ok=True)
    notes = [
        f"{args.src}-{args.tgt}, budget '{budget.name}': {budget.summary}.",
        "Stage 1 (BERT frozen, no modality loss) for every row; each row differs from `base` in what its second "
        "column says. BLEU: detokenized sacreBLEU of the best checkpoint on valid BLEU, beam "
        f"{budget.test_beam}; 'BLEU tok': lowercased tokenized BLEU (where the data has tok/). 'shuffled': "
        "test2016 with the images shuffled across sentences (--shuffle-images-seed 1).",
        "Mass: the decoder's cross-attention mass on source-text, tag and region positions, mean over layers, after "
        "the first → the last epoch (references of valid force-decoded; special tokens take the rest).",
        "Times: the step's own seconds at the thread count it ran with (a resumed training run adds the wall time "
        "fairseq logged in each interrupted attempt); 'steps' adds generation and the mass. "
        "VLP: " + ", ".join(f"{k} {fmt(v / 60)} min" if v else f"{k} not run" for k, v in vlp_seconds.items()) + ".",
        f"'tok vs {REFERENCE}': the row's test2016 'BLEU tok' minus {REFERENCE}'s, with the 95% interval of the "
        "difference, by paired bootstrap resampling (sacreBLEU's, 1,000 resamples; * p < 0.05). 'valid BLEU per "
        "epoch': the greedy validation of each epoch, from which the best checkpoint was chosen. 'length ratio': "
        "the test2016 hypotheses' length over the references' (sacreBLEU's tokens); 'without BP': the BLEU "
        "divided by its brevity penalty, i.e. the geometric mean of the n-gram precisions. 'tok shuffled vs real': "
        "the shuffled-image test2016 'BLEU tok' minus the real-image one, by the same paired bootstrap.",
        "Length penalty (second table): valid decoded at each --lenpen of "
        f"{', '.join(f'{x:g}' for x in budget.lenpens)} (beam {budget.test_beam}); test2016 and its shuffled probe "
        f"decoded again at the one with the best valid BLEU; 'tok vs {REFERENCE} (tuned)' compares with "
        f"{REFERENCE} at its own tuned length penalty, by the same paired bootstrap.",
        "Last epoch (third table): valid, test2016 and its probe decoded from checkpoint_last.pt (beam "
        f"{budget.test_beam}, --lenpen 1), so that every row is compared after the same number of updates; "
        "'best checkpoint's epoch': the epoch the first table's checkpoint_best.pt is from (its greedy valid BLEU; "
        "where it is the last epoch, checkpoint_best.pt is checkpoint_last.pt and its decodings are the first "
        "table's).",
        "Rows without the frozen-encoder cache (something before BERT trains): "
        + (", ".join(r["variant"] for r in rows if not r["cache"]) or "none") + ".",
    ]
    if earlier:
        notes.append(f"Rows measured in an earlier run, as {args.previous_results} recorded them (figures and paired "
                     f"bootstrap against that run's {REFERENCE}): {', '.join(earlier)}.")
    lines = [f"## Stage-1 ablation ({args.src}-{args.tgt}, budget '{budget.name}')", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(COLUMNS) - 2)) + "|"]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    lines += ["", "### With the length penalty tuned on valid", "",
              "| " + " | ".join(LENPEN_COLUMNS) + " |", "|---|---|" + "---:|" * (len(LENPEN_COLUMNS) - 2)]
    lines += ["| " + " | ".join(lenpen_cells(row)) + " |" for row in rows]
    lines += ["", "### Every row at its last epoch (checkpoint_last.pt, fairseq's default length penalty)", "",
              "| " + " | ".join(LAST_COLUMNS) + " |", "|---|" + "---:|" * (len(LAST_COLUMNS) - 1)]
    lines += ["| " + " | ".join(last_cells(row)) + " |" for row in rows]
    lines += [""] + [f"- {note}" for note in notes] + [""]
    markdown = "\n".join(lines)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS + [f"lenpen: {column}" for column in LENPEN_COLUMNS[1:]]
                    + [f"last: {column}" for column in LAST_COLUMNS[1:]])
    writer.writerows(table_cells(row) + lenpen_cells(row)[1:] + last_cells(row)[1:] for row in rows)
    summary = {"budget": asdict(budget), "src": args.src, "tgt": args.tgt, "data": os.path.abspath(args.data),
               "features": os.path.abspath(args.features) if args.features else None,
               "vlp_seconds": vlp_seconds, "notes": notes, "rows": rows}
    for name, text in (("ablation.md", markdown), ("ablation.csv", buffer.getvalue()),
                       ("ablation.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")):
        with atomic_output(os.path.join(out, name)) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
    finished = [row for row in rows if row["finished"]]
    if finished:
        plot_mass(finished, os.path.join(out, "attention_mass.png"), budget)
    return markdown


def plot_mass(rows: List[dict], path: str, budget: Budget) -> None:
    """Per variant two stacked bars (after the first and the last epoch): mean cross-attention mass per kind."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"text": "#4c72b0", "tag": "#dd8452", "region": "#55a868", "special": "#8c8c8c"}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.0))
    for i, row in enumerate(rows):
        for j, label in enumerate(("first", "last")):
            bottom = 0.0
            for kind, color in colors.items():
                value = row["mass"][label][kind]
                ax.bar(i + (j - 0.5) * 0.38, value, width=0.36, bottom=bottom, color=color,
                       alpha=0.55 if label == "first" else 1.0, label=kind if i == 0 and j == 1 else None)
                bottom += value
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([row["variant"] for row in rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("cross-attention mass (mean over layers)")
    ax.set_title(f"Decoder cross-attention mass after the first (light) and last epoch (budget '{budget.name}')",
                 fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True,
                        help="Multi30K prepared by vlp-mmt-prepare-multi30k (its bert/, raw/ and tok/ are read)")
    parser.add_argument("--features", help="the image-feature store of every image of the data, e.g. the "
                        "caption-proxy store of vlp-mmt-caption-proxy-store (needed unless only text-only rows "
                        "without VLP run)")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--bert-model", default="bundled-minilm", help="the BERT of --data (default bundled-minilm)")
    parser.add_argument("--budget", choices=list(BUDGETS), default="cpu",
                        help="; ".join(f"{b.name}: {b.summary}" for b in BUDGETS.values()))
    parser.add_argument("--variants", nargs="+", metavar="VARIANT",
                        help="the rows to run (default: all): " + ", ".join(variants(BUDGETS["cpu"])))
    parser.add_argument("--work-dir", help="where everything goes (default work_dirs/ablation.SRC-TGT.BUDGET)")
    add_parallel_arguments(parser)
    parser.add_argument("--redo", nargs="+", default=[], metavar="STEP", help="run these steps again")
    parser.add_argument("--tables-only", action="store_true", help="run nothing: write the table from what is done")
    parser.add_argument("--previous-results", metavar="JSON",
                        help="an ablation.json of an earlier run (e.g. examples/ablations/results/ablation.json): "
                             "the rows not finished here are taken from it, as it recorded them")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and their commands, then stop")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    budget = BUDGETS[args.budget]
    known = variants(budget)
    args.variants = args.variants or list(known)
    unknown = [v for v in args.variants if v not in known]
    if unknown:
        sys.exit(f"error: unknown variant {unknown[0]}; known: {', '.join(known)}")
    if not os.path.isdir(os.path.join(args.data, "bert")):
        sys.exit(f"error: {args.data}: no bert/ folder (prepare the data with vlp-mmt-prepare-multi30k)")
    needs_features = any(known[v].images or known[v].vlp for v in args.variants)
    if needs_features and not args.features:
        sys.exit("error: --features is needed: the multimodal variants and VLP read the image store")
    if args.features and not os.path.isfile(args.features):
        sys.exit(f"error: --features {args.features}: no such file")
    stop_on_sigterm()
    start = time.time()
    work_dir = args.work_dir or os.path.join(REPO, "work_dirs", f"ablation.{args.src}-{args.tgt}.{budget.name}")
    values = {"REPO": REPO, "PYTHON": sys.executable, "DATA": os.path.abspath(args.data),
              "FEATURES": os.path.abspath(args.features) if args.features else ""}
    runner = StepRunner(work_dir, values, env=python_env(args.threads))
    try:
        ordered, _ = steps_with_tuned(runner, budget, args)
        if args.dry_run:
            reused = runner.plan(ordered, strict=False)
            for step in ordered:
                print(f"# {step.name} [{'done' if reused[step.name] else 'to run'}]\n{shell_command(step)}")
            print("then, for each variant whose valid sweep is new: test2016 at the length penalty best on valid; "
                  "for each variant whose best checkpoint is not its last: valid and test2016 from the last")
            return
        if not args.tables_only:
            by_name = {s.name: s for s in ordered}
            for name in args.redo:
                if name not in by_name:
                    raise StepError(f"--redo {name}: no such step among the selected variants' steps")
                runner.forget(by_name[name])
            print(f"{len(ordered)} steps in {runner.work_dir} (budget '{budget.name}', {args.src}-{args.tgt})")
            runner.run(ordered, jobs=args.jobs)
            tuned, _ = steps_with_tuned(runner, budget, args)  # the sweeps on valid that ran just now choose theirs
            if not all(runner.plan(tuned, strict=False).values()):
                print(f"{len(tuned)} steps with test2016 at the length penalties chosen on valid")
                runner.run(tuned, jobs=args.jobs)
        vlp_seconds = {}
        for which in ("short", "long"):
            record = runner.record(vlp_step(budget, args, which))
            vlp_seconds[which] = record["seconds"] if record else None
        table = write_results(runner, budget, args, vlp_seconds)
    except StepError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: run the same command again to continue where it stopped")
    print("\n" + table)
    print(f"results in {os.path.join(runner.work_dir, 'results')}; wall time of this run: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
