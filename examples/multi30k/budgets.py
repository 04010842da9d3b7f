"""Compute budgets of the comparison: one shared recipe, three sizes.

``smoke`` checks the whole pipeline on two CPU cores: a subset of Multi30K, tiny decoders, a few
epochs. ``cpu`` is the full Multi30K on the CPU: the Transformer settings that are known to reach
35 BLEU on test2016 at this size, every other row with the same decoder, batch, optimiser and
learning-rate rule, and a schedule that fits 16 hours of step time at one torch thread per step
(``recipe.estimated_seconds`` adds it up from the measured :class:`StepTimes`). ``paper`` is the
paper-sized GPU run: BERT-base, base-sized transformers, the full data. Every system of one budget
gets the same data, vocabulary, batch size, schedule and decoding settings.
"""
from dataclasses import asdict, dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Size:
    """Layers, width, FFN width and attention heads of a transformer stack."""

    layers: int
    dim: int
    ffn: int
    heads: int

    def flags(self, side: str) -> list:
        """fairseq's options for the ``side`` ("encoder" or "decoder") of this size."""
        return [f"--{side}-layers", str(self.layers), f"--{side}-embed-dim", str(self.dim),
                f"--{side}-ffn-embed-dim", str(self.ffn), f"--{side}-attention-heads", str(self.heads)]


@dataclass(frozen=True)
class StepTimes:
    """Measured seconds per kind of step: one torch thread, real Multi30K en-de, ``batches_per_epoch`` batches.

    Each figure is the top of its measured range, so that the estimate errs on the long side. Text-only stage 1
    with the frozen-encoder cache fills the cache in its first epoch and reuses it later; multimodal stage 1 (FFN(v)
    trains into the frozen BERT, the default) and every other run (stage 2, End2End, BERT-NMT) run BERT every batch.
    """

    batches_per_epoch: int
    text_stage1_first: float  # s/batch, text-only stage 1, epoch 1 (2.4-2.9 measured)
    text_stage1_later: float  # s/batch, later epochs (1.4-1.5)
    image_stage1: float  # s/batch, multimodal stage 1 with FFN(v) training before the frozen BERT (7.5)
    uncached: float  # s/batch, BERT forward and backward every batch (5.6-6.6)
    transformer: float  # s/update of the stock transformer (45 min for about 3,300 updates)
    vlp: float  # s/update (12.4-14.6)
    greedy_valid: float  # s/sentence, the per-epoch validation BLEU (greedy)
    beam_generate: float  # s/sentence, beam-5 generation of a test set
    # allowances, not measured: data preparation; a scoring (with METEOR) or another small step; an averaging
    prepare: float = 600.0
    small_step: float = 60.0
    average: float = 30.0

    def epoch_minutes(self, first: float, later: float) -> str:
        return f"{first * self.batches_per_epoch / 60:.1f} min (epoch 1), {later * self.batches_per_epoch / 60:.1f}"

    def describe(self) -> str:
        n = self.batches_per_epoch
        return (f"measured per epoch of {n} batches at one thread: text-only stage 1 "
                f"{self.epoch_minutes(self.text_stage1_first, self.text_stage1_later)} min (later epochs, cached); "
                f"multimodal stage 1 (uncached: FFN(v) trains before BERT) {self.image_stage1 * n / 60:.1f} min; "
                f"uncached (stage 2, End2End; BERT-NMT assumed alike) {self.uncached * n / 60:.1f} min; the "
                f"Transformer {self.transformer * n / 60:.1f} min; VLP {self.vlp:.1f} s per update; validation "
                f"{self.greedy_valid * 1000:.0f} ms and beam-5 generation {self.beam_generate * 1000:.0f} ms per "
                "sentence")


@dataclass(frozen=True)
class Budget:
    """Everything a budget decides; the recipe reads nothing else."""

    name: str
    summary: str
    # data
    train_sentences: Optional[int]  # the first N training pairs (None: all 29,000)
    valid_sentences: Optional[int]  # the first N validation pairs (None: all 1,014)
    test_sentences: Optional[int]  # the first N sentences of each test set (None: all)
    spm_vocab_size: int  # target and source SentencePiece vocabulary (upper limit)
    # synthetic image features (when no --features store is given)
    feature_dim: int
    regions: int
    # models
    bert_model: str
    bert_layers: Optional[int]  # keep only the bottom N layers of bert_model (None: all)
    transformer_arch: str  # the text-only transformer; BERT-NMT is warm-started from it
    bert_nmt_arch: str  # must have the transformer's sizes
    vlp_mmt_arch: str
    vlp_arch: str
    size: Optional[Size]  # every decoder, and the transformer's and BERT-NMT's encoder (None: the archs' own)
    # optimisation (shared by all systems)
    max_tokens: int
    lr: float  # runs that start from a fresh decoder: text transformer, BERT-NMT, stage 1, End2End
    warmup_updates: int
    finetune_lr: float  # stage 2 (everything trains, from stage 1's best checkpoint)
    finetune_warmup_updates: int
    vlp_lr: float
    dropout: float
    # schedule, in epochs (the curves are per epoch), and VLP in updates
    transformer_epochs: int
    bert_nmt_epochs: int
    stage1_epochs: int  # text-only stage 1 (BERT-enc), cached
    image_stage1_epochs: int  # multimodal stage 1: BERT runs every batch, since FFN(v) trains before it
    stage2_epochs: int
    end2end_epochs: int
    vlp_updates: int
    # decoding
    valid_beam: int  # beam of the per-epoch validation BLEU (which selects checkpoint_best.pt)
    test_beam: int
    gen_max_tokens: int
    device_flags: Tuple[str, ...]  # ("--cpu", ...) or ("--fp16",)
    average_last: int = 0  # > 0: the evaluated model averages the last N epoch checkpoints (0: checkpoint_best.pt)
    times: Optional[StepTimes] = None  # measured step times (the budgets whose total is checked)
    max_step_hours: Optional[float] = None  # what the estimated total step time may not exceed

    def __post_init__(self):
        runs = {k: v for k, v in self.as_dict().items() if k.endswith("_epochs")}
        short = [k for k, v in runs.items() if v < self.average_last]
        if short:
            raise ValueError(f"budget '{self.name}': {', '.join(short)} < average_last = {self.average_last}")

    def as_dict(self) -> dict:
        return asdict(self)


