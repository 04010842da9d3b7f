#!/usr/bin/env python
"""Train and evaluate the paper's systems with one shared recipe; write Tables 5 and 6 and Figure 3.

Example (CPU smoke run, about an hour on 2 cores)::

    python examples/multi30k/compare.py --src en --tgt de --budget smoke

Every system is a sequence of plain commands (``recipe.py``): prepare Multi30K, write synthetic
image features (unless ``--features`` names a real or caption-proxy store), a small VLP run for the
multimodal systems, fairseq-train per stage (the best checkpoint on valid BLEU is kept), fairseq-generate
per test set (and, for multimodal systems, with incongruent images and with no image), vlp-mmt-score.
A multimodal system is generated only on the test sets whose images the store holds. Finished steps are
recorded in ``WORK/state/`` and reused; re-running the same command after an interruption
continues where it stopped (an interrupted fairseq-train resumes from its checkpoint_last.pt).

Outputs in ``WORK/results/``: ``table5.{md,csv,json}``, ``table6.{md,csv,json}``,
``valid_bleu.png`` (validation BLEU per epoch across stage 1 and stage 2) and ``summary.json``.
``--write-scripts DIR`` writes the same recipe as one shell script per system instead.
"""
import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from typing import Optional

import recipe  # this folder's modules: Python puts a script's own folder first on its path
from budgets import BUDGETS
from carried_rows import CarriedRowsError, export_rows, import_rows
from vlp_mmt_fairseq.step_runner import (
    StepError,
    StepRunner,
    add_parallel_arguments,
    order_steps,
    python_env,
    shell_command,
    step_dirs,
    stop_on_sigterm,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

DEFAULT_MULTI30K = os.environ.get("MULTI30K_DIR") or os.path.join(os.path.dirname(REPO), "shared", "multi30k")
#: how the extractor attribute of a store written by vlp-mmt-caption-proxy-store begins
CAPTION_PROXY_PREFIX = "caption-proxy:"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="+", choices=list(recipe.SYSTEMS), default=list(recipe.SYSTEMS),
                        metavar="SYSTEM", help="systems to train and evaluate (default: all): "
                        + ", ".join(recipe.SYSTEMS))
    parser.add_argument("--src", default="en", help="source language (default en)")
    parser.add_argument("--tgt", default="de", help="target language: de or fr (cs: test2016 only)")
    parser.add_argument("--multi30k-dir", default=DEFAULT_MULTI30K,
                        help="Multi30K data/task1 folder (default $MULTI30K_DIR, else ../shared/multi30k)")
    parser.add_argument("--budget", choices=list(BUDGETS), default="smoke",
                        help="; ".join(f"{b.name}: {b.summary}" for b in BUDGETS.values()))
    parser.add_argument("--work-dir", help="where everything goes (default work_dirs/multi30k.SRC-TGT.BUDGET)")
    parser.add_argument("--features", help="an HDF5 feature store (docs/feature_store.md) of the Multi30K images, "
                        "e.g. the caption-proxy store (vlp-mmt-caption-proxy-store; train, val and test2016 only: "
                        "the multimodal rows are n/a on the other test sets); default: a synthetic source-copy "
                        "store for pipeline checks (rows are labelled so)")
    parser.add_argument("--bert-model", help="override the budget's BERT (a local directory or hub name)")
    add_parallel_arguments(parser)
    parser.add_argument("--redo", nargs="+", default=[], metavar="STEP",
                        help="run these steps again even if finished (see WORK/state/)")
    parser.add_argument("--redo-changed", action="store_true",
                        help="run again every step whose command changed since it was recorded (a changed "
                        "budget or recipe), instead of stopping with an error")
    parser.add_argument("--tables-only", action="store_true",
                        help="run nothing: write the tables and the plot from what is finished")
    parser.add_argument("--dry-run", action="store_true", help="print the steps that would run, then stop")
    parser.add_argument("--export-results", metavar="DIR",
                        help="also write every finished row into DIR (its scores, step seconds, curve and the "
                        "hypotheses it was scored on), for --previous-results on another machine")
    parser.add_argument("--previous-results", metavar="DIR",
                        help="a folder of --export-results: the rows not finished here are taken from it")
    parser.add_argument("--write-scripts", metavar="DIR",
                        help="write one shell script per system (the same steps) into DIR, then stop")
    return parser


