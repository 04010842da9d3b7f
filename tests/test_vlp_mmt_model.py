"""The vlp_mmt model and its modality loss, in process, on the toy data with a tiny random BERT."""
import math

import pytest
import torch
import torch.nn.functional as F
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.logging import metrics
from fairseq.sequence_generator import SequenceGenerator

from beam_search import assert_beam_search_matches_full_recompute, make_outputs_peaked
from utils import USER_DIR
from vlp_mmt_fairseq.modules.text_packing import PositionKind

#: the paper's model (Eq. 1, one softmax over all positions), whose modality loss these tests check by hand;
#: later flags win, so a test can still ask for --region-fusion decoder or --cross-attention gated
PAPER = ("--region-fusion", "bert", "--cross-attention", "joint")


def build(toy_data, toy_corpus, tiny_bert_dir, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(toy_data / "bert"), "--user-dir", USER_DIR, "--task", "vlp_mmt", "--arch", "vlp_mmt_tiny",
        "--criterion", "vlp_mmt_loss",
        "--bert-model", str(tiny_bert_dir), "--image-features", str(toy_corpus / "features.h5"),
        "--label-smoothing", "0.1", "--dropout", "0", "--seed", "1", *PAPER, *extra,
    ])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset("valid")
    return task, model, criterion


def first_batch(task, size=8):
    itr = task.get_batch_iterator(task.dataset("valid"), max_sentences=size, seed=1).next_epoch_itr(shuffle=False)
    return next(iter(itr))


def manual_attention(attn, query, memory, keep):
    """fairseq MultiheadAttention by hand: projections, heads, masked softmax, output projection."""
    tgt_len, bsz, dim = query.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q = F.linear(query, attn.q_proj.weight, attn.q_proj.bias) * head_dim ** -0.5
    k = F.linear(memory, attn.k_proj.weight, attn.k_proj.bias)
    v = F.linear(memory, attn.v_proj.weight, attn.v_proj.bias)
    q = q.view(tgt_len, bsz, heads, head_dim).permute(1, 2, 0, 3)  # B x H x T x d
    k = k.view(-1, bsz, heads, head_dim).permute(1, 2, 0, 3)  # B x H x S x d
    v = v.view(-1, bsz, heads, head_dim).permute(1, 2, 0, 3)
    scores = q @ k.transpose(-1, -2)  # B x H x T x S
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # B x H x T x d
    out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, dim)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


