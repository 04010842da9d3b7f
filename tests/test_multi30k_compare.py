"""examples/multi30k/compare.py: finished steps are reused, interrupted ones run again, the tables
and the validation-BLEU plot come out of real vlp-mmt-score results, and the committed per-system
scripts are exactly what the recipe writes. The recipe selects every model on valid BLEU, the `cpu`
budget's estimated step time stays within its 16 hours, and a caption-proxy store makes the
multimodal rows n/a where it has no images."""
import csv
import gzip
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

import pytest

from utils import REPO_ROOT, run_cli

EXAMPLE = REPO_ROOT / "examples" / "multi30k"
COMPARE = EXAMPLE / "compare.py"
sys.path.insert(0, str(EXAMPLE))

from vlp_mmt_fairseq.step_runner import Step, StepError, StepRunner  # noqa: E402

# ----------------------------------------------------------------------------- the step runner

COUNT_AND_WRITE = (
    "import sys, pathlib; pathlib.Path('calls.txt').open('a').write(sys.argv[1] + '\\n'); "
    "pathlib.Path(sys.argv[2]).write_text('made by ' + sys.argv[1])"
)
WRITE_FRESH = (  # like a training run that would resume from what its save dir holds
    "import pathlib; assert not pathlib.Path('b.txt').exists(), 'would resume from a stale output'; "
    "pathlib.Path('calls.txt').open('a').write('last\\n'); pathlib.Path('b.txt').write_text('made by last')"
)
FAIL_WHILE_FLAG = (
    "import sys, pathlib; pathlib.Path('calls.txt').open('a').write('flaky\\n'); print('partial output'); "
    "sys.exit(3 if pathlib.Path('fail.flag').exists() else 0)"
)


def toy_steps():
    return [
        Step("first", ["{PYTHON}", "-c", COUNT_AND_WRITE, "first", "a.txt"], outputs=["a.txt"], log="logs/first.log"),
        Step("flaky", ["{PYTHON}", "-c", FAIL_WHILE_FLAG], outputs=["out/flaky.txt"], after=["first"],
             stdout="out/flaky.txt", log="logs/flaky.log"),
        Step("last", ["{PYTHON}", "-c", WRITE_FRESH], outputs=["b.txt"], after=["flaky"], clean=["b.txt"]),
    ]


def calls(work: Path):
    return (work / "calls.txt").read_text().split()


def test_runner_reuses_finished_steps_and_reruns_the_interrupted_one(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "fail.flag").write_text("")
    runner = StepRunner(str(work), {"PYTHON": sys.executable}, echo=lambda *_: None)
    with pytest.raises(StepError, match=r"step 'flaky' failed with exit code 3; log: .*flaky.log"):
        runner.run(toy_steps())
    assert calls(work) == ["first", "flaky"]
    assert not (work / "out" / "flaky.txt").exists()  # no half-written output
    assert not list((work / "out").iterdir())
    assert (work / "state" / "first.json").exists() and not (work / "state" / "flaky.json").exists()

    (work / "fail.flag").unlink()
    records = runner.run(toy_steps())
    assert calls(work) == ["first", "flaky", "flaky", "last"]  # 'first' was reused, not run again
    assert (work / "out" / "flaky.txt").read_text() == "partial output\n"
    assert records["first"]["command"][-2:] == ["first", "a.txt"] and records["last"]["seconds"] >= 0
    assert (work / "logs" / "flaky.log").read_text().count("### ") == 2  # both attempts, appended

    runner.run(toy_steps())
    assert calls(work) == ["first", "flaky", "flaky", "last"]  # everything reused

    (work / "b.txt").unlink()  # a recorded step whose output vanished runs again
    assert runner.plan(toy_steps()) == {"first": True, "flaky": True, "last": False}
    runner.run(toy_steps())
    assert calls(work)[-1] == "last" and len(calls(work)) == 5

    runner.forget(toy_steps()[0])  # --redo first: everything made from it is made again, from scratch
    assert runner.plan(toy_steps()) == {"first": False, "flaky": False, "last": False}
    runner.run(toy_steps())  # 'last' is out of date: its clean paths go first (WRITE_FRESH checks it)
    assert calls(work)[5:] == ["first", "flaky", "last"]


