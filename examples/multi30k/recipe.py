"""The comparison recipe: every system of the paper's Tables 5 and 6 as steps (command lines).

This file is the one source of truth: ``compare.py`` runs these steps, and ``compare.py
--write-scripts`` writes the same steps as one shell script per system (``systems/<name>.sh``).

Systems (rows). Text-only: ``transformer`` (fairseq's own transformer on the SentencePiece
source), ``bert_enc_stage1`` / ``bert_enc_stage2`` (the BERT encoder without images and without
VLP, BERT frozen, then everything trained), ``bert_nmt`` (BERT-fused NMT, Zhu et al. 2020,
warm-started from the transformer). Multimodal, all starting from one small VLP run: ``end2end``
(one stage, everything trains), ``stage1`` (BERT frozen), ``stage2`` (then everything, at the
smaller fine-tuning rate), ``full`` (both stages with the modality loss at the last decoder layer
and a learnable lambda: the paper's "Our model"), ``lm_all`` (the modality loss at every decoder
layer), ``lm_fixed`` (last layer, lambda fixed at 0.4). ``end2end``, ``stage1`` and ``stage2``
train without the modality loss (the ablation adds it to the two-stage model). ``end2end`` is
stage 1's run without freezing: the same learning rate, so that the row isolates what the two
stages change. The multimodal runs give no option of the encoder's image input (region embedding,
decoder memory, FFN(v) training, modality gate): they use the task's and the model's defaults.

The VLP run is Algorithm 1, steps 3-4 only: masked LM and paired-image prediction on the task-1
*training* sources and their images (29,000 pairs with the full data), validated on the held-out
val pairs, whose MLM and pair accuracy the tables report. Step 2 (pre-training on the other task-2
descriptions) is not run: with the caption-proxy store, an image holds those descriptions, so it
would need an image side that leaves each description out of its own pair.

Checkpoints, as the paper selects them (its Figure 3 and section 4.3): every training run
validates with ``--eval-bleu`` (greedy on the CPU budgets) after each epoch and keeps the best
checkpoint on that BLEU (``--best-checkpoint-metric bleu``). Stage 2 starts from stage 1's
``checkpoint_best.pt``, BERT-NMT from the transformer's; each evaluated model is its final run's
``checkpoint_best.pt``, or, where a budget asks for it (``average_last``), the average of its last
epoch checkpoints (``vlp-mmt-average-checkpoints``).
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from budgets import Budget
from vlp_mmt_fairseq.step_runner import Step, order_steps

#: every fairseq command loads the plugin, also for fairseq's own translation task: its compatibility
#: fixes (safe checkpoint loading with torch >= 2.6) apply to all checkpoints
USER_DIR = "{REPO}/vlp_mmt_fairseq"
TEST_SETS = {"test2016": "test_2016_flickr", "test2017": "test_2017_flickr", "mscoco": "test_2017_mscoco"}
#: probes of multimodal systems: name -> extra fairseq-generate flags (Elliott 2018)
PROBES = {"incongruent": ["--shuffle-images-seed", "1"], "no_image": ["--no-images"]}
BERT_DIR = "models/bert"
VLP_CHECKPOINT = "ckpt/vlp/checkpoint_last.pt"
GEN_LEN = ["--max-len-a", "1.5", "--max-len-b", "10"]


@dataclass(frozen=True)
class System:
    """One row: its label, whether it reads images, and its training runs in order."""

    name: str
    label: str
    multimodal: bool
    runs: Tuple[str, ...]

    @property
    def final_run(self) -> str:
        return self.runs[-1]


SYSTEMS = {
    s.name: s
    for s in (
        System("transformer", "Transformer (text only)", False, ("transformer",)),
        System("bert_enc_stage1", "BERT-enc, stage 1 (text only, no VLP)", False, ("bert_enc_stage1",)),
        System("bert_enc_stage2", "BERT-enc, stage 2 (text only, no VLP)", False,
               ("bert_enc_stage1", "bert_enc_stage2")),
        System("bert_nmt", "BERT-NMT (Zhu et al. 2020, text only)", False, ("transformer", "bert_nmt")),
        System("end2end", "End2End (VLP, one stage, no L_M)", True, ("end2end",)),
        System("stage1", "1st stage only (VLP, BERT frozen, no L_M)", True, ("stage1",)),
        System("stage2", "+ 2nd stage (no L_M)", True, ("stage1", "stage2")),
        System("full", "+ L_M, last layer, learnable lambda (Our model)", True, ("full_stage1", "full_stage2")),
        System("lm_all", "L_M, all layers, learnable lambda", True, ("lm_all_stage1", "lm_all_stage2")),
        System("lm_fixed", "L_M, last layer, fixed lambda = 0.4", True, ("lm_fixed_stage1", "lm_fixed_stage2")),
    )
}
#: the paper's Table 5 (systems) and Table 6 (ablation), and the row each table's deltas are against
TABLE5 = ("transformer", "bert_enc_stage1", "bert_enc_stage2", "bert_nmt", "full")
TABLE6 = ("end2end", "stage1", "stage2", "full", "lm_all", "lm_fixed")
BASELINE = {"table5": "transformer", "table6": "full"}
BASELINE_LABEL = {"table5": "Transformer", "table6": "Our model"}

#: vlp_mmt runs: (stage, modality-loss flags, the run whose best checkpoint it continues)
VLP_MMT_RUNS = {
    "bert_enc_stage1": (1, ["--modality-loss", "off"], None),
    "bert_enc_stage2": (2, ["--modality-loss", "off"], "bert_enc_stage1"),
    "end2end": (0, ["--modality-loss", "off"], None),
    "stage1": (1, ["--modality-loss", "off"], None),
    "stage2": (2, ["--modality-loss", "off"], "stage1"),
    "full_stage1": (1, ["--modality-loss", "last"], None),
    "full_stage2": (2, ["--modality-loss", "last"], "full_stage1"),
    "lm_all_stage1": (1, ["--modality-loss", "all"], None),
    "lm_all_stage2": (2, ["--modality-loss", "all"], "lm_all_stage1"),
    "lm_fixed_stage1": (1, ["--modality-loss", "last", "--modality-lambda", "0.4"], None),
    "lm_fixed_stage2": (2, ["--modality-loss", "last", "--modality-lambda", "0.4"], "lm_fixed_stage1"),
}
TEXT_ONLY_RUNS = {"bert_enc_stage1", "bert_enc_stage2"}


#: features that carry the source sentence's own words (the pipeline checks' store, ``image_concepts.py``)
SYNTHETIC_LABEL = "synthetic source-copy features"
CAPTION_PROXY_LABEL = "caption-proxy features"


# (System above and Setup share the shape of a frozen dataclass's field list, and nothing more)
@dataclass(frozen=True)
class Setup:
    """What one comparison is run on: the languages, the budget, the data and the features."""

    budget: Budget
    src: str
    tgt: str
    test_sets: Tuple[str, ...]
    real_features: bool  # True: the store given by --features ({FEATURES}); False: synthetic
    feature_label: str = SYNTHETIC_LABEL  # how the tables label the multimodal rows
    #: the test sets whose images the store holds (None: all); the multimodal rows are n/a on the others
    image_test_sets: Optional[Tuple[str, ...]] = None

    @property
    def features(self) -> str:
        return "{FEATURES}" if self.real_features else "features/synthetic.h5"

    @property
    def bert_model(self) -> str:
        """``--bert-model`` of every command: the budget's BERT, or its cut-down copy in the work dir."""
        return BERT_DIR if self.budget.bert_layers else self.budget.bert_model

    @property
    def regions(self) -> str:
        return str(self.budget.regions)

    def system_test_sets(self, system: "System") -> Tuple[str, ...]:
        """The test sets ``system`` is evaluated on: all of them, or for a multimodal row those with images."""
        if not system.multimodal or self.image_test_sets is None:
            return self.test_sets
        return tuple(t for t in self.test_sets if t in self.image_test_sets)