def inspect_features(path: str, multi30k_dir: str, test_sets) -> tuple:
    """(label of the multimodal rows, the test sets whose every image the store holds) of the ``--features`` store.

    A caption-proxy store (``vlp-mmt-caption-proxy-store``) says so in its ``extractor`` attribute, and holds
    train, val and test2016 only. A store that does not exist yet (``--write-scripts``) is taken to cover
    every test set.
    """
    from vlp_mmt_fairseq.data.feature_store import FeatureStore, image_key_from_line

    if not os.path.exists(path):
        return f"features: {os.path.basename(path)}", tuple(test_sets)
    store = FeatureStore(path)
    try:
        kind = CAPTION_PROXY_PREFIX if store.extractor.startswith(CAPTION_PROXY_PREFIX) else None
        label = recipe.CAPTION_PROXY_LABEL if kind else f"features: {os.path.basename(path)}"
        covered = []
        for t in test_sets:
            index = os.path.join(multi30k_dir, "image_splits", f"{recipe.TEST_SETS[t]}.txt")
            with open(index, encoding="utf-8") as f:
                keys = [image_key_from_line(line) for line in f if line.strip()]
            if all(key in store for key in keys):
                covered.append(t)
    finally:
        store.close()
    if not covered:
        raise StepError(f"{path}: the store holds the images of none of the test sets {', '.join(test_sets)}")
    return label, tuple(covered)


def make_setup(args) -> recipe.Setup:
    budget = BUDGETS[args.budget]
    if args.bert_model:
        budget = dataclasses.replace(budget, bert_model=args.bert_model)
    test_sets = recipe.available_test_sets(args.multi30k_dir, args.src, args.tgt)
    if not test_sets:
        raise StepError(f"{args.multi30k_dir}: no test set of {', '.join(recipe.TEST_SETS.values())} has raw "
                        f"text in both '{args.src}' and '{args.tgt}' (is it a Multi30K data/task1 folder?)")
    if not args.features:
        return recipe.Setup(budget, args.src, args.tgt, test_sets, real_features=False)
    label, covered = inspect_features(args.features, args.multi30k_dir, test_sets)
    return recipe.Setup(budget, args.src, args.tgt, test_sets, real_features=True, feature_label=label,
                        image_test_sets=covered)


def wanted_steps(setup: recipe.Setup, systems) -> list:
    steps = recipe.all_steps(setup)
    wanted = [name for s in systems for name in recipe.final_steps(recipe.SYSTEMS[s])]
    return order_steps(steps, wanted)


# ----------------------------------------------------------------------------- scripts


GENERATED = ("# Generated by examples/multi30k/compare.py --write-scripts from recipe.py (do not edit: regenerate).")