def test_runner_refuses_a_step_recorded_with_another_command(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    runner = StepRunner(str(work), {"PYTHON": sys.executable}, echo=lambda *_: None)
    runner.run(toy_steps()[:1])
    changed = Step("first", ["{PYTHON}", "-c", COUNT_AND_WRITE, "first", "other.txt"], outputs=["other.txt"],
                   clean=["ckpt", "a.txt"])
    with pytest.raises(StepError, match="finished .* with another command"):
        runner.run([changed])
    assert runner.changed(changed) and not runner.changed(toy_steps()[0])  # what --redo-changed looks for
    (work / "ckpt").mkdir()
    (work / "ckpt" / "checkpoint_last.pt").write_text("would be resumed")
    runner.forget(changed)  # what --redo does: start over, not resume
    assert not (work / "ckpt").exists() and not (work / "a.txt").exists()
    runner.run([changed])
    assert calls(work) == ["first", "first"]


MEET = (  # finishes only if the other step of the pair is running at the same time
    "import sys, time, pathlib; me, other = sys.argv[1:3]; pathlib.Path(me + '.started').write_text(''); "
    "deadline = time.time() + 30\n"
    "while not pathlib.Path(other + '.started').exists():\n"
    "    assert time.time() < deadline, 'ran alone'; time.sleep(0.05)\n"
    "sys.exit(4 if me == 'bad' else 0) if len(sys.argv) > 3 else pathlib.Path(me + '.txt').write_text(me)"
)


def pair_steps(fail=False):
    second = ["bad", "a", "fail"] if fail else ["b", "a"]
    return [
        Step("a", ["{PYTHON}", "-c", MEET, "a", second[0]], outputs=["a.txt"]),
        Step(second[0], ["{PYTHON}", "-c", MEET, *second], outputs=[f"{second[0]}.txt"], log=f"{second[0]}.log"),
        Step("both", ["{PYTHON}", "-c", COUNT_AND_WRITE, "both", "both.txt"], outputs=["both.txt"],
             after=["a", second[0]]),
    ]


def test_two_jobs_run_independent_steps_side_by_side_and_dependents_after_them(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    runner = StepRunner(str(work), {"PYTHON": sys.executable}, echo=lambda *_: None)
    records = runner.run(pair_steps(), jobs=2)
    assert sorted(records) == ["a", "b", "both"] and calls(work) == ["both"]
    assert records["both"]["started_at"] >= max(records["a"]["finished_at"], records["b"]["finished_at"])
    assert runner.run(pair_steps(), jobs=2).keys() == records.keys() and calls(work) == ["both"]  # reused

    failing = tmp_path / "failing"
    failing.mkdir()
    runner = StepRunner(str(failing), {"PYTHON": sys.executable}, echo=lambda *_: None)
    with pytest.raises(StepError, match="step 'bad' failed with exit code 4"):
        runner.run(pair_steps(fail=True), jobs=2)
    assert (failing / "state" / "a.json").exists()  # the step beside the failed one finished and counts
    assert not (failing / "state" / "bad.json").exists() and not (failing / "calls.txt").exists()


# ----------------------------------------------------------------------------- tables and plot

TEST_SPLITS = {"test2016": "test_2016_flickr", "test2017": "test_2017_flickr", "mscoco": "test_2017_mscoco"}
SENTENCES = 40


def write_refs(multi30k_dir: Path, refs: Path):
    for name, split in TEST_SPLITS.items():
        (refs / "raw").mkdir(parents=True, exist_ok=True)
        (refs / "tok").mkdir(parents=True, exist_ok=True)
        with gzip.open(multi30k_dir / "raw" / f"{split}.de.gz", "rt", encoding="utf-8") as f:
            raw = f.read().splitlines()[:SENTENCES]
        tok = (multi30k_dir / "tok" / f"{split}.lc.norm.tok.de").read_text(encoding="utf-8").splitlines()[:SENTENCES]
        (refs / "raw" / f"{name}.de").write_text("\n".join(raw) + "\n", encoding="utf-8")
        (refs / "tok" / f"{name}.de").write_text("\n".join(tok) + "\n", encoding="utf-8")


def damaged(sentence: str, keep_every: int) -> str:
    """Drop every ``keep_every``-th word (0: keep all)."""
    words = sentence.split()
    return " ".join(w for i, w in enumerate(words) if not keep_every or i % keep_every != 1)


def score(work: Path, refs: Path, name: str, keep_every: int):
    """Real vlp-mmt-score output for hypotheses made from the references (its entry point, in this
    process: one import of the plugin instead of one per call)."""
    from vlp_mmt_fairseq.cli import score as score_cli

    outputs = []
    for test_set in TEST_SPLITS:
        raw = (refs / "raw" / f"{test_set}.de").read_text(encoding="utf-8").splitlines()
        path = work / "gen" / f"{name}.{test_set}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"D-{i}\t-0.5\t{damaged(s, keep_every)}\n" for i, s in enumerate(raw)),
                        encoding="utf-8")
        outputs.append(f"{path}:{test_set}")
    (work / "scores").mkdir(exist_ok=True)
    score_cli.cli_main(["--generate-output", *outputs, "--refs-dir", str(refs), "--tgt", "de",
                        "--json", str(work / "scores" / f"{name}.json"), "--no-meteor"])
    return json.loads((work / "scores" / f"{name}.json").read_text())["test_sets"]


def valid_line(epoch: int, bleu=None) -> str:
    """A validation record as fairseq logs it (without valid_bleu when no hypothesis had a token)."""
    record = {"epoch": epoch, "valid_loss": "5.1", "valid_num_updates": str(10 * epoch)}
    if bleu is not None:
        record["valid_bleu"] = str(bleu)
    return f"2026-01-01 00:00:00 | INFO | valid | {json.dumps(record)}\n"


def mark_finished(work: Path, multi30k_dir: Path, systems):
    """Record every step of ``systems`` as finished, as the runner does (missing outputs made empty)."""
    import compare

    args = compare.get_parser().parse_args(["--budget", "smoke", "--multi30k-dir", str(multi30k_dir)])
    runner = StepRunner(str(work), {}, echo=lambda *_: None)
    for step in compare.wanted_steps(compare.make_setup(args), systems):
        for output in step.outputs:
            (work / output).parent.mkdir(parents=True, exist_ok=True)
            (work / output).touch()
        runner.record_finished(step, time.time())
    return runner, compare.wanted_steps(compare.make_setup(args), systems)


@pytest.mark.slow
def test_tables_and_plot_from_finished_systems(tmp_path, multi30k_dir):
    work, refs = tmp_path / "work", tmp_path / "refs"
    work.mkdir()
    write_refs(multi30k_dir, refs)
    transformer = score(work, refs, "transformer", 3)
    full = score(work, refs, "full", 0)
    incongruent = score(work, refs, "full.incongruent", 2)
    score(work, refs, "full.no_image", 4)
    score(work, refs, "stage1", 1)  # scored, but its steps are not finished: not shown
    runner, steps = mark_finished(work, multi30k_dir, ["transformer", "full"])
    (work / "logs").mkdir()
    (work / "logs" / "train.full_stage1.log").write_text(valid_line(1, 3.0) + valid_line(2, 5.0) + "noise\n"
                                                         + valid_line(2, 6.0))  # resumed: the last one counts
    (work / "logs" / "train.full_stage2.log").write_text(valid_line(1, 8.0) + valid_line(2))

    result = run_cli([sys.executable, COMPARE, "--tables-only", "--work-dir", work, "--multi30k-dir", multi30k_dir,
                      "--budget", "smoke"])
    out = work / "results"
    table5 = (out / "table5.md").read_text(encoding="utf-8")
    assert table5 in result.stdout
    for label in ("Transformer (text only)", "BERT-enc, stage 1", "BERT-enc, stage 2", "BERT-NMT",
                  "Our model) [synthetic source-copy features]"):
        assert label in table5
    assert table5.count("| not run |") == 3  # the BERT-enc rows and BERT-NMT have no scores
    table6 = (out / "table6.md").read_text(encoding="utf-8")
    assert "| 1st stage only (VLP, BERT frozen, no L_M) [synthetic source-copy features] | not run |" in table6
    for label in ("End2End", "1st stage only", "+ 2nd stage", "last layer, learnable lambda", "all layers",
                  "fixed lambda = 0.4"):
        assert label in table6
    assert table6.count("| not run |") == 5

    rows = {r["system"]: r for r in json.loads((out / "table5.json").read_text())["rows"]}
    expected_delta = mean(full[t]["bleu_tok"] - transformer[t]["bleu_tok"] for t in TEST_SPLITS)
    assert expected_delta > 5  # the undamaged system is clearly better
    assert rows["full"]["avg_delta_bleu"] == pytest.approx(expected_delta)
    assert rows["transformer"]["avg_delta_bleu"] == pytest.approx(0.0)
    # paired bootstrap against the reference row (tests/test_significance.py checks the figures themselves)
    assert rows["transformer"]["test2016_p_value"] is None and rows["transformer"]["test2017_bleu_ci"] > 0
    for t in TEST_SPLITS:
        assert rows["full"][f"{t}_p_value"] < 0.05 and rows["full"][f"{t}_significant"]
        assert 0 < rows["full"][f"{t}_delta_low"] <= rows["full"][f"{t}_delta_high"]
    assert table5.count("*") >= 3 and "p < 0.05 against the table's reference row" in table5
    lost = mean(full[t]["bleu_tok"] - incongruent[t]["bleu_tok"] for t in TEST_SPLITS)
    assert rows["full"]["bleu_lost_incongruent"] == pytest.approx(lost) and lost > 0
    assert rows["full"]["mscoco_bleu"] == pytest.approx(full["mscoco"]["bleu_tok"])
    assert rows["full"]["mscoco_meteor"] is None  # scored with --no-meteor: shown as '-', not invented
    assert rows["transformer"]["bleu_lost_no_image"] is None  # text-only rows have no probes
    assert f"{expected_delta:+.2f}" in table5 and f"{lost:+.2f}" in table5
    table6_rows = {r["system"]: r for r in json.loads((out / "table6.json").read_text())["rows"]}
    assert table6_rows["full"]["avg_delta_bleu"] == pytest.approx(0.0)  # Table 6 is relative to the full model

    with open(out / "table5.csv", newline="", encoding="utf-8") as f:
        csv_rows = {r["system"]: r for r in csv.DictReader(f)}
    assert float(csv_rows["full"]["test2016_sacrebleu"]) == pytest.approx(full["test2016"]["bleu"])
    assert csv_rows["bert_nmt"]["finished"] == "False"

    summary = json.loads((out / "summary.json").read_text())
    curve = summary["curves"]["+ L_M, last layer, learnable lambda (Our model)"]
    assert curve == [[1, 3.0, 1], [2, 6.0, 1], [3, 8.0, 2], [4, 0.0, 2]]  # stage 2's epochs follow stage 1's
    png = (out / "valid_bleu.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10000

    # a step the full model depends on runs again (--redo): its old scores no longer count; the rows exported
    # before that carry into another work folder, with everything the tables and the paired bootstrap need
    exported = tmp_path / "exported"
    run_cli([sys.executable, COMPARE, "--tables-only", "--work-dir", work, "--multi30k-dir", multi30k_dir,
             "--budget", "smoke", "--export-results", exported])
    assert sorted(p.name for p in exported.glob("*.json")) == ["full.json", "transformer.json"]
    assert all(line.startswith("D-") for line in (exported / "full.test2016.txt").read_text().splitlines())
    runner.forget(next(s for s in steps if s.name == "train.full_stage2"))
    run_cli([sys.executable, COMPARE, "--tables-only", "--work-dir", work, "--multi30k-dir", multi30k_dir,
             "--budget", "smoke"])
    rows = {r["system"]: r for r in json.loads((out / "table5.json").read_text())["rows"]}
    assert not rows["full"]["finished"] and rows["transformer"]["finished"]
    before = {r["system"]: r for r in json.loads((out / "table5.json").read_text())["rows"]}
    run_cli([sys.executable, COMPARE, "--tables-only", "--work-dir", work, "--multi30k-dir", multi30k_dir,
             "--budget", "smoke", "--previous-results", exported])
    rows = {r["system"]: r for r in json.loads((out / "table5.json").read_text())["rows"]}
    assert rows["full"]["finished"] and all(rows["transformer"][f"{t}_bleu"] == before["transformer"][f"{t}_bleu"]
                                            for t in TEST_SPLITS)  # finished here: its own
    assert rows["full"]["avg_delta_bleu"] == pytest.approx(expected_delta)
    assert all(rows["full"][f"{t}_p_value"] < 0.05 for t in TEST_SPLITS)
    assert rows["full"]["bleu_lost_incongruent"] == pytest.approx(lost)
    assert "Rows measured in an earlier run" in (out / "table5.md").read_text(encoding="utf-8")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["carried_rows"] == ["full"] and summary["curves"][
        "+ L_M, last layer, learnable lambda (Our model)"] == curve
    broken = subprocess.run([str(a) for a in (sys.executable, COMPARE, "--tables-only", "--work-dir", work,
                                              "--multi30k-dir", multi30k_dir, "--budget", "smoke",
                                              "--previous-results", tmp_path / "absent")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert broken.returncode == 1 and broken.stderr.strip().splitlines()[-1] == \
        f"error: --previous-results {tmp_path / 'absent'}: no such folder"


# ----------------------------------------------------------------------------- one script per system


@pytest.mark.slow
def test_committed_scripts_are_what_the_recipe_writes(tmp_path, multi30k_dir):
    run_cli([sys.executable, COMPARE, "--write-scripts", tmp_path, "--budget", "paper", "--features", "features.h5",
             "--multi30k-dir", multi30k_dir])
    written = sorted(p.name for p in tmp_path.glob("*.sh"))
    committed = sorted(p.name for p in (EXAMPLE / "systems").glob("*.sh"))
    assert written == committed and len(written) == 11  # 10 systems and the steps they share
    for name in written:
        assert (tmp_path / name).read_text() == (EXAMPLE / "systems" / name).read_text(), (
            f"examples/multi30k/systems/{name} is stale: regenerate it with compare.py --write-scripts")
        subprocess.run(["bash", "-n", str(tmp_path / name)], check=True)
    full = script_commands(tmp_path, "full.sh")
    for command in ("fairseq-train data/bert", "--task vlp_pretrain", "--freeze-bert",
                    "--finetune-from-model ckpt/full_stage1/checkpoint_best.pt", "--best-checkpoint-metric bleu",
                    "--path ckpt/full_stage2/checkpoint_best.pt", "--shuffle-images-seed 1", "--no-images",
                    "vlp-mmt-score"):
        assert command in full
    assert "vlp-mmt-average-checkpoints" not in full  # the paper budget evaluates the best checkpoints
    assert "--load-vlp" not in script_commands(tmp_path, "bert_enc_stage2.sh")  # no VLP for BERT-enc
    assert len((tmp_path / "full.sh").read_text().splitlines()) < 50  # a list of steps, not their commands


def script_commands(directory, name) -> str:
    """The command lines of the steps that ``name`` runs, as common.sh defines them."""
    script = (directory / name).read_text()
    steps = [line.strip(" \\") for line in script.split("run_steps", 1)[1].splitlines() if line.strip(" \\")]
    common = (directory / "common.sh").read_text().split("run_step() {", 1)[1]
    blocks = re.findall(r"^    (\S+)\)\n((?:      .*\n)+)", common, flags=re.M)
    commands = dict(blocks)
    assert set(steps) <= set(commands), set(steps) - set(commands)
    return "".join(commands[s] for s in steps)


# ----------------------------------------------------------------------------- the recipe and the budgets


def cpu_setup(**fields):
    import recipe
    from budgets import BUDGETS

    return recipe.Setup(BUDGETS["cpu"], "en", "de", tuple(recipe.TEST_SETS), real_features=True, **fields)


def option(command, flag):
    return command[command.index(flag) + 1]


def test_every_model_is_selected_on_valid_bleu_and_stage_2_starts_from_the_best():
    import recipe

    steps = recipe.all_steps(cpu_setup())
    trains = {name: s.command for name, s in steps.items() if name.startswith("train.") and name != "train.vlp"}
    assert len(trains) == 13
    for name, command in trains.items():
        assert "--eval-bleu" in command and option(command, "--best-checkpoint-metric") == "bleu", name
        assert "--maximize-best-checkpoint-metric" in command and "--no-epoch-checkpoints" in command, name
        assert option(command, "--eval-bleu-remove-bpe") == "sentencepiece", name
        assert json.loads(option(command, "--eval-bleu-args"))["beam"] == 1, name  # greedy, as valid_beam
    assert option(trains["train.stage2"], "--finetune-from-model") == "ckpt/stage1/checkpoint_best.pt"
    assert steps["train.stage2"].after == ["train.stage1"]
    assert option(trains["train.bert_nmt"], "--warmstart-from") == "ckpt/transformer/checkpoint_best.pt"
    assert option(trains["train.transformer"], "--task") == "translation"  # on data/text: SentencePiece both sides
    for name in ("train.bert_enc_stage1", "train.stage1", "train.full_stage1"):
        assert "--freeze-bert" in trains[name]
    # FFN(v) trains before the frozen BERT in the multimodal rows (the default), so only BERT-enc caches
    assert [n for n in trains if "--cache-frozen-encoder" in trains[n]] == ["train.bert_enc_stage1"]
    assert option(trains["train.stage1"], "--max-epoch") == "5" and option(trains["train.bert_enc_stage1"],
                                                                          "--max-epoch") == "25"
    for name, command in trains.items():  # the multimodal rows take the encoder's image options from the defaults
        assert not [a for a in command if a.startswith(("--region-", "--decoder-memory", "--train-visual"))], name
    assert not [n for n in steps if n.startswith("average.")]
    generated = {s.command[s.command.index("--path") + 1] for n, s in steps.items() if n.startswith("generate.")}
    assert generated == {f"ckpt/{r}/checkpoint_best.pt" for r in
                         ("transformer", "bert_enc_stage1", "bert_enc_stage2", "bert_nmt", "end2end", "stage1",
                          "stage2", "full_stage2", "lm_all_stage2", "lm_fixed_stage2")}
    vlp = steps["train.vlp"].command
    assert option(vlp, "--train-subset") == "train" and option(vlp, "--valid-subset") == "valid"


def test_averaging_is_an_option_of_the_budget():
    import dataclasses

    import recipe

    setup = cpu_setup()
    setup = dataclasses.replace(setup, budget=dataclasses.replace(setup.budget, average_last=2))
    steps = recipe.all_steps(setup)
    assert option(steps["train.stage1"].command, "--keep-last-epochs") == "2"
    assert option(steps["average.stage2"].command, "--num-epoch-checkpoints") == "2"
    assert option(steps["generate.stage2.test2016"].command, "--path") == "ckpt/stage2/average.pt"
    assert option(steps["train.stage2"].command, "--finetune-from-model") == "ckpt/stage1/checkpoint_best.pt"


def test_the_cpu_budget_uses_the_transformer_settings_and_fits_16_hours():
    import recipe

    setup = cpu_setup()  # every test set for every row: the longest the budget can take
    b = setup.budget
    command = recipe.all_steps(setup)["train.transformer"].command
    for flag, value in (("--encoder-layers", "4"), ("--decoder-layers", "4"), ("--encoder-embed-dim", "128"),
                        ("--decoder-ffn-embed-dim", "256"), ("--decoder-attention-heads", "4"), ("--lr", "0.005"),
                        ("--warmup-updates", "2000"), ("--dropout", "0.3"), ("--max-tokens", "4096"),
                        ("--lr-scheduler", "inverse_sqrt")):
        assert option(command, flag) == value, flag
    assert b.spm_vocab_size == 6000 and 3200 <= b.transformer_epochs * b.times.batches_per_epoch <= 3500
    stage1 = recipe.all_steps(setup)["train.full_stage1"].command
    for flag in ("--decoder-layers", "--decoder-embed-dim", "--lr", "--warmup-updates", "--max-tokens", "--optimizer"):
        assert option(stage1, flag) == option(command, flag), flag

    estimate = recipe.estimated_seconds(setup)
    assert set(estimate) == {s.name for s in recipe.order_steps(recipe.all_steps(setup), [
        n for s in recipe.SYSTEMS.values() for n in recipe.final_steps(s)])}  # every step counted
    hours = sum(estimate.values()) / 3600
    assert 12 < hours <= b.max_step_hours, f"the cpu budget's steps take an estimated {hours:.2f} h"
    n, t = b.times.batches_per_epoch, b.times
    assert estimate["train.transformer"] == pytest.approx(25 * (n * 45 * 60 / 3300 + 1014 * 0.016))
    assert estimate["train.stage1"] == pytest.approx(5 * (n * 7.5 + 1014 * t.greedy_valid))
    assert estimate["train.bert_enc_stage1"] == pytest.approx(n * (2.9 + 24 * 1.5) + 25 * 1014 * t.greedy_valid)
    assert "6.5 min (epoch 1)" in b.summary and "16.9 min" in b.summary  # measured per-epoch times described


def write_caption_proxy_store(path: Path, multi30k_dir: Path, splits=("test_2016_flickr",)):
    """A small store that, like a caption-proxy store, holds test2016's images and no other test set's."""
    import numpy as np

    from vlp_mmt_fairseq.data.feature_store import FeatureStoreWriter, image_key_from_line

    keys = {image_key_from_line(line) for split in splits
            for line in (multi30k_dir / "image_splits" / f"{split}.txt").read_text().splitlines() if line.strip()}
    with FeatureStoreWriter(str(path), feature_dim=4, extractor="caption-proxy: MiniLM (test)") as writer:
        for key in sorted(keys):
            writer.add(key, np.ones((1, 4), np.float32), np.array([[0, 0, 1, 1]], np.float32), width=1, height=1)


def test_a_caption_proxy_store_makes_the_multimodal_rows_n_a_without_images(tmp_path, multi30k_dir):
    import compare
    import recipe
    from result_tables import Row, markdown_table, table_records

    store = tmp_path / "proxy.h5"
    write_caption_proxy_store(store, multi30k_dir)
    args = compare.get_parser().parse_args(["--budget", "cpu", "--multi30k-dir", str(multi30k_dir),
                                            "--features", str(store)])
    setup = compare.make_setup(args)
    assert setup.feature_label == "caption-proxy features" and setup.image_test_sets == ("test2016",)
    steps = recipe.all_steps(setup)
    assert "generate.full.test2016.incongruent" in steps and "generate.transformer.mscoco" in steps
    assert not [n for n in steps if n.startswith("generate.full.") and ("test2017" in n or "mscoco" in n)]
    assert [a for a in steps["score.full"].command if a.startswith("gen/")] == ["gen/full/test2016.txt:test2016"]

    reference = Row("transformer", "Transformer", False, bleu={"test2016": 30.0, "test2017": 20.0, "mscoco": 10.0})
    full = Row("full", "Our model", True, bleu={"test2016": 31.5}, probe_bleu={"incongruent": {"test2016": 31.0}})
    records = table_records([reference, full], "transformer", list(setup.test_sets), list(recipe.PROBES),
                            image_test_sets=setup.image_test_sets)
    assert records[1]["not_available"] == "test2017 mscoco" and records[0]["not_available"] == ""
    assert records[1]["avg_delta_bleu"] == pytest.approx(1.5)  # test2016 only, the set both rows have
    assert records[1]["bleu_lost_incongruent"] == pytest.approx(0.5)
    table = markdown_table(records, list(setup.test_sets), list(recipe.PROBES), "Transformer", setup.feature_label)
    assert "| Our model [caption-proxy features] | 31.50 | - | n/a | n/a | n/a | n/a | +1.50 |" in table
    notes = " ".join(compare.image_notes(setup))
    assert "no images of test2017, mscoco" in notes and "test2016 only" in notes

    runner = StepRunner(str(tmp_path / "work"), {}, echo=lambda *_: None)
    assert "not logged yet" in compare.vlp_note(runner)
    (tmp_path / "work" / "logs").mkdir(parents=True)
    record = {"epoch": 1, "valid_mlm_accuracy": "41.5", "valid_pair_accuracy": "77.25", "valid_num_updates": "300"}
    (tmp_path / "work" / "logs" / "train.vlp.log").write_text(valid_line(1) + "| valid | " + json.dumps(record) + "\n")
    note = compare.vlp_note(runner)
    assert "after 300 updates: MLM accuracy 41.50%, pair accuracy 77.25%" in note and "step 2" in note


def test_the_notes_report_lambda_of_the_learnable_lambda_rows(tmp_path):
    import compare

    runner = StepRunner(str(tmp_path / "work"), {}, echo=lambda *_: None)
    assert compare.lambda_note(runner) is None  # nothing trained yet
    logs = tmp_path / "work" / "logs"
    logs.mkdir(parents=True)
    summary = {"epoch": 25, "train_loss": "4.1", "train_lambda": "0.4123", "train_lambda_std": "0.0812",
               "train_lambda_frequent": "0.3901", "train_lambda_other": "0.4310"}
    inner = dict(summary, epoch=25, train_lambda="0.9")  # a per-interval line: not the epoch's summary
    (logs / "train.full_stage1.log").write_text(
        "2026-12-01 10:00:00 | INFO | train_inner | " + json.dumps(inner) + "\n"
        + "2026-12-01 10:00:01 | INFO | train | " + json.dumps(dict(summary, epoch=24, train_lambda="0.2")) + "\n"
        + "2026-12-01 10:00:02 | INFO | train | " + json.dumps(summary) + "\n")
    (logs / "train.stage1.log").write_text("2026-12-01 10:00:02 | INFO | train | " + json.dumps(summary) + "\n")
    note = compare.lambda_note(runner)
    assert "full_stage1 (epoch 25): mean 0.412, sd 0.081, frequent tokens 0.390, other tokens 0.431" in note
    assert "stage1 (" not in note.replace("full_stage1 (", "")  # rows without a learnable lambda are not read