def best(run: str) -> str:
    """The run's best checkpoint on valid BLEU: where the next stage starts."""
    return f"ckpt/{run}/checkpoint_best.pt"


def averaged(run: str) -> str:
    return f"ckpt/{run}/average.pt"


def evaluated(budget: Budget, run: str) -> str:
    """The model that is evaluated when ``run`` is a system's final run."""
    return averaged(run) if budget.average_last else best(run)


def finished_after(budget: Budget, run: str) -> str:
    """The step after which ``run``'s evaluated model exists."""
    return f"average.{run}" if budget.average_last else f"train.{run}"


def train_log(run: str) -> str:
    return f"logs/train.{run}.log"


# ----------------------------------------------------------------------------- data and features


def data_steps(setup: Setup) -> Dict[str, Step]:
    """Subset (small budgets), prepare, and (without --features) the synthetic store."""
    b, steps = setup.budget, {}
    source, after = "{MULTI30K}", []
    if b.train_sentences or b.valid_sentences or b.test_sentences:
        command = ["{PYTHON}", "{REPO}/examples/multi30k/subset_multi30k.py", "--multi30k-dir", "{MULTI30K}",
                   "--out", "multi30k", "--src", setup.src, "--tgt", setup.tgt,
                   "--splits", "train", "val", *[TEST_SETS[t] for t in setup.test_sets]]
        for flag, value in (("--train", b.train_sentences), ("--valid", b.valid_sentences),
                            ("--test", b.test_sentences)):
            if value:
                command += [flag, str(value)]
        steps["subset"] = Step("subset", command, outputs=["multi30k"], log="logs/subset.log")
        source, after = "multi30k", ["subset"]
    if b.bert_layers:
        steps["bert"] = Step(
            "bert",
            ["{PYTHON}", "{REPO}/examples/multi30k/truncate_bert.py", "--bert-model", b.bert_model,
             "--layers", str(b.bert_layers), "--out", BERT_DIR],
            outputs=[BERT_DIR], log="logs/bert.log",
        )
        after = after + ["bert"]
    splits = ["train", "val", *[TEST_SETS[t] for t in setup.test_sets]]
    steps["prepare"] = Step(
        "prepare",
        ["vlp-mmt-prepare-multi30k", "--multi30k-dir", source, "--src", setup.src,
         "--tgt", setup.tgt, "--out", "data", "--bert-model", setup.bert_model,
         "--spm-vocab-size", str(b.spm_vocab_size), "--spm-vocab-size-src", str(b.spm_vocab_size), "--splits", *splits],
        outputs=["data/prepare.json"], after=after, log="logs/prepare.log",
    )
    if not setup.real_features:
        steps["concepts"] = Step(
            "concepts",
            ["{PYTHON}", "{REPO}/examples/multi30k/image_concepts.py", "--data", "data", "--src", setup.src,
             "--out-dir", "features"],
            outputs=["features/concepts.tsv", "features/tags.tsv"], after=["prepare"], log="logs/features.log",
        )
        steps["features"] = Step(
            "features",
            ["vlp-mmt-synthetic-store",
             "--keys-from", *[f"data/images/{s}.txt" for s in ("train", "valid", *setup.test_sets)],
             "--concepts-tsv", "features/concepts.tsv", "--tags-tsv", "features/tags.tsv",
             "--feature-dim", str(b.feature_dim), "--regions", str(b.regions), "--seed", "1",
             "--output", "features/synthetic.h5", "--no-progress"],
            outputs=["features/synthetic.h5"], after=["concepts"], log="logs/features.log",
        )
    return steps


