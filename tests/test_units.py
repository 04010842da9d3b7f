"""Fast unit tests of the pure functions that the end-to-end tests otherwise reach only through training runs:
text packing, drop-net weights, restoring fairseq's dropped sentences, the beam-copy check, atomic writes,
the fairseq version gate and the tag encoder's pickling."""
import os
import pickle
import random
import stat
from importlib import metadata

import numpy as np
import pytest
import torch
from fairseq.data import data_utils
from fairseq.models import FairseqIncrementalDecoder
from fairseq.modules import MultiheadAttention

from vlp_mmt_fairseq import compat
from vlp_mmt_fairseq.compat import restore_dropped_sentences
from vlp_mmt_fairseq.data.tag_encoder import TagEncoder
from vlp_mmt_fairseq.file_utils import atomic_copy, atomic_dir, atomic_output, partial_path
from vlp_mmt_fairseq.modules.beamable_cross_attention import BeamableCrossAttentionMixin, rows_are_beam_copies
from vlp_mmt_fairseq.modules.bert_fused_layers import dropnet_weights
from vlp_mmt_fairseq.modules.text_packing import PositionKind, pack_text

# ----------------------------------------------------------------------------- pack_text

PAD, CLS, SEP = 0, 101, 102


def right_padded(rows, width=None):
    width = max(map(len, rows)) if width is None else width
    return torch.tensor([row + [PAD] * (width - len(row)) for row in rows], dtype=torch.long)


def packed_by_hand(sources, tags):
    """Eq. 1's text input built row by row: ``[CLS] x [SEP]`` then ``t [SEP]``, right-padded."""
    rows = []
    for src, tag in zip(sources, tags):
        tokens = src + tag
        kinds = [PositionKind.SPECIAL if t in (CLS, SEP) else PositionKind.SOURCE for t in src]
        kinds += [PositionKind.SPECIAL if t == SEP else PositionKind.TAG for t in tag]
        rows.append((tokens, [0] * len(src) + [1] * len(tag), [int(k) for k in kinds]))
    width = max(len(r[0]) for r in rows)
    return tuple(torch.tensor([r[i] + [0] * (width - len(r[i])) for r in rows]) for i in range(3))


def test_pack_text_one_batch_by_hand():
    src = right_padded([[CLS, 7, 8, SEP], [CLS, 9, SEP]])
    tags = right_padded([[31, SEP], [PAD, PAD]])  # the second image has no tags
    tokens, segments, kinds = pack_text(src, tags, PAD, SEP, CLS)
    S, X, T, P = (int(k) for k in (PositionKind.SPECIAL, PositionKind.SOURCE, PositionKind.TAG, PositionKind.PAD))
    assert tokens.tolist() == [[CLS, 7, 8, SEP, 31, SEP], [CLS, 9, SEP, PAD, PAD, PAD]]
    assert segments.tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]]
    assert kinds.tolist() == [[S, X, X, S, T, S], [S, X, S, P, P, P]]


def test_pack_text_matches_row_by_row_packing_on_random_batches():
    rng = random.Random(0)
    for _ in range(50):
        batch = rng.randint(1, 6)
        sources = [[CLS] + [rng.randint(1000, 1100) for _ in range(rng.randint(0, 6))] + [SEP] for _ in range(batch)]
        tags = []
        for _ in range(batch):
            count = rng.choice([0, 0, 1, 3, 5])
            tags.append([rng.randint(2000, 2100) for _ in range(count)] + [SEP] if count else [])
        # the batch's padding is wider than its longest row: packing trims the columns that are padding everywhere
        src = right_padded(sources, max(map(len, sources)) + rng.randint(0, 2))
        tag = right_padded(tags, max(map(len, tags)) + rng.randint(0, 2)) if any(tags) else right_padded(tags, 2)
        got = pack_text(src, tag, PAD, SEP, CLS)
        for name, value, expected in zip(("tokens", "segments", "kinds"), got, packed_by_hand(sources, tags)):
            assert torch.equal(value, expected), (name, sources, tags)


def test_pack_text_without_tags_keeps_the_source_as_it_is():
    src = right_padded([[CLS, 5, SEP], [CLS, SEP]], width=4)
    for tags in (None, torch.zeros(2, 0, dtype=torch.long)):
        tokens, segments, kinds = pack_text(src, tags, PAD, SEP, CLS)
        assert torch.equal(tokens, src)
        assert not segments.any()
        assert kinds.tolist() == [[1, 2, 1, 0], [1, 1, 0, 0]]


