"""examples/ablations/ablate.py: the tiny budget end to end on the toy corpus, for two variants (the text-only
BERT-enc and a cached image row: the regions after BERT, behind the closed gate), two steps side by side, then
resumed without running anything again; and the plan of every variant of the `cpu` budget."""
import json
import re
import subprocess
import sys

import pytest

from utils import REPO_ROOT, cli_env

ABLATE = REPO_ROOT / "examples" / "ablations" / "ablate.py"
GATED = "late_novlp_regions_gated"  # an image row that the frozen-encoder cache serves, so the test stays short


def ablate(toy_data, toy_corpus, tiny_bert_dir, work, *extra):
    return subprocess.run([sys.executable, str(ABLATE), "--data", str(toy_data), "--features",
                           str(toy_corpus / "features.h5"), "--bert-model", str(tiny_bert_dir), "--budget", "tiny",
                           "--work-dir", str(work), "--threads", "1", "--jobs", "2", "--variants", "text_plain", GATED,
                           *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())


@pytest.mark.slow
def test_tiny_ablation_runs_and_resumes(toy_data, toy_corpus, tiny_bert_dir, tmp_path):
    work = tmp_path / "work"
    run = ablate(toy_data, toy_corpus, tiny_bert_dir, work)
    assert run.returncode == 0, run.stdout[-6000:]
    ran = re.findall(r"^\[\d+/\d+\] (\S+): running$", run.stdout, flags=re.M)
    assert ran[:1] == ["train.text_plain"] and not any(name.startswith("train.pretrain") for name in ran)
    assert len(ran) == len(set(ran)) == len(list((work / "state").glob("*.json")))  # each step once, recorded
    summary = json.loads((work / "results" / "ablation.json").read_text())
    rows = {row["variant"]: row for row in summary["rows"]}
    assert list(rows) == ["text_plain", GATED] and all(row["finished"] for row in rows.values())
    for row in rows.values():
        for split in ("valid", "test2016"):
            assert 0 <= row[split]["bleu"] <= 100
        assert row["train_seconds"] > 0 and row["step_seconds"] >= row["train_seconds"]
        assert "--freeze-bert" in row["command"] and "--cache-frozen-encoder" in row["command"]
        for label in ("first", "last"):
            for layer in row["mass_per_layer"][label]:
                assert sum(layer.values()) == pytest.approx(1.0, abs=1e-4)
    first, second = (json.loads((work / "state" / f"train.{name}.json").read_text()) for name in rows)
    assert first["started_at"] < second["finished_at"] and second["started_at"] < first["finished_at"]  # --jobs 2
    assert "incongruent" not in rows["text_plain"] and "incongruent" in rows[GATED]
    assert sorted(rows[GATED]["valid_curve"]) == ["1", "2"]  # the greedy validation of each epoch (JSON keys)
    test = rows[GATED]["vs_reference"]  # paired bootstrap against the text-only BERT-enc, on test2016 'BLEU tok'
    assert "vs_reference" not in rows["text_plain"] and 0 <= test["p_value"] <= 1
    assert test["delta_low"] - 0.01 <= test["delta"] <= test["delta_high"] + 0.01
    assert rows[GATED]["bleu_lost_incongruent"] == pytest.approx(
        rows[GATED]["test2016"]["bleu"] - rows[GATED]["incongruent"]["bleu"], abs=0.011)
    shuffled = rows[GATED]["incongruent"]["vs_real_images"]  # the same bootstrap, shuffled against real images
    assert shuffled["reference"] == "real images" and 0 <= shuffled["p_value"] <= 1
    assert shuffled["delta_low"] - 0.01 <= shuffled["delta"] <= shuffled["delta_high"] + 0.01
    text_mass = rows["text_plain"]["mass"]["last"]
    assert text_mass["region"] == 0 and text_mass["tag"] == 0 and text_mass["text"] > 0
    assert rows[GATED]["mass"]["last"]["region"] > 0 and rows[GATED]["mass"]["last"]["tag"] == 0  # --no-tags
    table = (work / "results" / "ablation.md").read_text()
    assert "| text_plain |" in table and f"| {GATED} |" in table
    assert f"| {shuffled['delta']:+.2f} [{shuffled['delta_low']:+.2f}, {shuffled['delta_high']:+.2f}]" in table
    assert (work / "results" / "ablation.csv").read_text().count("\n") == 3
    assert (work / "results" / "attention_mass.png").read_bytes()[:4] == b"\x89PNG"
    # vlp-mmt-attention-mass's own files: the first and last checkpoints, per layer, on every valid sentence
    mass = json.loads((work / "mass" / f"{GATED}.json").read_text())
    assert list(mass) == ["first", "last"] and mass["first"]["layers"] != mass["last"]["layers"]  # training moved it
    assert all(m["sentences"] == 100 and m["tokens"] > 100 and len(m["layers"]) == 2 for m in mass.values())
    tsv = (work / "mass" / f"{GATED}.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["checkpoint", "layer", "text", "tag", "region", "special", "tokens"]
    assert len(tsv) == 1 + 2 * 2
    assert (work / "mass" / f"{GATED}.png").read_bytes()[:4] == b"\x89PNG"
    # pruned: the first, best and last checkpoints stay, the other epochs and the encoder cache go
    kept = sorted(p.name for p in (work / "ckpt" / GATED).glob("*.pt"))
    assert kept == ["checkpoint1.pt", "checkpoint_best.pt", "checkpoint_last.pt"]
    assert not (work / "cache" / GATED).exists()

    # the length penalty: valid decoded at each of the budget's (1 and 2), test2016 again at the better one
    for name, row in rows.items():
        tuned = row["lenpen"]
        assert sorted(tuned["valid_bleu"]) == ["1", "2"] and tuned["chosen"] in (1.0, 2.0)
        assert tuned["valid_bleu"]["1"] == row["valid"]["bleu"]
        assert tuned["valid_bleu"][f"{tuned['chosen']:g}"] == max(tuned["valid_bleu"].values())
        if tuned["chosen"] == 1.0:
            assert tuned["test2016"] == row["test2016"]
        else:
            assert (work / "gen" / name / "test2016.lenpen2.txt").exists()
    assert "vs_reference" in rows[GATED]["lenpen"] and "vs_reference" not in rows["text_plain"]["lenpen"]
    # every row again from its last epoch; where that is the best checkpoint (the same file), nothing is decoded
    # twice: the row's own decodings count
    for name, row in rows.items():
        last = row["last"]
        same = (work / "ckpt" / name / "checkpoint_best.pt").read_bytes() == \
            (work / "ckpt" / name / "checkpoint_last.pt").read_bytes()
        assert last["last_epoch"] == 2 and last["same_checkpoint"] == same
        assert last["best_epoch"] == 2 if same else last["best_epoch"] == 1
        assert (work / "gen" / name / "test2016.last.txt").exists() != same
        if same:
            assert last["test2016"] == row["test2016"] and last["valid"] == row["valid"]
    assert "incongruent" in rows[GATED]["last"] and "vs_reference" in rows[GATED]["last"]
    assert "### Every row at its last epoch" in table
    assert "### With the length penalty tuned on valid" in table and "1: " in table

    again = ablate(toy_data, toy_corpus, tiny_bert_dir, work)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "running" not in again.stdout
    assert again.stdout.count("done before, reused") == len(ran)  # the tuned and last-epoch decodings too

    # a row measured in an earlier run (its work folder gone) joins the table as that run recorded it
    earlier = dict(rows[GATED], variant="late_gated", label="from an earlier run")
    (tmp_path / "earlier.json").write_text(json.dumps({"rows": [earlier, dict(rows[GATED], finished=False)]}))
    merged = ablate(toy_data, toy_corpus, tiny_bert_dir, work, "--tables-only", "--variants", "text_plain", GATED,
                    "late_gated", "--previous-results", str(tmp_path / "earlier.json"))
    assert merged.returncode == 0, merged.stdout[-4000:]
    merged_rows = {row["variant"]: row for row in json.loads((work / "results" / "ablation.json").read_text())["rows"]}
    assert merged_rows[GATED] == rows[GATED] and "measured_in" not in merged_rows[GATED]  # finished here: kept
    assert merged_rows["late_gated"]["test2016"] == rows[GATED]["test2016"]
    assert merged_rows["late_gated"]["measured_in"] == str(tmp_path / "earlier.json")
    assert "Rows measured in an earlier run" in (work / "results" / "ablation.md").read_text()


@pytest.mark.slow
def test_dry_run_plans_every_variant_with_one_budget(toy_data, toy_corpus, tiny_bert_dir, tmp_path):
    dry = subprocess.run([sys.executable, str(ABLATE), "--data", str(toy_data), "--features",
                          str(toy_corpus / "features.h5"), "--budget", "cpu", "--work-dir", str(tmp_path / "w"),
                          "--dry-run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    assert dry.returncode == 0, dry.stdout
    lines = dry.stdout.splitlines()
    commands = {lines[i].split()[1]: lines[i + 1] for i in range(len(lines) - 1) if lines[i].startswith("# ")}
    trains = {name[len("train."):]: command for name, command in commands.items()
              if name.startswith("train.") and "--task vlp_mmt" in command}
    assert len(trains) == 22 and {"text_plain", "text_vlp", "base", "decoder_text", "late_novlp_regions"} <= set(trains)
    shared = ("--freeze-bert", "--modality-loss off", "--lr 0.002", "--max-epoch 5", "--max-tokens 4096",
              "--decoder-layers 4", "--best-checkpoint-metric bleu")
    assert all(flag in command for command in trains.values() for flag in shared)
    uncached = {name for name, command in trains.items() if "--cache-frozen-encoder" not in command}
    assert uncached == {"vlp_none", "vlp_none_noise", "ffn_trained", "emb_type"}
    assert "--load-vlp" not in trains["text_plain"] and "--load-vlp" not in trains["vlp_none"]
    assert "pretrain_short" in trains["base"].split("--load-vlp ")[1].split()[0]
    assert "train.pretrain_short" in commands and "train.pretrain_long" in commands
    # the long VLP continues the short one: the same schedule, 300 updates more
    short, long = commands["train.pretrain_short"], commands["train.pretrain_long"]
    resume = " --continue-once ckpt/pretrain_short/checkpoint_last.pt"
    assert resume in long and "--continue-once" not in short
    assert "--max-update 300 " in short and "--max-update 600 " in long
    assert short.replace("pretrain_short", "pretrain_long").replace("--max-update 300", "--max-update 600") == \
        long.replace(resume, "")
    assert "--train-visual-projection" in trains["ffn_trained"] and "--no-regions" in trains["tags_only"]
    # the paper's stage 1 (FFN(v) from VLP frozen) is stated where FFN(v) comes from VLP; today's default trains it
    assert "--no-train-visual-projection" in trains["base"] and "--no-train-visual-projection" in trains["emb_type"]
    assert not [n for n in ("ffn_trained", "vlp_none", "late") if "--no-train-visual-projection" in trains[n]]
    assert "--decoder-memory text" in trains["decoder_text"] and "--max-regions 1" in trains["regions_1"]
    # Eq. 1 stated on every multimodal row but the late ones, which put the regions after BERT
    late = {name for name in trains if name.startswith("late")}
    gated = {name for name in late if name.endswith("gated")}
    assert late == {"late", "late_novlp", "late_novlp_regions", "late_novlp_regions_noise", *gated} and len(gated) == 2
    assert all("--region-fusion decoder" in trains[name] for name in late)
    assert all("--region-fusion bert" in command for name, command in trains.items()
               if name not in late and "--no-images" not in command)
    # the decoder's cross-attention stated on every multimodal row: gated on the gated ones, joint elsewhere
    assert all(("--cross-attention gated" if name in gated else "--cross-attention joint") in command
               for name, command in trains.items() if "--no-images" not in command)
    assert "--shuffle-images-seed 1" in trains["late_novlp_regions_noise"] and \
        "--shuffle-images-seed 1" in trains["vlp_none_noise"]
    sweep = sorted(name for name in commands if name.startswith("generate.base.valid.lenpen"))
    assert sweep == ["generate.base.valid.lenpen0.5", "generate.base.valid.lenpen1.5", "generate.base.valid.lenpen2",
                     "generate.base.valid.lenpen3"]  # lenpen 1 is generate.base.valid itself
    assert "--lenpen 2 " in commands["generate.base.valid.lenpen2"]
    assert "--lenpen" not in commands["generate.base.valid"]
    assert not any(name.endswith(".last") for name in commands)  # planned once training shows best != last
    assert "generate.base.test2016.incongruent" in commands and "generate.text_plain.test2016.incongruent" \
        not in commands
    assert not (tmp_path / "w" / "state").exists()