def feature_after(setup: Setup) -> List[str]:
    return ["prepare"] if setup.real_features else ["prepare", "features"]


# ----------------------------------------------------------------------------- training


def optimisation(b: Budget, run: str, epochs: int, finetune: bool = False) -> List[str]:
    """Flags every fairseq-train of the comparison shares: the optimiser, the schedule, the checkpoint selection."""
    valid_generation = json.dumps({"beam": b.valid_beam, "max_len_a": 1.5, "max_len_b": 10})
    lr, warmup = (b.finetune_lr, b.finetune_warmup_updates) if finetune else (b.lr, b.warmup_updates)
    keep = ["--keep-last-epochs", str(b.average_last)] if b.average_last else ["--no-epoch-checkpoints"]
    return [
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(lr), "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", str(warmup), "--warmup-init-lr", "1e-07", "--weight-decay", "0.0001",
        "--dropout", str(b.dropout), "--label-smoothing", "0.1",
        "--max-tokens", str(b.max_tokens), "--required-batch-size-multiple", "1", "--max-epoch", str(epochs),
        "--save-dir", f"ckpt/{run}", *keep,
        "--eval-bleu", "--eval-bleu-args", valid_generation, "--eval-bleu-detok", "space",
        "--eval-bleu-remove-bpe", "sentencepiece", "--best-checkpoint-metric", "bleu",
        "--maximize-best-checkpoint-metric",
        "--seed", "1", "--log-format", "json", "--log-interval", "10", *b.device_flags,
    ]