# ----------------------------------------------------------------------------- drop-net


def outcome_frequencies(p, draws=20000):
    torch.manual_seed(0)
    outcomes = [dropnet_weights(p, training=True) for _ in range(draws)]
    return {w: outcomes.count(w) / draws for w in set(outcomes)}


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_dropnet_weights_are_even_at_inference(p):
    torch.manual_seed(0)
    assert {dropnet_weights(p, training=False) for _ in range(1000)} == {(0.5, 0.5)}


def test_dropnet_weights_in_training_have_the_papers_frequencies():
    # 20000 draws: a frequency's standard error is <= 0.0035, so 0.015 is more than 4 of them
    frequencies = outcome_frequencies(0.6)
    assert set(frequencies) == {(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)}
    assert frequencies[(1.0, 0.0)] == pytest.approx(0.3, abs=0.015)
    assert frequencies[(0.0, 1.0)] == pytest.approx(0.3, abs=0.015)
    assert frequencies[(0.5, 0.5)] == pytest.approx(0.4, abs=0.015)
    always = outcome_frequencies(1.0)
    assert set(always) == {(1.0, 0.0), (0.0, 1.0)}  # p = 1: always one attention alone
    assert always[(1.0, 0.0)] == pytest.approx(0.5, abs=0.015)
    assert outcome_frequencies(0.0) == {(0.5, 0.5): 1.0}


# ----------------------------------------------------------------------------- dropped sentences


def test_fairseqs_batches_lose_sentences_and_the_restored_ones_lose_none():
    sizes = np.array([5] * 23 + [9] * 6)
    indices = np.arange(len(sizes))
    for max_tokens, max_sentences in ((None, 7), (40, None), (40, 7)):
        batches = data_utils.batch_by_size(indices, lambda i: sizes[i], max_tokens=max_tokens,
                                           max_sentences=max_sentences, required_batch_size_multiple=8)
        kept = np.concatenate(batches)
        assert len(kept) < len(indices), "fairseq's batch_by_size kept every sentence (issues 5036, 5351 fixed?)"
        restored = restore_dropped_sentences(batches, indices, lambda i: sizes[i], max_tokens, max_sentences)
        assert [b.tolist() for b in restored[: len(batches)]] == [b.tolist() for b in batches]  # fairseq's first
        assert sorted(np.concatenate(restored).tolist()) == indices.tolist()  # then every missing one, once
        for batch in restored[len(batches):]:
            assert max_sentences is None or len(batch) <= max_sentences
            assert max_tokens is None or len(batch) * sizes[batch].max() <= max_tokens


def test_restored_sentences_keep_their_order_and_the_limits():
    sizes = {3: 1, 0: 1, 6: 3, 1: 4, 5: 5, 2: 20, 4: 1}
    indices = [3, 0, 6, 1, 5, 2, 4]
    batches = [np.array([3, 0])]
    restored = restore_dropped_sentences(batches, indices, sizes.__getitem__, max_tokens=10, max_sentences=3)
    # 6 and 1 fit together (2 x 4 <= 10), 5 would make 3 x 5; 2 exceeds the limit alone and still gets a batch
    assert [b.tolist() for b in restored] == [[3, 0], [6, 1], [5], [2], [4]]
    assert all(b.dtype == np.int64 for b in restored)
    one_each = restore_dropped_sentences(batches, indices, sizes.__getitem__, max_sentences=1)
    assert [b.tolist() for b in one_each] == [[3, 0], [6], [1], [5], [2], [4]]
    complete = [np.array([0, 1, 2]), np.array([3])]
    assert [b.tolist() for b in restore_dropped_sentences(complete, [0, 1, 2, 3], sizes.__getitem__)] == [
        [0, 1, 2], [3]]
    assert [b.tolist() for b in restore_dropped_sentences([], [2, 1], sizes.__getitem__)] == [[2, 1]]


# ----------------------------------------------------------------------------- the beam-copy check


def expanded_for_beam(memory, beam):
    """What fairseq's SequenceGenerator does to an encoder output (S x B x C) before the first step."""
    new_order = torch.arange(memory.size(1)).view(-1, 1).repeat(1, beam).view(-1)
    return memory.index_select(1, new_order)


