"""Quickstart: does the image help translate an ambiguous word? Offline, on the CPU, in minutes.

1. Generate the toy ambiguity corpus (``vlp-mmt-make-toy-ambiguity``): each English sentence
   holds one ambiguous word (bank, bat, glasses, ...) whose German translation depends on a sense
   planted in the image's region features only (the tags name other objects).
2. Prepare it like Multi30K (``vlp-mmt-prepare-multi30k``).
3. Train, with the bundled MiniLM as the BERT (stage 1: BERT frozen), a text-only model
   (``--no-images``) and a multimodal one (regions, tags and the modality loss).
4. Translate the test set with ``fairseq-generate --beam 5``: text-only, multimodal with the right
   images, and multimodal with images shuffled across sentences.
5. Print BLEU and the accuracy on the ambiguous words.

Every step is a plain command line, echoed as it runs.
"""
import argparse
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def run(args, log=None, progress=None):
    """Run one command (echoed); stop with its output if it fails.

    Its output goes to ``log``; what ``progress`` returns for a line (None: nothing) is also shown, shortened.
    """
    args = [str(a) for a in args]
    print("+ " + " ".join(shlex.quote(a) for a in args), flush=True)
    lines = []
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            lines.append(line)
            shown = progress(line) if progress is not None else None
            if shown:
                print("    " + shown[:110], flush=True)
    output = "".join(lines)
    if log:
        with open(log, "w", encoding="utf-8") as f:
            f.write(output)
    if process.returncode != 0:
        sys.stderr.write(output[-5000:])
        sys.exit(f"command failed with exit code {process.returncode}")
    return output


def training_progress(line: str):
    """What to show of a fairseq-train log line: the running loss and each validation, without the prefix."""
    for tag in ("| INFO | train_inner | ", "| INFO | valid | "):
        if tag in line:
            return line.split(tag, 1)[1].strip()
    return None


def train(data, corpus, save_dir, args, multimodal):
    if os.path.exists(os.path.join(save_dir, "checkpoint_best.pt")):
        print(f"(reusing {save_dir}/checkpoint_best.pt)")
        return
    images = (["--image-features", corpus / "features.h5", "--max-regions", args.regions]
              if multimodal else ["--no-images", "--modality-loss", "off"])
    run([os.path.join(BIN, "fairseq-train"), data / "bert", "--user-dir", os.path.join(REPO, "vlp_mmt_fairseq"),
         "--task", "vlp_mmt", "--arch", "vlp_mmt_tiny", "--criterion", "vlp_mmt_loss", "--label-smoothing", "0.1",
         "--bert-model", args.bert_model, "--freeze-bert", *images,
         "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "2e-3", "--lr-scheduler", "inverse_sqrt",
         "--warmup-updates", "50", "--max-tokens", "2000", "--max-update", args.max_update,
         "--save-dir", save_dir, "--no-epoch-checkpoints", "--no-last-checkpoints", "--num-workers", "0",
         "--log-format", "simple", "--log-interval", "20", "--seed", "1", "--cpu"],
        log=os.path.join(save_dir + ".log"), progress=training_progress)


def translate(data, corpus, checkpoint, args, out, extra):
    run([os.path.join(BIN, "fairseq-generate"), data / "bert", "--user-dir", os.path.join(REPO, "vlp_mmt_fairseq"),
         "--task", "vlp_mmt", "--bert-model", args.bert_model, "--path", checkpoint, "--gen-subset", "test2016",
         "--beam", "5", "--batch-size", "100", "--max-len-b", "30", "--post-process", "sentencepiece", "--cpu",
         *extra], log=out)
    return out


def score(out, data, senses):
    import logging

    logging.disable(logging.WARNING)  # sacreBLEU warns of the toy's tokenized periods; the references have them too
    from vlp_mmt_fairseq.evaluation.ambiguity import sense_accuracy
    from vlp_mmt_fairseq.evaluation.bleu import detokenized_bleu
    from vlp_mmt_fairseq.evaluation.generate_output import read_detokenized_hypotheses
    from vlp_mmt_fairseq.evaluation.references import read_lines

    references = read_lines(str(data / "raw" / "test2016.de"))
    hypotheses = read_detokenized_hypotheses(out, len(references))
    bleu, _ = detokenized_bleu(hypotheses, references)
    return bleu, 100 * sense_accuracy(hypotheses, senses)


def main():
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="quickstart_out", help="working directory (reused if present)")
    parser.add_argument("--bert-model", default="bundled-minilm", help="BERT for the encoder (default: bundled MiniLM)")
    parser.add_argument("--train", type=int, default=2000, help="training sentences")
    parser.add_argument("--max-update", type=int, default=250, help="updates per model")
    parser.add_argument("--regions", type=int, default=8, help="regions per image")
    args = parser.parse_args()
    start = time.time()
    out = Path(args.out).resolve()
    corpus, data = out / "corpus", out / "data"
    if not (corpus / "features.h5").exists():
        run([os.path.join(BIN, "vlp-mmt-make-toy-ambiguity"), "--out", corpus,
             "--train", args.train, "--valid", 200, "--test", 300, "--regions", args.regions])
    if not (data / "bert").exists():
        run([os.path.join(BIN, "vlp-mmt-prepare-multi30k"), "--multi30k-dir", corpus,
             "--out", data, "--spm-vocab-size", 400, "--spm-vocab-size-src", 400])
    train(data, corpus, str(out / "text_only"), args, multimodal=False)
    train(data, corpus, str(out / "multimodal"), args, multimodal=True)
    images = ["--image-features", corpus / "features.h5", "--max-regions", args.regions]
    runs = {
        "text-only (BERT-enc, no image)": translate(data, corpus, out / "text_only" / "checkpoint_best.pt", args,
                                                   str(out / "gen.text_only.txt"), ["--no-images"]),
        "multimodal, real images": translate(data, corpus, out / "multimodal" / "checkpoint_best.pt", args,
                                             str(out / "gen.multimodal.txt"), images),
        "multimodal, shuffled images": translate(data, corpus, out / "multimodal" / "checkpoint_best.pt", args,
                                                 str(out / "gen.shuffled.txt"), images + ["--shuffle-images-seed", 1]),
    }
    senses = str(corpus / "senses.tsv")
    print(f"\nToy ambiguity test set ({len(open(senses).readlines())} sentences, 2 senses per ambiguous word: "
          "chance = 50%)\n")
    print("| system | BLEU | ambiguous words right |")
    print("|---|---:|---:|")
    for name, path in runs.items():
        bleu, accuracy = score(path, data, senses)
        print(f"| {name} | {bleu:.1f} | {accuracy:.1f}% |")
    print(f"\nwall time: {time.time() - start:.0f} s; outputs in {out}")


if __name__ == "__main__":
    main()