def size_flags(b: Budget, encoder: bool) -> List[str]:
    """The budget's decoder size (and the transformer's encoder size), or nothing where the arch decides."""
    if b.size is None:
        return []
    return (b.size.flags("encoder") if encoder else []) + b.size.flags("decoder")


def train_outputs(run: str) -> List[str]:
    return [f"ckpt/{run}/checkpoint_last.pt", best(run)]


def average_step(setup: Setup, run: str, train_step: Step) -> Step:
    return Step(
        f"average.{run}",
        ["vlp-mmt-average-checkpoints", "--input-dir", f"ckpt/{run}", "--num-epoch-checkpoints",
         str(setup.budget.average_last), "--output", averaged(run)],
        outputs=[averaged(run)], after=[train_step.name], log=f"logs/average.{run}.log",
    )


def transformer_step(setup: Setup) -> Step:
    """fairseq's translation task on the SentencePiece text: valid BLEU on the pieces joined back into raw text."""
    b = setup.budget
    return Step(
        "train.transformer",
        ["fairseq-train", "data/text", "--user-dir", USER_DIR, "--task", "translation",
         "-s", setup.src, "-t", setup.tgt, "--arch", b.transformer_arch, *size_flags(b, encoder=True),
         "--criterion", "label_smoothed_cross_entropy", *optimisation(b, "transformer", b.transformer_epochs)],
        outputs=train_outputs("transformer"), after=["prepare"], log=train_log("transformer"),
        clean=["ckpt/transformer", train_log("transformer")],
    )


def bert_nmt_step(setup: Setup) -> Step:
    b = setup.budget
    return Step(
        "train.bert_nmt",
        ["fairseq-train", "data/text", "--user-dir", USER_DIR, "--task", "bert_fused_translation",
         "-s", setup.src, "-t", setup.tgt, "--bert-model", setup.bert_model, "--arch", b.bert_nmt_arch,
         *size_flags(b, encoder=True), "--warmstart-from", best("transformer"),
         "--criterion", "label_smoothed_cross_entropy", *optimisation(b, "bert_nmt", b.bert_nmt_epochs)],
        outputs=train_outputs("bert_nmt"), after=["train.transformer"], log=train_log("bert_nmt"),
        clean=["ckpt/bert_nmt", train_log("bert_nmt")],
    )


def vlp_step(setup: Setup) -> Step:
    """VLP (Algorithm 1, steps 3-4): masked LM and paired-image prediction on the training pairs only.

    fairseq validates on the held-out val pairs (``--valid-subset valid``) after each epoch and at the end;
    the last validation's MLM and pair accuracy go into the tables' notes. Stage 1 loads the last checkpoint.
    """
    b = setup.budget
    return Step(
        "train.vlp",
        ["fairseq-train", "data/bert", "--user-dir", USER_DIR, "--task", "vlp_pretrain", "--source-lang", setup.src,
         "--arch", b.vlp_arch, "--criterion", "vlp_pretrain_loss", "--bert-model", setup.bert_model,
         "--image-features", setup.features, "--max-regions", setup.regions,
         "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(b.vlp_lr),
         "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(max(1, b.vlp_updates // 10)),
         "--warmup-init-lr", "1e-07", "--weight-decay", "0.01", "--max-tokens", str(b.max_tokens),
         "--max-update", str(b.vlp_updates), "--train-subset", "train", "--valid-subset", "valid",
         "--save-dir", "ckpt/vlp", "--no-epoch-checkpoints",
         "--seed", "1", "--log-format", "json", "--log-interval", "10", *b.device_flags],
        outputs=[VLP_CHECKPOINT], after=feature_after(setup), log=train_log("vlp"),
        clean=["ckpt/vlp", train_log("vlp")],
    )