def common_script_text(setup: recipe.Setup) -> str:
    """``common.sh``: every step of the recipe once, and ``run_steps``, which the system scripts call.

    A step runs only if one of its outputs is missing, as compare.py reuses finished steps; a training
    step always runs, since fairseq-train itself resumes from ``checkpoint_last.pt`` (and stops at once
    when it had finished). A step's standard output goes to a temporary name, renamed on success.
    """
    steps = list(recipe.all_steps(setup).values())
    dirs = sorted({d for step in steps for d in step_dirs(step)})
    lines = [
        "#!/usr/bin/env bash",
        f"# The steps of the Multi30K comparison: {setup.src}-{setup.tgt}, budget '{setup.budget.name}'.",
        GENERATED,
        "# Each systems/<name>.sh sources this file and calls run_steps with its steps, in order.",
        "# run_step spells out each step's whole command, so its cases look alike: recipe.py writes each kind once.",
        "set -euo pipefail",
        'REPO="${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}"',
        'PYTHON="${PYTHON:-python}"',
        'MULTI30K="${MULTI30K:-$REPO/../shared/multi30k}"',
        'FEATURES="${FEATURES:-}"',
        f'WORK="${{WORK:-$REPO/work_dirs/multi30k.{setup.src}-{setup.tgt}.{setup.budget.name}}}"',
        'mkdir -p "$WORK" && cd "$WORK"',
        "mkdir -p " + " ".join(dirs),
        "",
        "step_outputs() {",
        '  case "$1" in',
    ]
    for step in steps:
        if step.outputs and step.command[0] != "fairseq-train":
            lines.append(f"    {step.name}) echo {' '.join(shlex.quote(o) for o in step.outputs)} ;;")
    lines += ["  esac", "}", "", "run_step() {", '  case "$1" in']
    for step in steps:
        body = [f"    {step.name})"]
        if setup.real_features and "${FEATURES}" in shell_command(step):
            body.append('      : "${FEATURES:?set FEATURES to the HDF5 feature store of the Multi30K images}"')
        body.append(f"      {script_command(step)} ;;")
        lines += body
    lines += [
        '    *) echo "no step $1" >&2; return 2 ;;',
        "  esac",
        "}",
        "",
        "run_steps() {",
        "  local name output missing",
        '  for name in "$@"; do',
        "    missing=0",
        '    for output in $(step_outputs "$name"); do [[ -e "$output" ]] || missing=1; done',
        '    if [[ -z "$(step_outputs "$name")" || $missing == 1 ]]; then',
        '      echo "# $name"',
        '      run_step "$name"',
        "    else",
        '      echo "# $name (finished: reused)"',
        "    fi",
        "  done",
        "}",
        "",
    ]
    return "\n".join(lines)


def script_command(step) -> str:
    """The step's command line for a script: standard output through a temporary file, renamed on success."""
    if not step.stdout:
        return shell_command(step)
    partial = shlex.quote(step.stdout + ".partial")
    return shell_command(step).replace(f"> {shlex.quote(step.stdout)}", f"> {partial}", 1) + \
        f" && mv {partial} {shlex.quote(step.stdout)}"


def script_text(setup: recipe.Setup, system: recipe.System) -> str:
    """``<system>.sh``: its steps, in order, as calls to common.sh's ``run_steps``."""
    names = [step.name for step in wanted_steps(setup, [system.name])]
    lines = [
        "#!/usr/bin/env bash",
        f"# {system.label}: {setup.src}-{setup.tgt}, budget '{setup.budget.name}'.",
        GENERATED,
        "# compare.py runs the same steps; both skip those already finished (see common.sh).",
        'source "$(dirname "${BASH_SOURCE[0]}")/common.sh"',
        "run_steps \\",
    ]
    lines += [f"  {name} \\" for name in names[:-1]] + [f"  {names[-1]}", ""]
    return "\n".join(lines)


def write_scripts(setup: recipe.Setup, directory: str) -> None:
    from result_tables import write_text

    os.makedirs(directory, exist_ok=True)
    texts = {"common.sh": common_script_text(setup)}
    texts.update({f"{system.name}.sh": script_text(setup, system) for system in recipe.SYSTEMS.values()})
    for name, text in texts.items():
        path = os.path.join(directory, name)
        write_text(path, text)
        os.chmod(path, 0o755)
    print(f"wrote {len(recipe.SYSTEMS)} system scripts and common.sh to {directory}")


# ----------------------------------------------------------------------------- results


def system_seconds(runner: StepRunner, setup: recipe.Setup, system: recipe.System):
    """Wall time of the steps of ``system``, shared ones included (VLP, data), once each."""
    records = [runner.record(s) for s in wanted_steps(setup, [system.name])]
    return round(sum(r["seconds"] for r in records), 1) if all(records) else None