#: measured on the 2-core development machine (one torch thread per step, 4,096 tokens per batch)
CPU_TIMES = StepTimes(batches_per_epoch=135, text_stage1_first=2.9, text_stage1_later=1.5, image_stage1=7.5,
                      uncached=6.6, transformer=45 * 60 / 3300, vlp=14.6, greedy_valid=0.016,
                      beam_generate=0.029)
CPU_SIZE = Size(layers=4, dim=128, ffn=256, heads=4)

#: a table: every budget spells out each field, so the rows share their shape (a budget reads whole)
BUDGETS = {
    "smoke": Budget(
        name="smoke",
        summary="pipeline check on 2 CPU cores: first 2,000 training pairs, 200 validation pairs and 250 "
                "sentences of each test set; the bottom 2 layers of the bundled MiniLM, tiny decoders, a few epochs",
        train_sentences=2000, valid_sentences=200, test_sentences=250, spm_vocab_size=2000,
        feature_dim=64, regions=10,
        bert_model="bundled-minilm", bert_layers=2, transformer_arch="transformer_tiny",
        bert_nmt_arch="bert_fused_tiny", vlp_mmt_arch="vlp_mmt_tiny", vlp_arch="vlp_pretrain_base", size=None,
        max_tokens=3000, lr=2e-3, warmup_updates=40, finetune_lr=1e-4, finetune_warmup_updates=10, vlp_lr=5e-5,
        dropout=0.1,
        transformer_epochs=10, bert_nmt_epochs=3, stage1_epochs=10, image_stage1_epochs=10, stage2_epochs=2,
        end2end_epochs=8,
        vlp_updates=30,
        valid_beam=1, test_beam=5, gen_max_tokens=6000, device_flags=("--cpu", "--num-workers", "0"),
    ),
    "cpu": Budget(
        name="cpu",
        summary="full Multi30K on the CPU, at most 16 hours of step time at one torch thread per step: the bundled "
                "MiniLM, 4-layer d=128 decoders (FFN 256, 4 heads; the Transformer 4+4 layers), 6,000 "
                "SentencePiece pieces per side, 4,096 tokens per batch, lr 0.005 inverse_sqrt with 2,000 warm-up "
                "updates, dropout 0.3; epochs: Transformer 25 (about 3,400 updates), text-only stage 1 25, "
                "multimodal stage 1 5 (uncached, so fewer: about 675 updates, as in the stage-1 ablation), stage 2 2, "
                "End2End 5, BERT-NMT 3; VLP 300 updates; " + CPU_TIMES.describe(),
        train_sentences=None, valid_sentences=None, test_sentences=None, spm_vocab_size=6000,
        feature_dim=64, regions=10,
        bert_model="bundled-minilm", bert_layers=None, transformer_arch="transformer_tiny",
        bert_nmt_arch="bert_fused_tiny", vlp_mmt_arch="vlp_mmt_tiny", vlp_arch="vlp_pretrain_base", size=CPU_SIZE,
        max_tokens=4096, lr=5e-3, warmup_updates=2000, finetune_lr=5e-5, finetune_warmup_updates=100, vlp_lr=5e-5,
        dropout=0.3,
        transformer_epochs=25, bert_nmt_epochs=3, stage1_epochs=25, image_stage1_epochs=5, stage2_epochs=2,
        end2end_epochs=5,
        vlp_updates=300,
        valid_beam=1, test_beam=5, gen_max_tokens=8000, device_flags=("--cpu", "--num-workers", "0"),
        times=CPU_TIMES, max_step_hours=16.0,
    ),
    "paper": Budget(
        name="paper",
        summary="paper-sized GPU run (one GPU, fp16): bert-base-uncased, vlp_mmt_base and transformer-base "
                "sizes, full Multi30K; give real detector features with --features",
        train_sentences=None, valid_sentences=None, test_sentences=None, spm_vocab_size=8000,
        feature_dim=2048, regions=36,
        bert_model="bert-base-uncased", bert_layers=None, transformer_arch="transformer",
        bert_nmt_arch="bert_fused_base", vlp_mmt_arch="vlp_mmt_base", vlp_arch="vlp_pretrain_base", size=None,
        max_tokens=4096, lr=5e-4, warmup_updates=2000, finetune_lr=5e-5, finetune_warmup_updates=400, vlp_lr=5e-5,
        dropout=0.3,
        transformer_epochs=50, bert_nmt_epochs=30, stage1_epochs=30, image_stage1_epochs=30, stage2_epochs=10,
        end2end_epochs=40,
        vlp_updates=20000,
        valid_beam=5, test_beam=5, gen_max_tokens=16000, device_flags=("--fp16",),
    ),
}