def test_rows_are_beam_copies():
    torch.manual_seed(0)
    memory = torch.randn(4, 3, 8)  # S x B x C
    expanded = expanded_for_beam(memory, 5)
    assert rows_are_beam_copies(expanded, 5)
    assert rows_are_beam_copies(memory, 1)
    assert not rows_are_beam_copies(memory, 3)  # three different sentences are not one sentence's beam
    assert not rows_are_beam_copies(expanded[:, :14], 5)  # not a whole number of beams
    assert not rows_are_beam_copies(memory.repeat(1, 5, 1), 5)  # tiled, not grouped per sentence
    damaged = expanded.clone()
    damaged[2, 7, 3] += 1e-3  # one value of one hypothesis's copy
    assert not rows_are_beam_copies(damaged, 5)


class TinyBeamableDecoder(BeamableCrossAttentionMixin, FairseqIncrementalDecoder):
    def __init__(self):
        super().__init__(dictionary=None)
        self.cross_attention = MultiheadAttention(8, 2, encoder_decoder_attention=True)


def test_beamable_cross_attention_only_for_real_beam_copies_while_decoding_incrementally():
    torch.manual_seed(0)
    memory = torch.randn(4, 2, 8)
    copies, distinct = expanded_for_beam(memory, 3), torch.randn(4, 6, 8)

    def beam_after(prev_length, encoder_out, incremental_state):
        decoder = TinyBeamableDecoder()
        decoder.set_beam_size(3)  # as SequenceGenerator does through the model
        decoder.use_beamable_cross_attention(torch.ones(6, prev_length, dtype=torch.long),
                                             [encoder_out], incremental_state)
        return decoder, decoder.cross_attention.beam_size

    assert beam_after(1, {"encoder_out": [copies]}, {})[1] == 3
    assert beam_after(1, {"encoder_out": [distinct]}, {})[1] == 1
    assert beam_after(1, {"encoder_out": [copies]}, None)[1] == 1  # a full forward attends row by row
    assert beam_after(1, {"encoder_out": []}, {})[1] == 1
    assert beam_after(1, None, {})[1] == 1
    decoder, _ = beam_after(1, {"encoder_out": [copies]}, {})
    decoder.use_beamable_cross_attention(torch.ones(6, 2, dtype=torch.long), [{"encoder_out": [distinct]}], {})
    assert decoder.cross_attention.beam_size == 3  # later steps keep the first step's answer


# ----------------------------------------------------------------------------- atomic writes


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def current_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def normally_created_mode(directory):
    reference = directory / "reference"
    reference.write_text("")
    found = mode(reference)
    reference.unlink()
    return found


def test_atomic_output_publishes_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_output(str(target), suffix=".txt") as tmp:
        assert os.path.dirname(tmp) == str(target.parent) and tmp.endswith(".txt.tmp")
        assert not target.exists()  # nothing visible until the block succeeds
        with open(tmp, "w") as f:
            f.write("complete")
    assert target.read_text() == "complete"
    assert os.listdir(target.parent) == ["out.txt"]
    assert mode(target) == normally_created_mode(tmp_path)  # not mkstemp's 0600
    previous = os.umask(0o027)
    try:
        with atomic_output(str(tmp_path / "private.txt")) as tmp:
            open(tmp, "w").close()
    finally:
        os.umask(previous)
    assert mode(tmp_path / "private.txt") == 0o640


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    fresh, existing = tmp_path / "fresh.txt", tmp_path / "existing.txt"
    existing.write_text("old")
    for target in (fresh, existing):
        with pytest.raises(RuntimeError, match="writer failed"):
            with atomic_output(str(target)) as tmp:
                with open(tmp, "w") as f:
                    f.write("half")
                raise RuntimeError("writer failed")
    assert not fresh.exists() and existing.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["existing.txt"]