def checkpoint_note(b) -> str:
    if b.average_last:
        return (f"each model is the average of the last {b.average_last} epoch checkpoints of its final run; "
                "a second stage starts from the first stage's best checkpoint on valid BLEU")
    search = "greedy" if b.valid_beam == 1 else f"beam {b.valid_beam}"
    return (f"each model is its final run's best checkpoint on validation BLEU ({search}, after every epoch), "
            "and a second stage starts from the first stage's best checkpoint")


def image_notes(setup: recipe.Setup) -> list:
    """What the multimodal rows' images are, and where they are n/a."""
    notes = []
    if not setup.real_features:
        notes.append(f"Multimodal rows use {setup.feature_label}: a synthetic store whose regions plant the content "
                     "words of each image's own English source sentence (examples/multi30k/image_concepts.py), so "
                     "the images hold nothing the text lacks; a pipeline check, not a result about images.")
    elif setup.feature_label == recipe.CAPTION_PROXY_LABEL:
        notes.append("Multimodal rows use caption-proxy features (vlp-mmt-caption-proxy-store): no pixels; each "
                     "image's regions are sentence embeddings of the other Multi30K task-2 descriptions of the "
                     "same picture, its tags the detector-vocabulary words they mention, and no line's own source "
                     "sentence enters its image.")
    missing = [t for t in setup.test_sets if setup.image_test_sets is not None and t not in setup.image_test_sets]
    if missing:
        kept = ", ".join(setup.system_test_sets(recipe.SYSTEMS["full"]))
        notes.append(f"n/a: the store holds no images of {', '.join(missing)} (task 2 describes only the train, val "
                     f"and test2016 images), so the multimodal rows are not evaluated there. Every averaged delta "
                     "(ΔBLEU, ΔMETEOR, BLEU lost) is the mean over the test sets that both the row and the "
                     f"reference row have: for a multimodal row, {kept} only; for a text-only row, all of "
                     f"{', '.join(setup.test_sets)}.")
    return notes


def vlp_note(runner: StepRunner) -> str:
    """The VLP run's MLM and pair accuracy on the held-out val pairs (its last validation)."""
    from vlp_mmt_fairseq.evaluation.train_logs import last_valid_record

    record = last_valid_record(os.path.join(runner.work_dir, recipe.train_log("vlp")))
    what = ("VLP (Algorithm 1, steps 3-4 only): masked LM and paired-image prediction on the training pairs; "
            "step 2 (the other task-2 descriptions) is not run")
    if "valid_mlm_accuracy" not in record or "valid_pair_accuracy" not in record:
        return what + "; its validation on the held-out val pairs is not logged yet."
    return (f"{what}. On the held-out val pairs after {record.get('valid_num_updates', '?')} updates: MLM accuracy "
            f"{float(record['valid_mlm_accuracy']):.2f}%, pair accuracy {float(record['valid_pair_accuracy']):.2f}% "
            "(chance: 50%).")


#: the systems whose modality loss has the learnable lambda of Eq. 5, and what their logs report of it
LEARNABLE_LAMBDA = ("full", "lm_all")
LAMBDA_FIGURES = (("lambda", "mean"), ("lambda_std", "sd"), ("lambda_frequent", "frequent tokens"),
                  ("lambda_other", "other tokens"))


def lambda_note(runner: StepRunner) -> Optional[str]:
    """Lambda of the learnable-lambda rows in the last epoch of each of their runs, from the training logs."""
    from vlp_mmt_fairseq.evaluation.train_logs import last_train_record

    parts = []
    for name in LEARNABLE_LAMBDA:
        for run in recipe.SYSTEMS[name].runs:
            record = last_train_record(os.path.join(runner.work_dir, recipe.train_log(run)))
            if "train_lambda" not in record:
                continue
            figures = ", ".join(f"{what} {float(record['train_' + key]):.3f}" for key, what in LAMBDA_FIGURES
                                if "train_" + key in record)
            parts.append(f"{run} (epoch {record.get('epoch', '?')}): {figures}")
    if not parts:
        return None
    return ("Learnable lambda (Eq. 5, the project's default gate), over the target tokens of the last training "
            "epoch of each run: " + "; ".join(parts) + ".")


