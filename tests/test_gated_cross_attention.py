"""``--cross-attention gated``: the regions enter the decoder behind a per-head gate that starts closed."""
import pytest
import torch

from beam_search import assert_beam_search_matches_full_recompute, make_outputs_peaked
from test_vlp_mmt_model import build, first_batch, manual_attention
from vlp_mmt_fairseq.modules.gated_cross_attention import GatedCrossAttention

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GATED = ("--region-fusion", "decoder", "--cross-attention", "gated")


def random_inputs(seed=0, tgt_len=3, bsz=4, src_len=7, dim=16):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(tgt_len, bsz, dim, generator=g)  # T x B x C
    memory = torch.randn(src_len, bsz, dim, generator=g)  # S x B x C
    pad = torch.zeros(bsz, src_len, dtype=torch.bool)
    pad[0, -2:] = True  # B x S, True = padding
    gated = torch.zeros(bsz, src_len, dtype=torch.bool)
    gated[:, 3:5] = True
    gated[1] = False  # a sentence without regions
    return query, memory, pad, gated


def gated_by_hand(attn, query, memory, pad, gated):
    """out_proj(a_x + tanh(g_h) a_v) with each head's softmax over text and over regions written out."""
    tgt_len, bsz, dim = query.shape

    def heads(x):  # L x B x C -> B x H x L x d
        return x.view(x.size(0), bsz, attn.num_heads, attn.head_dim).permute(1, 2, 0, 3)

    q, k, v = heads(attn.q_proj(query) * attn.head_dim ** -0.5), heads(attn.k_proj(memory)), heads(attn.v_proj(memory))
    scores = q @ k.transpose(-1, -2)  # B x H x T x S
    out = torch.zeros_like(q)
    for b in range(bsz):
        sides = ((~pad[b] & ~gated[b], torch.ones(attn.num_heads)), (~pad[b] & gated[b], torch.tanh(attn.gate)))
        for side, weight in sides:
            if side.any():
                probs = torch.softmax(scores[b][..., side], dim=-1)  # H x T x S'
                out[b] += weight[:, None, None] * (probs @ v[b][:, side])
    return attn.out_proj(out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, dim))


def test_the_gate_mixes_two_attentions_from_one_query():
    torch.manual_seed(0)
    attn = GatedCrossAttention(16, 4).eval()
    query, memory, pad, gated = random_inputs()
    attn.gated_positions = gated
    closed, weights = attn(query, memory, memory, key_padding_mask=pad, static_kv=True)
    text = manual_attention(attn, query, memory, ~pad & ~gated)
    torch.testing.assert_close(closed, text)  # a closed gate: the text-only attention, exactly
    assert weights.shape == (4, 3, 7) and weights[~gated.unsqueeze(1).expand(-1, 3, -1)].sum() > 0
    assert weights.masked_fill(~gated.unsqueeze(1), 0).abs().sum() == 0  # no share for the regions yet
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 3))

    opened, _ = attn(query, memory, memory, key_padding_mask=pad, static_kv=True)
    opened.sum().backward()
    assert attn.gate.grad.abs().min() > 0  # every head's gate can open from 0
    with torch.no_grad():
        attn.gate.copy_(torch.tensor([0.5, -1.0, 0.0, 2.0]))
        mixed, _ = attn(query, memory, memory, key_padding_mask=pad, static_kv=True)
    torch.testing.assert_close(mixed, gated_by_hand(attn, query, memory, pad, gated), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_a_closed_gate_starts_from_the_text_only_model(toy_data, toy_corpus, tiny_bert_dir):
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir, *GATED, "--freeze-bert")
    assert all(isinstance(layer.encoder_attn, GatedCrossAttention) for layer in model.decoder.layers)
    sample = first_batch(task, size=4)
    net_input = sample["net_input"]
    shuffled = dict(net_input, region_features=net_input["region_features"].roll(1, dims=0))
    model.eval()
    with torch.no_grad():
        real, other = model(**net_input)[0], model(**shuffled)[0]
    torch.testing.assert_close(real, other)  # the regions change nothing while every gate is closed

    model.train()
    loss, _, logging_output = criterion(model, sample)  # the default modality loss reads h_x, h_v as before
    assert logging_output["modality_tokens"] > 0 and logging_output["cross_gate_sum"] == 0
    assert logging_output["modality_loss"] == 0  # L_M weighs each layer by its gate's opening: nothing yet
    loss.backward()
    assert all(layer.encoder_attn.gate.grad.abs().sum() > 0 for layer in model.decoder.layers)

    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.encoder_attn.gate.fill_(0.8)
    torch.manual_seed(0)  # the same dropout masks (FFN(v) keeps BERT's) for both criteria
    opened = criterion(model, sample)[2]
    assert opened["cross_gate_sum"] == pytest.approx(torch.tanh(torch.tensor(0.8)).item())
    # --modality-gate-opening none: the full L_M, of which the default takes the gate's share
    _, _, full_criterion = build(toy_data, toy_corpus, tiny_bert_dir, *GATED, "--freeze-bert",
                                 "--modality-gate-opening", "none")
    torch.manual_seed(0)
    full = full_criterion(model, sample)[2]
    assert float(opened["modality_loss"]) == pytest.approx(torch.tanh(torch.tensor(0.8)).item() *
                                                           float(full["modality_loss"]), rel=1e-5)
    assert float(full["modality_loss"]) > 0
    model.eval()
    with torch.no_grad():
        real, other = model(**net_input)[0], model(**shuffled)[0]
    assert not torch.allclose(real, other, atol=1e-4)  # an open gate lets the image in
    make_outputs_peaked(model)
    assert_beam_search_matches_full_recompute(model, sample, task.target_dictionary,
                                              [layer.encoder_attn.k_proj for layer in model.decoder.layers])