def test_atomic_dir(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(str(target)) as tmp:
        assert not target.exists()
        (open(os.path.join(tmp, "weights.bin"), "wb")).write(b"1")
    assert (target / "weights.bin").read_bytes() == b"1"
    assert mode(target) == 0o777 & ~current_umask()  # not mkdtemp's 0700
    with atomic_dir(str(target)) as tmp:  # replaces the previous version whole
        (open(os.path.join(tmp, "other.bin"), "wb")).write(b"2")
    assert os.listdir(target) == ["other.bin"]
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_dir(str(target), replace=False) as tmp:
            (open(os.path.join(tmp, "third.bin"), "wb")).write(b"3")
    with pytest.raises(ValueError):
        with atomic_dir(str(target)) as tmp:
            (open(os.path.join(tmp, "fourth.bin"), "wb")).write(b"4")
            raise ValueError("writer failed")
    assert os.listdir(target) == ["other.bin"]  # both failures left the published version alone
    assert os.listdir(tmp_path) == ["model"]  # and no temporary directory behind


def test_atomic_copy(tmp_path):
    src, dst = tmp_path / "checkpoint.pt", tmp_path / "out" / "checkpoint_last.pt"
    payload = os.urandom(1 << 20)
    src.write_bytes(payload)
    os.chmod(src, 0o640)
    assert atomic_copy(str(src), str(dst)) == str(dst)
    assert dst.read_bytes() == payload and mode(dst) == 0o640
    dst.write_bytes(b"stale")
    atomic_copy(str(src), str(dst))
    assert dst.read_bytes() == payload
    with pytest.raises(FileNotFoundError):
        atomic_copy(str(tmp_path / "missing.pt"), str(dst))
    assert dst.read_bytes() == payload and os.listdir(dst.parent) == ["checkpoint_last.pt"]
    assert partial_path("out.h5") == "out.h5.partial"


# ----------------------------------------------------------------------------- compat's version gate


def test_fixes_apply_to_fairseq_0_12_only():
    for version in ((0, 12, 2), (0, 12, 3, 1), (0, 12), (0, 10, 2), ()):
        assert compat.fairseq_needs_fixes(version), version
    for version in ((0, 13), (0, 13, 0), (1, 0, 0)):
        assert not compat.fairseq_needs_fixes(version), version
    installed = next(metadata.version(n) for n in ("fairseq-fixed", "fairseq") if _installed(n))
    assert ".".join(map(str, compat.fairseq_version())) == installed.split("+")[0]
    # importing the plugin applied the fixes this fairseq needs, and only those
    from fairseq import checkpoint_utils, options
    from fairseq.distributed import utils as distributed_utils

    needed = compat.fairseq_needs_fixes()
    assert getattr(options.parse_args_and_arch, "_vlp_mmt_full_help", False) == needed
    assert getattr(distributed_utils.call_main, "_vlp_mmt_bf16", False) == needed
    assert getattr(checkpoint_utils.load_checkpoint, "_vlp_mmt_crash_safe", False) == needed


def _installed(name):
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


# ----------------------------------------------------------------------------- the tag encoder


def test_tag_encoder_pickles_without_its_tokenizer():
    from vlp_mmt_fairseq.bert_loading import BUNDLED_MINILM, load_bert_tokenizer

    encoder = TagEncoder(BUNDLED_MINILM)
    ids = encoder("street light")
    expected = load_bert_tokenizer(BUNDLED_MINILM)("street light", add_special_tokens=False)["input_ids"]
    assert ids == expected and len(ids) == 2
    assert encoder._tokenizer is not None  # loaded by the first call
    blob = pickle.dumps(encoder)
    assert len(blob) < 1000  # the name only, not the tokenizer (its vocabulary alone is 30522 entries)
    copy = pickle.loads(blob)
    assert copy.bert_model == BUNDLED_MINILM and copy._tokenizer is None
    assert copy("street light") == ids and copy._tokenizer is not None  # each data worker loads its own


def test_batches_load_in_the_main_thread_without_workers():
    """fairseq's prefetching daemon thread reading HDF5 at exit hung or aborted the process; it is off then."""
    from vlp_mmt_fairseq.data.feature_store import reads_in_the_main_thread

    assert reads_in_the_main_thread({"num_workers": 0, "data_buffer_size": 10})["data_buffer_size"] == 0
    assert reads_in_the_main_thread({"data_buffer_size": 10})["data_buffer_size"] == 0
    assert reads_in_the_main_thread({"num_workers": 2, "data_buffer_size": 10})["data_buffer_size"] == 10


def test_interrupted_attempts_of_a_resumed_training_log(tmp_path):
    from vlp_mmt_fairseq.evaluation.train_logs import interrupted_attempt_seconds

    def record(kind, wall):
        return f'2026-12-01 10:00:00 | INFO | {kind} | {{"epoch": 1, "wall": "{wall}"}}\n'

    log = tmp_path / "train.log"
    log.write_text("### 2026-12-01 10:00:00 fairseq-train ...\n" + record("train_inner", 50) + record("valid", 120)
                   + "Traceback: killed\n### 2026-12-01 11:00:00 fairseq-train ...\nno record before it was killed\n"
                   + "### 2026-12-01 11:05:00 fairseq-train ...\n" + record("train", 300))
    assert interrupted_attempt_seconds(str(log)) == [120.0, 0.0]  # the last attempt is the step's own record
    assert interrupted_attempt_seconds(str(tmp_path / "absent.log")) == []