def table_notes(setup: recipe.Setup, runner: StepRunner) -> list:
    """The notes under both tables: the setup, the metrics, the checkpoints, the images and what the probes mean."""
    b = setup.budget
    notes = [
        f"{setup.src}-{setup.tgt}, budget '{b.name}': {b.summary}.",
        "BLEU: lowercased, tokenized (the official Multi30K tok/ references; multi-bleu.perl counting), as the "
        "paper reports it; METEOR 1.5 x 100 (exact + stem). Detokenized sacreBLEU is in the CSV/JSON.",
        f"Beam {b.test_beam}; {checkpoint_note(b)}.",
        "BLEU lost: BLEU minus the BLEU with the images shuffled across sentences (incongruent, seed 1) or "
        "with no image, averaged over the test sets.",
        *image_notes(setup),
        vlp_note(runner),
    ]
    lambdas = lambda_note(runner)
    if lambdas:
        notes.append(lambdas)
    if b.test_sentences:
        notes.append(f"Test sets cut to their first {b.test_sentences} sentences: not comparable to published numbers.")
    return notes


def load_rows(runner: StepRunner, setup: recipe.Setup, current: dict) -> dict:
    """System name -> its row; a system counts only if its scoring steps are current (``runner.plan``)."""
    from result_tables import load_row

    rows = {}
    for name, system in recipe.SYSTEMS.items():
        finished = all(current.get(step) for step in recipe.final_steps(system))
        seconds = system_seconds(runner, setup, system) if finished else None
        rows[name] = load_row(runner.work_dir, system, list(recipe.PROBES), seconds, finished)
    return rows


def system_curves(runner: StepRunner) -> dict:
    """System name -> its validation-BLEU points across its training runs, from this work folder's logs."""
    from curves import system_curve

    return {name: system_curve([os.path.join(runner.work_dir, recipe.train_log(r)) for r in system.runs])
            for name, system in recipe.SYSTEMS.items()}


def write_curves(setup: recipe.Setup, by_system: dict, out: str) -> dict:
    """``valid_bleu.png`` of the systems with a training curve; returns label -> points."""
    from curves import plot_curves

    curves = {}
    for name in ("transformer", "bert_nmt", "bert_enc_stage2", "end2end", "stage2", "full", "lm_all", "lm_fixed"):
        curves[recipe.SYSTEMS[name].label] = by_system[name]
    if any(curves.values()):
        b = setup.budget
        plot_curves(curves, (b.stage1_epochs, b.image_stage1_epochs),
                    f"Validation BLEU per epoch ({setup.src}-{setup.tgt}, budget '{b.name}', "
                    f"beam {b.valid_beam}; {setup.feature_label})",
                    os.path.join(out, "valid_bleu.png"))
    return curves