@pytest.mark.slow
def test_modality_loss_matches_hand_computation(toy_data, toy_corpus, tiny_bert_dir):
    # the literal Eq. 5 (no prior); the default prior form is checked in tests/test_modality_loss.py
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir, "--modality-gate", "literal")
    with torch.no_grad():  # make lambda non-trivial
        for w in (criterion.gate.w_y, criterion.gate.w_x, criterion.gate.w_v):
            w.normal_(0, 0.5)
    model.train()
    sample = first_batch(task)
    torch.manual_seed(0)  # the same dropout masks in both forward passes below
    net_output = model(**sample["net_input"], return_cross_attn_queries=True)
    terms = criterion.modality_terms(model, net_output, sample)

    encoder_out = net_output[1]["encoder_out"]
    memory = encoder_out["encoder_out"][0]
    kinds = encoder_out["position_kinds"][0]
    assert (kinds == PositionKind.SOURCE).any(1).all() and (kinds == PositionKind.REGION).any(1).all()
    last = model.decoder.layers[-1]
    query = net_output[1]["cross_attn_queries"][-1]
    h_x = manual_attention(last.encoder_attn, query, memory, kinds == PositionKind.SOURCE)
    h_v = manual_attention(last.encoder_attn, query, memory, kinds == PositionKind.REGION)
    target = sample["target"].t()
    emb = model.decoder.embed_tokens.weight[target]
    lam = torch.sigmoid(emb @ criterion.gate.w_y + h_x @ criterion.gate.w_x + h_v @ criterion.gate.w_v)
    mask = target.ne(task.target_dictionary.pad())
    cos = (h_x * h_v).sum(-1) / (h_x.norm(dim=-1) * h_v.norm(dim=-1))
    loss = ((lam * (1 - cos)) * mask).sum()

    layer = terms["layers"][0]
    torch.testing.assert_close(layer["h_x"], h_x, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer["h_v"], h_v, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer["lambda"], lam * mask, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(terms["loss"], loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(terms["cos_sum"], (cos * mask).sum(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(h_x, h_v)  # two different attentions
    assert 0 < terms["loss"].item() < mask.sum().item()

    # the training loss is label-smoothed cross entropy plus L_M
    torch.manual_seed(0)
    loss_total, _, log = criterion(model, sample)
    xent, _ = criterion.compute_loss(model, net_output, sample)
    torch.testing.assert_close(loss_total, xent + loss, atol=1e-3, rtol=1e-4)
    assert math.isclose(float(log["modality_loss"]), float(loss), rel_tol=1e-4)
    with metrics.aggregate() as logged:  # what fairseq-train logs: per-token means
        criterion.reduce_metrics([log])
    values = logged.get_smoothed_values()
    assert values["modality_cos"] == pytest.approx(float((cos * mask).sum() / mask.sum()), abs=1e-4)
    assert values["lambda"] == pytest.approx(float((lam * mask).sum() / mask.sum()), abs=1e-4)


@pytest.mark.slow
def test_modality_variants(toy_data, toy_corpus, tiny_bert_dir):
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir, "--modality-loss", "all",
                                   "--modality-lambda", "0.4", "--modality-tags", "v")
    model.train()
    sample = first_batch(task)
    terms = criterion.modality_terms(model, model(**sample["net_input"], return_cross_attn_queries=True), sample)
    assert len(terms["layers"]) == len(model.decoder.layers) == 2
    valid = terms["valid"]
    for layer in terms["layers"]:
        assert torch.all(layer["lambda"][valid] == 0.4)
    assert criterion.gate is None and TAG_IN_V(criterion)
    _, _, off = build(toy_data, toy_corpus, tiny_bert_dir, "--modality-loss", "off")
    loss, _, log = off(model, sample)
    assert "modality_loss" not in log


def TAG_IN_V(criterion):
    return PositionKind.TAG in criterion.v_kinds and PositionKind.TAG not in criterion.x_kinds


def grads_after_step(model, criterion, sample):
    model.train()
    model.zero_grad()
    criterion.zero_grad()
    loss, _, _ = criterion(model, sample)
    loss.backward()
    def has(params):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    return {
        "bert": has(model.encoder.bert.parameters()),
        "visual": has(model.encoder.visual.parameters()),
        "projection": has(model.encoder.output_projection.parameters()),
        "decoder": has(model.decoder.parameters()),
        "w_y": has([criterion.gate.w_y]), "w_x": has([criterion.gate.w_x]), "w_v": has([criterion.gate.w_v]),
    }


@pytest.mark.slow
def test_stage1_freezes_bert_and_stage2_trains_it(toy_data, toy_corpus, tiny_bert_dir):
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir, "--freeze-bert")
    sample = first_batch(task)
    stage1 = grads_after_step(model, criterion, sample)
    assert stage1 == {"bert": False, "visual": True, "projection": True, "decoder": True,
                      "w_y": True, "w_x": True, "w_v": True}
    assert not any(p.requires_grad for p in model.encoder.bert.parameters())
    assert not model.encoder.bert.training  # frozen BERT runs without dropout
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir)
    stage2 = grads_after_step(model, criterion, sample)
    assert all(stage2.values()), stage2


@pytest.mark.slow
def test_incremental_beam_search_equals_full_recompute(toy_data, toy_corpus, tiny_bert_dir):
    task, model, _ = build(toy_data, toy_corpus, tiny_bert_dir)
    model.eval()
    make_outputs_peaked(model)
    sample = first_batch(task, size=4)
    calls = {"encoder": 0}
    encoder_forward = model.encoder.forward

    def counted_forward(*args, **kwargs):  # fairseq calls encoder.forward directly, not through hooks
        calls["encoder"] += 1
        return encoder_forward(*args, **kwargs)

    model.encoder.forward = counted_forward
    assert_beam_search_matches_full_recompute(model, sample, task.target_dictionary,
                                              [layer.encoder_attn.k_proj for layer in model.decoder.layers])
    assert calls["encoder"] == 2  # once per generate call (incremental, then full), not once per step


@pytest.mark.slow
def test_beam_setting_does_not_leak_into_other_decoding(toy_data, toy_corpus, tiny_bert_dir):
    """After a beam-2 generator, greedy search (4 distinct rows, divisible by 2) and the training loss
    are what they were before: the per-sentence projection only applies to rows that are copies."""
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir)
    model.eval()
    make_outputs_peaked(model)
    sample = first_batch(task, size=4)
    tgt = task.target_dictionary
    with torch.no_grad():
        greedy_before = SequenceGenerator([model], tgt, beam_size=1, max_len_b=12).generate([model], sample)
        loss_before = criterion(model, sample)[0]
        SequenceGenerator([model], tgt, beam_size=2, max_len_b=12).generate([model], sample)
        greedy_after = SequenceGenerator([model], tgt, beam_size=1, max_len_b=12).generate([model], sample)
        loss_after = criterion(model, sample)[0]
    for a, b in zip(greedy_before, greedy_after):
        assert torch.equal(a[0]["tokens"], b[0]["tokens"])
        torch.testing.assert_close(a[0]["positional_scores"], b[0]["positional_scores"])
    torch.testing.assert_close(loss_before, loss_after)