def vlp_mmt_step(setup: Setup, run: str) -> Step:
    """One stage of a BERT-encoder system (text only for bert_enc_*, else multimodal from the VLP run)."""
    b = setup.budget
    stage, modality, previous = VLP_MMT_RUNS[run]
    text_only = run in TEXT_ONLY_RUNS
    images = ["--no-images"] if text_only else ["--image-features", setup.features, "--max-regions", setup.regions]
    command = ["fairseq-train", "data/bert", "--user-dir", USER_DIR, "--task", "vlp_mmt", "-s", setup.src,
               "-t", setup.tgt, "--bert-model", setup.bert_model, "--arch", b.vlp_mmt_arch,
               *size_flags(b, encoder=False), "--criterion", "vlp_mmt_loss", *modality, *images]
    after = ["prepare"] if text_only else feature_after(setup)
    if stage == 2:
        command += ["--finetune-from-model", best(previous)]
        after = [f"train.{previous}"]
    elif not text_only:
        command += ["--load-vlp", VLP_CHECKPOINT]
        after = after + ["train.vlp"]
    if stage == 1:
        command += ["--freeze-bert"]
    if stage == 1 and text_only:  # the multimodal rows' FFN(v) trains before the frozen BERT (the default)
        command += ["--cache-frozen-encoder"]
    epochs = {0: b.end2end_epochs, 1: b.stage1_epochs if text_only else b.image_stage1_epochs,
              2: b.stage2_epochs}[stage]
    command += optimisation(b, run, epochs, finetune=stage == 2)
    return Step(f"train.{run}", command, outputs=train_outputs(run), after=after, log=train_log(run),
                clean=[f"ckpt/{run}", train_log(run)])


def run_steps(setup: Setup, run: str) -> List[Step]:
    """The training step of ``run`` (and, where the budget averages, the averaging of its last epochs)."""
    if run == "transformer":
        train = transformer_step(setup)
    elif run == "bert_nmt":
        train = bert_nmt_step(setup)
    else:
        train = vlp_mmt_step(setup, run)
    return [train, average_step(setup, run, train)] if setup.budget.average_last else [train]


# ----------------------------------------------------------------------------- evaluation


def generation_output(system: str, test_set: str, probe: Optional[str] = None) -> str:
    return f"gen/{system}/{test_set}{'.' + probe if probe else ''}.txt"


def scores_path(system: str, probe: Optional[str] = None) -> str:
    return f"scores/{system}{'.' + probe if probe else ''}.json"


def generate_step(setup: Setup, system: System, test_set: str, probe: Optional[str]) -> Step:
    b, run = setup.budget, system.final_run
    command = ["fairseq-generate"]
    if system.name == "transformer":
        command += ["data/text", "--user-dir", USER_DIR, "--task", "translation"]
    elif system.name == "bert_nmt":
        command += ["data/text", "--user-dir", USER_DIR, "--task", "bert_fused_translation",
                    "--bert-model", setup.bert_model]
    else:
        command += ["data/bert", "--user-dir", USER_DIR, "--task", "vlp_mmt", "--bert-model", setup.bert_model]
        command += (["--image-features", setup.features, "--max-regions", setup.regions] if system.multimodal
                    else ["--no-images"])
    command += ["-s", setup.src, "-t", setup.tgt, "--path", evaluated(b, run), "--gen-subset", test_set,
                "--beam", str(b.test_beam), "--max-tokens", str(b.gen_max_tokens), *GEN_LEN,
                "--required-batch-size-multiple", "1", "--post-process", "sentencepiece", *b.device_flags]
    if probe:
        command += PROBES[probe]
    name = f"generate.{system.name}.{test_set}{'.' + probe if probe else ''}"
    return Step(name, command, outputs=[generation_output(system.name, test_set, probe)],
                after=[finished_after(b, run)], stdout=generation_output(system.name, test_set, probe),
                log=f"logs/generate.{system.name}.log")


def score_step(setup: Setup, system: System, probe: Optional[str], generated: List[Step]) -> Step:
    outputs = [f"{generation_output(system.name, t, probe)}:{t}" for t in setup.system_test_sets(system)]
    command = ["vlp-mmt-score", "--generate-output", *outputs, "--refs-dir", "data", "--tgt", setup.tgt,
               "--json", scores_path(system.name, probe)]
    if probe:
        command.append("--no-meteor")  # a probe reports the BLEU it loses
    return Step(f"score.{system.name}{'.' + probe if probe else ''}", command,
                outputs=[scores_path(system.name, probe)], after=[g.name for g in generated],
                log=f"logs/score.{system.name}.log")


