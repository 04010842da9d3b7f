"""The comparison recipe: every system of the paper's Tables 5 and 6 as steps (command lines).

This file is the one source of truth: ``compare.py`` runs these steps, and ``compare.py
--write-scripts`` writes the same steps as one shell script per system (``systems/<name>.sh``).

Systems (rows). Text-only: ``transformer`` (fairseq's own transformer on the SentencePiece
source), ``bert_enc_stage1`` / ``bert_enc_stage2`` (the BERT encoder without images and without
VLP, BERT frozen, then everything trained), ``bert_nmt`` (BERT-fused NMT, Zhu et al. 2020,
warm-started from the transformer). Multimodal, all starting from one small VLP run (Algorithm 1
on the training captions and their images): ``end2end`` (one stage, everything trains),
``stage1`` (BERT frozen), ``stage2`` (then everything, at the smaller fine-tuning rate), ``full``
(both stages with the modality loss at the last decoder layer and a learnable lambda: the paper's
"Our model"), ``lm_all`` (the modality loss at every decoder layer), ``lm_fixed`` (last layer,
lambda fixed at 0.4). ``end2end``, ``stage1`` and ``stage2`` train without the modality loss (the
ablation adds it to the two-stage model). ``end2end`` is stage 1's run without freezing: the same
learning rate and schedule, so that the row isolates what the two stages change.

Each evaluated model is the average of the last epoch checkpoints of its final run
(``vlp-mmt-average-checkpoints``); a second stage starts from the first stage's averaged model.
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from budgets import Budget
from vlp_mmt_fairseq.step_runner import Step

#: every fairseq command loads the plugin, also for fairseq's own translation task: its compatibility
#: fixes (safe checkpoint loading with torch >= 2.6) apply to all checkpoints
USER_DIR = "{REPO}/vlp_mmt_fairseq"
TEST_SETS = {"test2016": "test_2016_flickr", "test2017": "test_2017_flickr", "mscoco": "test_2017_mscoco"}
#: probes of multimodal systems: name -> extra fairseq-generate flags (Elliott 2018)
PROBES = {"incongruent": ["--shuffle-images-seed", "1"], "no_image": ["--no-images"]}
BERT_DIR = "models/bert"
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

#: vlp_mmt runs: (stage, modality-loss flags, the run whose averaged model it continues)
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


@dataclass(frozen=True)
class Setup:
    """What one comparison is run on: the languages, the budget, the data and the features."""

    budget: Budget
    src: str
    tgt: str
    test_sets: Tuple[str, ...]
    real_features: bool  # True: the store given by --features ({FEATURES}); False: synthetic

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


def averaged(run: str) -> str:
    return f"ckpt/{run}/average.pt"


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


def optimisation(b: Budget, lr: float, epochs: int, run: str) -> List[str]:
    """Flags every fairseq-train of the comparison shares."""
    valid_generation = json.dumps({"beam": b.valid_beam, "max_len_a": 1.5, "max_len_b": 10})
    return [
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(lr), "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", str(b.warmup_updates), "--warmup-init-lr", "1e-07", "--weight-decay", "0.0001",
        "--dropout", str(b.dropout), "--label-smoothing", "0.1",
        "--max-tokens", str(b.max_tokens), "--required-batch-size-multiple", "1", "--max-epoch", str(epochs),
        "--save-dir", f"ckpt/{run}", "--keep-last-epochs", str(b.average_last),
        "--eval-bleu", "--eval-bleu-args", valid_generation, "--eval-bleu-detok", "space",
        "--eval-bleu-remove-bpe", "sentencepiece",
        "--seed", "1", "--log-format", "json", "--log-interval", "10", *b.device_flags,
    ]


def average_step(setup: Setup, run: str, train_step: Step) -> Step:
    return Step(
        f"average.{run}",
        ["vlp-mmt-average-checkpoints", "--input-dir", f"ckpt/{run}", "--num-epoch-checkpoints",
         str(setup.budget.average_last), "--output", averaged(run)],
        outputs=[averaged(run)], after=[train_step.name], log=f"logs/average.{run}.log",
    )


def transformer_step(setup: Setup) -> Step:
    b = setup.budget
    return Step(
        "train.transformer",
        ["fairseq-train", "data/text", "--user-dir", USER_DIR, "--task", "translation",
         "-s", setup.src, "-t", setup.tgt, "--arch", b.transformer_arch, "--criterion", "label_smoothed_cross_entropy",
         *optimisation(b, b.lr, b.transformer_epochs, "transformer")],
        outputs=["ckpt/transformer/checkpoint_last.pt"], after=["prepare"], log=train_log("transformer"),
        clean=["ckpt/transformer", train_log("transformer")],
    )


def bert_nmt_step(setup: Setup) -> Step:
    b = setup.budget
    return Step(
        "train.bert_nmt",
        ["fairseq-train", "data/text", "--user-dir", USER_DIR, "--task", "bert_fused_translation",
         "-s", setup.src, "-t", setup.tgt, "--bert-model", setup.bert_model, "--arch", b.bert_nmt_arch,
         "--warmstart-from", averaged("transformer"), "--criterion", "label_smoothed_cross_entropy",
         *optimisation(b, b.lr, b.bert_nmt_epochs, "bert_nmt")],
        outputs=["ckpt/bert_nmt/checkpoint_last.pt"], after=["average.transformer"], log=train_log("bert_nmt"),
        clean=["ckpt/bert_nmt", train_log("bert_nmt")],
    )


def vlp_step(setup: Setup) -> Step:
    """A small VLP run (Algorithm 1, steps 3-4): masked LM and paired-image prediction on the training captions."""
    b = setup.budget
    return Step(
        "train.vlp",
        ["fairseq-train", "data/bert", "--user-dir", USER_DIR, "--task", "vlp_pretrain", "--source-lang", setup.src,
         "--arch", b.vlp_arch, "--criterion", "vlp_pretrain_loss", "--bert-model", setup.bert_model,
         "--image-features", setup.features, "--max-regions", setup.regions,
         "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(b.vlp_lr),
         "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(max(1, b.vlp_updates // 10)),
         "--warmup-init-lr", "1e-07", "--weight-decay", "0.01", "--max-tokens", str(b.max_tokens),
         "--max-update", str(b.vlp_updates), "--save-dir", "ckpt/vlp", "--no-epoch-checkpoints",
         "--seed", "1", "--log-format", "json", "--log-interval", "10", *b.device_flags],
        outputs=["ckpt/vlp/checkpoint_last.pt"], after=feature_after(setup), log=train_log("vlp"),
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
               "--criterion", "vlp_mmt_loss", *modality, *images]
    after = ["prepare"] if text_only else feature_after(setup)
    if stage == 2:
        command += ["--finetune-from-model", averaged(previous)]
        after = [f"average.{previous}"]
    elif not text_only:
        command += ["--load-vlp", "ckpt/vlp/checkpoint_last.pt"]
        after = after + ["train.vlp"]
    if stage == 1:
        command += ["--freeze-bert", "--cache-frozen-encoder"]
    lr, epochs = {0: (b.lr, b.end2end_epochs), 1: (b.lr, b.stage1_epochs),
                  2: (b.finetune_lr, b.stage2_epochs)}[stage]
    command += optimisation(b, lr, epochs, run)
    return Step(f"train.{run}", command, outputs=[f"ckpt/{run}/checkpoint_last.pt"], after=after, log=train_log(run),
                clean=[f"ckpt/{run}", train_log(run)])


def run_steps(setup: Setup, run: str) -> List[Step]:
    """The training step of ``run`` and the averaging of its last epoch checkpoints."""
    if run == "transformer":
        train = transformer_step(setup)
    elif run == "bert_nmt":
        train = bert_nmt_step(setup)
    else:
        train = vlp_mmt_step(setup, run)
    return [train, average_step(setup, run, train)]


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
    command += ["-s", setup.src, "-t", setup.tgt, "--path", averaged(run), "--gen-subset", test_set,
                "--beam", str(b.test_beam), "--max-tokens", str(b.gen_max_tokens), *GEN_LEN,
                "--required-batch-size-multiple", "1", "--post-process", "sentencepiece", *b.device_flags]
    if probe:
        command += PROBES[probe]
    name = f"generate.{system.name}.{test_set}{'.' + probe if probe else ''}"
    return Step(name, command, outputs=[generation_output(system.name, test_set, probe)],
                after=[f"average.{run}"], stdout=generation_output(system.name, test_set, probe),
                log=f"logs/generate.{system.name}.log")


def score_step(setup: Setup, system: System, probe: Optional[str], generated: List[Step]) -> Step:
    outputs = [f"{generation_output(system.name, t, probe)}:{t}" for t in setup.test_sets]
    command = ["vlp-mmt-score", "--generate-output", *outputs, "--refs-dir", "data", "--tgt", setup.tgt,
               "--json", scores_path(system.name, probe)]
    if probe:
        command.append("--no-meteor")  # a probe reports the BLEU it loses
    return Step(f"score.{system.name}{'.' + probe if probe else ''}", command,
                outputs=[scores_path(system.name, probe)], after=[g.name for g in generated],
                log=f"logs/score.{system.name}.log")


def system_steps(setup: Setup, system: System) -> List[Step]:
    """Training, averaging, generation and scoring of one system (not the steps it shares)."""
    steps = []
    for run in system.runs:
        steps += run_steps(setup, run)
    for probe in [None] + (list(PROBES) if system.multimodal else []):
        generated = [generate_step(setup, system, t, probe) for t in setup.test_sets]
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