def write_results(runner: StepRunner, setup: recipe.Setup, wall_seconds: float, previous: Optional[str] = None,
                  export: Optional[str] = None) -> str:
    """Tables 5 and 6, the validation-BLEU plot and a summary, in ``WORK/results/``; returns the tables. The rows
    not finished here are taken from ``previous`` where it has them; ``export`` receives every finished row."""
    from result_tables import SIGNIFICANCE_NOTE, paired_significance, table_records, write_table, write_text

    out = os.path.join(runner.work_dir, "results")
    every_step = wanted_steps(setup, list(recipe.SYSTEMS))
    current = runner.plan(every_step, strict=False)  # a recorded result whose inputs changed does not count
    rows = load_rows(runner, setup, current)
    by_system = system_curves(runner)
    carried = import_rows(previous, runner.work_dir, [n for n, r in rows.items() if not r.finished]) \
        if previous else {}
    for name, (row, curve) in carried.items():
        rows[name], by_system[name] = row, curve
    context = {"src": setup.src, "tgt": setup.tgt, "budget": setup.budget.as_dict(),
               "test_sets": list(setup.test_sets), "features": setup.feature_label,
               "image_test_sets": list(setup.system_test_sets(recipe.SYSTEMS["full"]))}
    markdown = []
    for key, names, title in (("table5", recipe.TABLE5, "Table 5: systems"),
                              ("table6", recipe.TABLE6, "Table 6: ablation")):
        table_rows = [rows[n] for n in names]
        significance = paired_significance(table_rows, recipe.BASELINE[key], list(setup.test_sets), setup.tgt)
        records = table_records(table_rows, recipe.BASELINE[key], list(setup.test_sets), list(recipe.PROBES),
                                significance, image_test_sets=setup.image_test_sets)
        notes = table_notes(setup, runner) + ([SIGNIFICANCE_NOTE] if significance else [])
        if any(name in carried for name in names):
            notes.append(f"Rows measured in an earlier run, from {previous} (compare.py --export-results): "
                         + ", ".join(name for name in names if name in carried) + ".")
        markdown.append(write_table(os.path.join(out, key), f"{title} ({setup.src}-{setup.tgt})",
                                    notes, records, list(setup.test_sets), list(recipe.PROBES),
                                    recipe.BASELINE_LABEL[key], setup.feature_label, context))
    curves = write_curves(setup, by_system, out)
    step_seconds = sum(runner.record(s)["seconds"] for s in every_step if current[s.name])
    step_seconds += sum(row.seconds or 0 for row, _ in carried.values())
    if export:
        export_rows(rows, by_system, runner.work_dir, export)
    summary = dict(context, command=" ".join(sys.argv), wall_seconds_this_invocation=round(wall_seconds, 1),
                   step_seconds_total=round(step_seconds, 1), carried_rows=sorted(carried),
                   curves={k: [list(p) for p in v] for k, v in curves.items()})
    write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return "\n".join(markdown)


def main(argv=None):
    args = get_parser().parse_args(argv)
    stop_on_sigterm()
    start = time.time()
    try:
        setup = make_setup(args)
        if args.write_scripts:
            write_scripts(setup, args.write_scripts)
            return
        work_dir = args.work_dir or os.path.join(REPO, "work_dirs", f"multi30k.{args.src}-{args.tgt}.{args.budget}")
        values = {"REPO": REPO, "PYTHON": sys.executable, "MULTI30K": os.path.abspath(args.multi30k_dir)}
        if args.features:
            values["FEATURES"] = os.path.abspath(args.features)
        runner = StepRunner(work_dir, values, env=python_env(args.threads))
        ordered = wanted_steps(setup, args.systems)
        if args.dry_run:
            reused = runner.plan(ordered)
            for step in ordered:
                state = "done" if reused[step.name] else "to run"
                print(f"# {step.name} [{state}]\n{shell_command(step)}")
            if setup.budget.times:
                hours = sum(recipe.estimated_seconds(setup, args.systems).values()) / 3600
                print(f"# estimated step time of these systems (full data, one thread per step): {hours:.1f} h")
            return
        if not args.tables_only:
            known = {s.name: s for s in ordered}
            for name in args.redo:
                if name not in known:
                    raise StepError(f"--redo {name}: no such step among the selected systems' steps")
                runner.forget(known[name])
            if args.redo_changed:
                for step in ordered:
                    if runner.changed(step):
                        print(f"{step.name}: command changed, running it again")
                        runner.forget(step)
            print(f"{len(ordered)} steps in {runner.work_dir} (budget '{args.budget}', {args.src}-{args.tgt})")
            runner.run(ordered, jobs=args.jobs)
        tables = write_results(runner, setup, time.time() - start, args.previous_results, args.export_results)
    except (StepError, CarriedRowsError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: run the same command again to continue where it stopped")
    print("\n" + tables)
    print(f"results in {os.path.join(runner.work_dir, 'results')}; wall time of this run: "
          f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
