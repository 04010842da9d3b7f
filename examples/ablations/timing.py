#!/usr/bin/env python
"""Measure the per-batch CPU cost of each kind of ablation run on the real data, at one thread, and estimate a
variant's step time from it.

    OMP_NUM_THREADS=1 python examples/ablations/timing.py --data data/multi30k.en-de --features store.h5 \\
        --batches 20 --out timing.json

It builds each kind of stage-1 model as fairseq-train does (the ``cpu`` budget's decoder and batch size), runs
``--batches`` training batches of the first epoch twice (first pass: the frozen-encoder cache misses; second
pass: it hits), and times the process's CPU seconds (``time.process_time``: at one thread, the wall time the
step would take on an otherwise idle core). Also timed: VLP updates, greedy validation (``--eval-bleu``) and
beam-5 generation on ``--sentences`` validation sentences. The estimate scales these to full epochs.
The VLP-initialised models start from a random FFN(v) and the bundled MiniLM: weights do not change the cost.
"""
import argparse
import json
import os
import tempfile
import time

import ablate  # this folder: Python puts a script's own folder first on its path
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def build(argv):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    import vlp_mmt_fairseq  # noqa: F401  (registration)

    args = options.parse_args_and_arch(options.get_training_parser(), [str(a) for a in argv])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return cfg, task, Trainer(cfg, task, model, criterion)


def train_batches(trainer, count):
    itr = trainer.get_train_iterator(epoch=1, load_dataset=True)
    epoch_batches = len(itr)
    batches = []
    for sample in itr.next_epoch_itr(shuffle=True):
        batches.append(sample)
        if len(batches) == count:
            break
    return batches, epoch_batches


def time_passes(trainer, batches, passes):
    seconds = []
    for _ in range(passes):
        start = time.process_time()
        for sample in batches:
            trainer.train_step([sample])
        seconds.append((time.process_time() - start) / len(batches))
    return seconds


def time_generation(task, model, beam, sentences):
    """CPU seconds per sentence of fairseq's SequenceGenerator on the first ``sentences`` of valid."""
    from fairseq import utils

    task.load_dataset("valid")
    generator = task.build_generator([model], argparse.Namespace(beam=beam, max_len_a=1.5, max_len_b=10))
    itr = task.get_batch_iterator(task.dataset("valid"), max_tokens=8000,
                                  max_positions=utils.resolve_max_positions(task.max_positions(),
                                                                            model.max_positions())
                                  ).next_epoch_itr(shuffle=False)
    model.eval()
    done, start = 0, time.process_time()
    with torch.no_grad():
        for sample in itr:
            task.inference_step(generator, [model], sample)
            done += sample["nsentences"]
            if done >= sentences:
                break
    return (time.process_time() - start) / done


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--bert-model", default="bundled-minilm")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    budget = ablate.BUDGETS["cpu"]
    from transformers import BertModel

    from vlp_mmt_fairseq.bert_export import export_encoder
    from vlp_mmt_fairseq.bert_loading import resolve_bert_path
    from vlp_mmt_fairseq.data.feature_store import FeatureStore
    from vlp_mmt_fairseq.modules.visual_projection import VisualProjection

    tmp = tempfile.mkdtemp(prefix="ablation_timing.")
    bert = BertModel.from_pretrained(resolve_bert_path(args.bert_model), add_pooling_layer=False)
    dim = FeatureStore(args.features).feature_dim
    vlp = export_encoder(bert, VisualProjection(dim, bert.config.hidden_size), os.path.join(tmp, "vlp"),
                         args.bert_model)
    common = [os.path.join(args.data, "bert"), "--user-dir", os.path.join(REPO, "vlp_mmt_fairseq"),
              "--task", "vlp_mmt", "--bert-model", args.bert_model, "--arch", budget.arch, *budget.decoder,
              "--criterion", "vlp_mmt_loss", "--modality-loss", "off", "--freeze-bert", "--optimizer", "adam",
              "--lr", str(budget.lr), "--max-tokens", str(budget.max_tokens), "--required-batch-size-multiple", "1",
              "--dropout", str(budget.dropout), "--label-smoothing", "0.1", "--cpu", "--num-workers", "0",
              "--seed", "1", "--save-dir", os.path.join(tmp, "ckpt")]
    images = ["--image-features", args.features]
    kinds = {
        "text_cached": ["--no-images", "--cache-frozen-encoder"],
        "multimodal_cached": [*images, "--load-vlp", vlp, "--no-train-visual-projection", "--cache-frozen-encoder"],
        "multimodal_ffn_trained": [*images, "--load-vlp", vlp, "--train-visual-projection"],
    }
    results = {"batches_timed": args.batches, "threads": torch.get_num_threads()}
    for name, flags in kinds.items():
        cfg, task, trainer = build(common + flags)
        batches, epoch_batches = train_batches(trainer, args.batches)
        first, second = time_passes(trainer, batches, 2)
        results[name] = {"epoch_batches": epoch_batches, "seconds_per_batch_first_pass": round(first, 3),
                         "seconds_per_batch_second_pass": round(second, 3)}
        if name == "multimodal_cached":
            model = trainer.get_model()
            results["valid_greedy_seconds_per_sentence"] = round(time_generation(task, model, 1, args.sentences), 4)
            results["beam5_seconds_per_sentence"] = round(time_generation(task, model, 5, args.sentences), 4)
        print(name, results[name], flush=True)
    cfg, task, trainer = build([os.path.join(args.data, "bert"), "--user-dir", os.path.join(REPO, "vlp_mmt_fairseq"),
                                "--task", "vlp_pretrain", "--source-lang", "en", "--arch", "vlp_pretrain_base",
                                "--criterion", "vlp_pretrain_loss", "--bert-model", args.bert_model, *images,
                                "--optimizer", "adam", "--lr", str(budget.vlp_lr), "--max-tokens",
                                str(budget.max_tokens), "--cpu", "--num-workers", "0", "--seed", "1",
                                "--save-dir", os.path.join(tmp, "vlp_ckpt")])
    batches, _ = train_batches(trainer, max(2, args.batches // 4))
    results["vlp_seconds_per_update"] = round(time_passes(trainer, batches, 1)[0], 3)
    print("vlp", results["vlp_seconds_per_update"], flush=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
