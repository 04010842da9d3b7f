"""Shared pytest fixtures (the helpers are in tests/utils.py)."""
import os
import sys
from pathlib import Path

import pytest

from utils import SHARED_DIR, console_script, run_cli

# Tests run tiny models, where a second intra-op thread gains little, and a busy machine makes
# OpenMP threads spin against each other; one thread per process keeps timings predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# the CLIs (fairseq-train, fairseq-generate, the console scripts) live beside the interpreter running the tests
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """Multi30K task1 text: ``$MULTI30K_DIR``, else ``../shared/multi30k`` beside the repository."""
    path = Path(os.environ.get("MULTI30K_DIR") or SHARED_DIR / "multi30k")
    if not (path / "raw" / "train.en.gz").exists():
        pytest.fail(f"Multi30K not found at {path}: set MULTI30K_DIR to a Multi30K data/task1 folder")
    return path


@pytest.fixture(scope="session")
def prepared_multi30k_en_de(multi30k_dir, tmp_path_factory) -> Path:
    """The real Multi30K en-de prepared once per session by vlp-mmt-prepare-multi30k (all splits)."""
    out = tmp_path_factory.mktemp("multi30k") / "en-de"
    run_cli([console_script("vlp-mmt-prepare-multi30k"), "--multi30k-dir", multi30k_dir, "--src", "en", "--tgt", "de",
             "--out", out, "--workers", 2])
    return out


# ----------------------------------------------------------------------------- shared by model tests


@pytest.fixture
def one_torch_thread():
    """Tiny models run in process fastest on one torch thread, and other processes share the CPU; restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (2 layers, width 32) with the bundled MiniLM's vocabulary and tokenizer."""
    import shutil

    from transformers import BertConfig, BertModel

    from vlp_mmt_fairseq.bert_loading import BUNDLED_MINILM, resolve_bert_path

    out = tmp_path_factory.mktemp("tiny_bert")
    source = Path(resolve_bert_path(BUNDLED_MINILM))
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    import torch

    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(out)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    return out


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> Path:
    """The toy ambiguity corpus (Multi30K layout + features.h5), small."""
    out = tmp_path_factory.mktemp("toy") / "corpus"
    run_cli([console_script("vlp-mmt-make-toy-ambiguity"), "--out", out,
             "--train", 1200, "--valid", 100, "--test", 200, "--feature-dim", 32, "--regions", 6])
    return out


@pytest.fixture(scope="session")
def toy_data(toy_corpus, tmp_path_factory) -> Path:
    """The toy corpus prepared by vlp-mmt-prepare-multi30k (bert/ and text/ data dirs)."""
    out = tmp_path_factory.mktemp("toy_data") / "data"
    run_cli([console_script("vlp-mmt-prepare-multi30k"), "--multi30k-dir", toy_corpus,
             "--out", out, "--spm-vocab-size", 400, "--spm-vocab-size-src", 400])
    return out


@pytest.fixture(scope="session")
def tiny_bert_no_dropout_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """``tiny_bert_dir`` with BERT's dropout set to 0 (runs that must be exactly reproducible)."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("tiny_bert_no_dropout") / "bert"
    shutil.copytree(tiny_bert_dir, out)
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="session")
def vlp_export(tiny_bert_dir, tmp_path_factory) -> str:
    """A --load-vlp directory: the tiny BERT and an FFN(v) for the toy store's 32-dim features."""
    import torch
    from transformers import BertModel

    from vlp_mmt_fairseq.bert_export import export_encoder
    from vlp_mmt_fairseq.modules.visual_projection import VisualProjection

    bert = BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False)
    torch.manual_seed(0)
    return export_encoder(bert, VisualProjection(32, bert.config.hidden_size),
                          str(tmp_path_factory.mktemp("vlp") / "export"), str(tiny_bert_dir))