def system_steps(setup: Setup, system: System) -> List[Step]:
    """Training, generation and scoring of one system (not the steps it shares).

    A multimodal system is generated only on the test sets whose images the store holds.
    """
    steps = []
    for run in system.runs:
        steps += run_steps(setup, run)
    for probe in [None] + (list(PROBES) if system.multimodal else []):
        generated = [generate_step(setup, system, t, probe) for t in setup.system_test_sets(system)]
        steps += generated + [score_step(setup, system, probe, generated)]
    return steps


def all_steps(setup: Setup) -> Dict[str, Step]:
    """Every step of the comparison, by name."""
    steps = data_steps(setup)
    steps["train.vlp"] = vlp_step(setup)
    for system in SYSTEMS.values():
        for step in system_steps(setup, system):
            steps[step.name] = step
    return steps


def final_steps(system: System) -> List[str]:
    """The steps that finish ``system``: its scores (and its probes' scores)."""
    names = [f"score.{system.name}"]
    if system.multimodal:
        names += [f"score.{system.name}.{p}" for p in PROBES]
    return names


def available_test_sets(multi30k_dir: str, src: str, tgt: str) -> Tuple[str, ...]:
    """The paper's test sets that ``multi30k_dir`` has in both languages (en-cs has test2016 only)."""
    found = []
    for name, split in TEST_SETS.items():
        if all(os.path.exists(os.path.join(multi30k_dir, "raw", f"{split}.{lang}.gz")) or
               os.path.exists(os.path.join(multi30k_dir, "raw", f"{split}.{lang}")) for lang in (src, tgt)):
            found.append(name)
    return tuple(found)


# ----------------------------------------------------------------------------- estimated step time

#: sentences of the full splits, for the step-time estimate
SENTENCES = {"valid": 1014, "test2016": 1000, "test2017": 1000, "mscoco": 461}
SMALL_STEPS = ("subset", "bert", "concepts", "features", "score")


def training_seconds(setup: Setup, run: str) -> float:
    """Estimated time of ``train.<run>``: its batches at the measured rate of its kind, and a validation per epoch."""
    b, t = setup.budget, setup.budget.times
    n, valid = t.batches_per_epoch, t.greedy_valid * SENTENCES["valid"]
    if run == "vlp":
        return b.vlp_updates * t.vlp
    if run == "transformer":
        return b.transformer_epochs * (n * t.transformer + valid)
    if run == "bert_nmt":  # not measured: BERT runs every batch, as in an uncached run (forward only: less)
        return b.bert_nmt_epochs * (n * t.uncached + valid)
    stage = VLP_MMT_RUNS[run][0]
    if stage == 1 and run in TEXT_ONLY_RUNS:
        return n * (t.text_stage1_first + (b.stage1_epochs - 1) * t.text_stage1_later) + b.stage1_epochs * valid
    if stage == 1:
        return b.image_stage1_epochs * (n * t.image_stage1 + valid)
    epochs = b.end2end_epochs if stage == 0 else b.stage2_epochs
    return epochs * (n * t.uncached + valid)


def step_seconds(setup: Setup, step: Step) -> float:
    """Estimated time of one step of the full-data recipe; a step of an unknown kind is an error."""
    t = setup.budget.times
    kind, _, rest = step.name.partition(".")
    if kind == "prepare":
        return t.prepare
    if kind in SMALL_STEPS:
        return t.small_step
    if kind == "average":
        return t.average
    if kind == "train":
        return training_seconds(setup, rest)
    if kind == "generate":
        return t.beam_generate * SENTENCES[rest.split(".")[1]]
    raise ValueError(f"step '{step.name}': no time estimate for this kind of step")


def estimated_seconds(setup: Setup, systems=None) -> Dict[str, float]:
    """Step name -> estimated seconds, for the steps of ``systems`` (default: all), from the budget's StepTimes."""
    if setup.budget.times is None:
        raise ValueError(f"budget '{setup.budget.name}' has no measured step times")
    steps = all_steps(setup)
    wanted = [name for s in (systems or SYSTEMS) for name in final_steps(SYSTEMS[s])]
    return {step.name: step_seconds(setup, step) for step in order_steps(steps, wanted)}
