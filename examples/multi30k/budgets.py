"""Compute budgets of the comparison: one shared recipe, three sizes.

``smoke`` checks the whole pipeline on two CPU cores: a subset of Multi30K, tiny decoders, a few
epochs. ``cpu`` is the full Multi30K on the CPU with small models (hours). ``paper`` is the
paper-sized GPU run: BERT-base, base-sized transformers, the full data. Every system of one
budget gets the same data, vocabulary, batch size, schedule and decoding settings.
"""
from dataclasses import asdict, dataclass
from typing import Optional


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
    # optimisation (shared by all systems)
    max_tokens: int
    lr: float  # runs that start from a fresh decoder: text transformer, BERT-NMT, stage 1, End2End
    finetune_lr: float  # stage 2 (everything trains, from stage 1's model)
    vlp_lr: float
    warmup_updates: int
    dropout: float
    # schedule, in epochs (the curves are per epoch), and VLP in updates
    transformer_epochs: int
    bert_nmt_epochs: int
    stage1_epochs: int
    stage2_epochs: int
    end2end_epochs: int
    vlp_updates: int
    average_last: int  # epoch checkpoints averaged into the evaluated model
    # decoding
    valid_beam: int  # beam of the per-epoch validation BLEU
    test_beam: int
    gen_max_tokens: int
    device_flags: tuple  # ("--cpu", ...) or ("--fp16",)

    def __post_init__(self):
        runs = {k: v for k, v in self.as_dict().items() if k.endswith("_epochs")}
        short = [k for k, v in runs.items() if v < self.average_last]
        if short:
            raise ValueError(f"budget '{self.name}': {', '.join(short)} < average_last = {self.average_last}")

    def as_dict(self) -> dict:
        return asdict(self)


BUDGETS = {
    "smoke": Budget(
        name="smoke",
        summary="pipeline check on 2 CPU cores: first 2,000 training pairs, 200 validation pairs and 250 "
                "sentences of each test set; the bottom 2 layers of the bundled MiniLM, tiny decoders, a few epochs",
        train_sentences=2000, valid_sentences=200, test_sentences=250, spm_vocab_size=2000,
        feature_dim=64, regions=10,
        bert_model="bundled-minilm", bert_layers=2, transformer_arch="transformer_tiny",
        bert_nmt_arch="bert_fused_tiny", vlp_mmt_arch="vlp_mmt_tiny", vlp_arch="vlp_pretrain_base",
        max_tokens=3000, lr=2e-3, finetune_lr=1e-4, vlp_lr=5e-5, warmup_updates=40, dropout=0.1,
        transformer_epochs=10, bert_nmt_epochs=3, stage1_epochs=10, stage2_epochs=2, end2end_epochs=8,
        vlp_updates=30, average_last=2,
        valid_beam=1, test_beam=5, gen_max_tokens=6000, device_flags=("--cpu", "--num-workers", "0"),
    ),
    "cpu": Budget(
        name="cpu",
        summary="full Multi30K on the CPU (many hours on 2 cores): the bundled MiniLM, tiny decoders, short "
                "schedules",
        train_sentences=None, valid_sentences=None, test_sentences=None, spm_vocab_size=8000,
        feature_dim=64, regions=10,
        bert_model="bundled-minilm", bert_layers=None, transformer_arch="transformer_tiny",
        bert_nmt_arch="bert_fused_tiny", vlp_mmt_arch="vlp_mmt_tiny", vlp_arch="vlp_pretrain_base",
        max_tokens=4000, lr=1e-3, finetune_lr=5e-5, vlp_lr=5e-5, warmup_updates=400, dropout=0.1,
        transformer_epochs=15, bert_nmt_epochs=3, stage1_epochs=10, stage2_epochs=2, end2end_epochs=6,
        vlp_updates=300, average_last=2,
        valid_beam=1, test_beam=5, gen_max_tokens=8000, device_flags=("--cpu", "--num-workers", "0"),
    ),
    "paper": Budget(
        name="paper",
        summary="paper-sized GPU run (one GPU, fp16): bert-base-uncased, vlp_mmt_base and transformer-base "
                "sizes, full Multi30K; give real detector features with --features",
        train_sentences=None, valid_sentences=None, test_sentences=None, spm_vocab_size=8000,
        feature_dim=2048, regions=36,
        bert_model="bert-base-uncased", bert_layers=None, transformer_arch="transformer",
        bert_nmt_arch="bert_fused_base", vlp_mmt_arch="vlp_mmt_base", vlp_arch="vlp_pretrain_base",
        max_tokens=4096, lr=5e-4, finetune_lr=5e-5, vlp_lr=5e-5, warmup_updates=2000, dropout=0.3,
        transformer_epochs=50, bert_nmt_epochs=30, stage1_epochs=30, stage2_epochs=10, end2end_epochs=40,
        vlp_updates=20000, average_last=5,
        valid_beam=5, test_beam=5, gen_max_tokens=16000, device_flags=("--fp16",),
    ),
}
