"""--cache-frozen-encoder: stage 1 trains exactly as without the cache, BERT runs once per sentence.

fairseq's own Trainer runs here in process (as fairseq-train sets it up from the same arguments), so
the losses can be compared at full precision.
"""
import pytest
import torch
from fairseq.trainer import Trainer

from test_vlp_mmt_model import PAPER
from utils import USER_DIR
from vlp_mmt_fairseq.trainer_setup import build_trainer

EPOCHS = 3
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LossRecordingTrainer(Trainer):
    """fairseq's Trainer, keeping every update's loss (summed loss / sample size) at full precision."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses = []

    def _reduce_and_log_stats(self, logging_outputs, sample_size, grad_norm=None):
        if self.model.training:
            loss = sum(float(log["loss"]) for log in logging_outputs)
            self.losses.append(loss / sum(float(log["sample_size"]) for log in logging_outputs))
        return super()._reduce_and_log_stats(logging_outputs, sample_size, grad_norm)


def stage1_args(toy_data, toy_corpus, tiny_bert_dir, *extra):
    """Stage 1 on the 100-sentence valid split (5 batches an epoch); the decoder keeps its dropout.

    The paper's stage 1: Eq. 1, where FFN(v) comes before BERT and the cache must key on the image too, with a
    pre-trained FFN(v) frozen with BERT (--no-train-visual-projection; by default FFN(v) trains and the cache
    refuses; with --region-fusion decoder BERT reads the text alone: tests/test_ablation_options.py covers that)."""
    return [
        toy_data / "bert", "--user-dir", USER_DIR, "--task", "vlp_mmt",
        "--arch", "vlp_mmt_tiny", "--criterion", "vlp_mmt_loss", "--label-smoothing", "0.1",
        "--bert-model", tiny_bert_dir, "--image-features", toy_corpus / "features.h5", "--max-regions", "6",
        "--freeze-bert", "--optimizer", "adam", "--lr", "1e-3", "--max-sentences", "24", "--train-subset", "valid",
        "--num-workers", "0", "--cpu", "--seed", "1", *PAPER, "--no-train-visual-projection", *extra,
    ]


def train(argv, epochs=EPOCHS):
    """Train ``epochs`` epochs as fairseq-train does; return the trainer and the encoder cache hit counts."""
    _, _, trainer = build_trainer(argv, LossRecordingTrainer)
    cache = trainer.get_model().encoder.cache
    epoch_itr = trainer.get_train_iterator(epoch=1, load_dataset=True)
    hits = []
    for _ in range(epochs):
        trainer.begin_epoch(epoch_itr.epoch)
        before = cache.hits if cache else 0
        for sample in epoch_itr.next_epoch_itr(shuffle=True):
            trainer.train_step([sample])
        hits.append((cache.hits if cache else 0) - before)
        trainer.lr_step(epoch_itr.epoch)
        epoch_itr = trainer.get_train_iterator(epoch_itr.next_epoch_idx, load_dataset=False)
    return trainer, hits


@pytest.mark.slow
def test_stage1_losses_identical_with_and_without_cache(toy_data, toy_corpus, tiny_bert_dir, vlp_export, tmp_path):
    base = stage1_args(toy_data, toy_corpus, tiny_bert_dir, "--load-vlp", vlp_export)
    plain, _ = train(base)
    # a memory bound of 20 KB (a few entries) makes most of them spill to disk and come back
    cached, hits = train(base + ["--cache-frozen-encoder", "--cache-frozen-encoder-mem-mb", "0.02"])
    cache = cached.get_model().encoder.cache

    assert len(plain.losses) == len(cached.losses) == EPOCHS * 5
    assert cached.losses == plain.losses  # bit for bit: BERT runs without dropout in both
    sentences = len(cached.task.dataset("valid"))
    assert hits[0] < sentences and hits[1:] == [sentences] * (EPOCHS - 1)  # epoch 1 fills, then only hits
    assert cache.misses == len(cache) <= sentences  # BERT ran once per distinct input
    assert cache.memory_mb <= 0.02 and len(cache._on_disk) > len(cache._memory) > 0
    # the parameters BERT never saw a gradient for are unchanged, the trained ones equal
    for (name, a), (_, b) in zip(plain.get_model().named_parameters(), cached.get_model().named_parameters()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_cache_directory_is_reused_by_a_later_run(toy_data, toy_corpus, tiny_bert_dir, vlp_export, tmp_path):
    args = stage1_args(toy_data, toy_corpus, tiny_bert_dir, "--load-vlp", vlp_export, "--cache-frozen-encoder",
                       "--cache-frozen-encoder-dir", tmp_path / "cache")
    first, first_hits = train(args, epochs=1)
    files = list((tmp_path / "cache").glob("*/*/*.npy"))
    assert len(files) == len(first.get_model().encoder.cache)  # every entry written, nothing half-written
    assert not list((tmp_path / "cache").glob("**/*.tmp"))
    again, again_hits = train(args, epochs=1)  # a restart: the entries come from disk
    assert again_hits == [len(again.task.dataset("valid"))]
    assert again.losses == first.losses


@pytest.mark.slow
@pytest.mark.parametrize("extra, message", [
    ([], "FFN\\(v\\) trains before BERT"),  # images, but FFN(v) not from --load-vlp: it trains
    (["--frozen-bert-dropout", "--no-images", "--modality-loss", "off"], "frozen-bert-dropout"),
])
def test_cache_refuses_when_bert_output_can_change(toy_data, toy_corpus, tiny_bert_dir, extra, message):
    from vlp_mmt_fairseq.modules.frozen_encoder_cache import FrozenEncoderCacheError

    _, task, trainer = build_trainer(stage1_args(toy_data, toy_corpus, tiny_bert_dir, "--cache-frozen-encoder",
                                                 *extra))
    task.load_dataset("valid")
    sample = next(iter(task.get_batch_iterator(task.dataset("valid"), max_sentences=4).next_epoch_itr()))
    model = trainer.get_model().train()
    with pytest.raises(FrozenEncoderCacheError, match=message):
        trainer.get_criterion()(model, sample)


@pytest.mark.slow
def test_cache_needs_frozen_bert(tiny_bert_dir):
    from transformers import BertModel

    from vlp_mmt_fairseq.data.bert_dictionary import BertDictionary
    from vlp_mmt_fairseq.models.multimodal_bert_encoder import MultimodalBertEncoder
    from vlp_mmt_fairseq.modules.frozen_encoder_cache import FrozenEncoderCache, FrozenEncoderCacheError

    dictionary = BertDictionary(str(tiny_bert_dir / "vocab.txt"))
    encoder = MultimodalBertEncoder(dictionary, BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False),
                                    None, 16)
    encoder.cache = FrozenEncoderCache()
    tokens = torch.tensor([[dictionary.bos(), 2000, dictionary.eos()]])
    with pytest.raises(FrozenEncoderCacheError, match="needs --freeze-bert"):
        encoder.train()(tokens)
    encoder.eval()(tokens)  # validation and generation do not use the cache
