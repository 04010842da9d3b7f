"""The modality loss's learnable lambda: its prior, the literal form's collapse, gradients, logging, precision."""
import csv
import math
import sys

import pytest
import torch
from fairseq.logging import metrics

from test_vlp_mmt_model import PAPER, build, first_batch
from utils import REPO_ROOT, fairseq_train, finish, logged, run_cli, start
from vlp_mmt_fairseq.criterions.vlp_mmt_loss import VlpMmtLossConfig


def gate_weights(criterion):
    return [criterion.gate.w_y, criterion.gate.w_x, criterion.gate.w_v]


@pytest.mark.slow
def test_prior_matches_hand_computation(toy_data, toy_corpus, tiny_bert_dir):
    """L_M = sum_j [lambda_j d_j + tau KL(Bern(lambda_j) || Bern(p0))], its gradient and its logs, by hand."""
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir, "--modality-prior-p0", "0.3",
                                   "--modality-prior-tau", "0.2")
    gate = criterion.gate
    assert gate.prior_p0 == 0.3 and gate.prior_tau == 0.2 and gate.detach_inputs
    with torch.no_grad():
        for w in gate_weights(criterion):
            w.normal_(0, 0.5)
    model.train()
    sample = first_batch(task)
    torch.manual_seed(0)  # the same dropout masks (BERT's) in both forward passes
    net_output = model(**sample["net_input"], return_cross_attn_queries=True)
    terms = criterion.modality_terms(model, net_output, sample)
    layer = terms["layers"][0]
    mask = terms["valid"]
    target = sample["target"].t()
    emb = model.decoder.embed_tokens.weight[target].detach()
    h_x, h_v = layer["h_x"].detach(), layer["h_v"].detach()
    z = emb @ gate.w_y.detach() + h_x @ gate.w_x.detach() + h_v @ gate.w_v.detach()
    lam = 1 / (1 + torch.exp(-z))
    d = 1 - (h_x * h_v).sum(-1) / (h_x.norm(dim=-1) * h_v.norm(dim=-1))
    p0, tau = 0.3, 0.2
    kl = lam * torch.log(lam / p0) + (1 - lam) * torch.log((1 - lam) / (1 - p0))
    hand = ((lam * d + tau * kl) * mask).sum()
    torch.testing.assert_close(terms["loss"], hand, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(terms["prior_sum"], (tau * kl * mask).sum(), atol=1e-4, rtol=1e-5)

    # d/dz_j [lambda d + tau KL] = lambda (1 - lambda) (d_j + tau (z_j - logit p0)); dz_j/dw = the gate's inputs
    g = (lam * (1 - lam) * (d + tau * (z - math.log(p0 / (1 - p0))))) * mask  # T x B
    by_hand = [torch.einsum("tb,tbc->c", g, x) for x in (emb, h_x, h_v)]
    grads = torch.autograd.grad(terms["loss"], gate_weights(criterion))
    for name, got, want in zip(("w_y", "w_x", "w_v"), grads, by_hand):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=f"gradient wrt {name}")

    # the logs: mean and std of lambda over tokens, and lambda for frequent and other target types
    torch.manual_seed(0)
    _, _, log = criterion(model, sample)
    with metrics.aggregate() as logged_values:
        criterion.reduce_metrics([log, log])  # two workers: sums combine
    values = logged_values.get_smoothed_values()
    kept, frequent = lam[mask], criterion.frequent_types[target][mask]
    assert values["lambda"] == pytest.approx(float(kept.mean()), abs=1e-4)
    assert values["lambda_std"] == pytest.approx(float(kept.std(unbiased=False)), abs=1e-3)
    assert values["lambda_frequent"] == pytest.approx(float(kept[frequent].mean()), abs=1e-4)
    assert values["lambda_other"] == pytest.approx(float(kept[~frequent].mean()), abs=1e-4)
    assert values["modality_prior"] == pytest.approx(float((tau * kl * mask).sum() / mask.sum()), abs=1e-4)


@pytest.mark.slow
def test_frequent_types_come_from_the_training_counts(toy_data, toy_corpus, tiny_bert_dir):
    """The 100 most frequent target types by count; this project's dictionaries are in SentencePiece's order."""
    task, _, criterion = build(toy_data, toy_corpus, tiny_bert_dir)
    dictionary = task.target_dictionary
    counts = torch.tensor(dictionary.count)
    frequent = criterion.frequent_types
    assert int(frequent.sum()) == 100 and not frequent[: dictionary.nspecial].any()
    assert counts[frequent].min() >= counts[~frequent][dictionary.nspecial:].max()
    by_index = torch.zeros_like(frequent)
    by_index[dictionary.nspecial: dictionary.nspecial + 100] = True
    sorted_by_count = bool((counts[dictionary.nspecial:-1] >= counts[dictionary.nspecial + 1:]).all())
    print(f"\ntarget dictionary sorted by count after the specials: {sorted_by_count}; "
          f"top-100 by count = first 100 by index: {bool(torch.equal(frequent, by_index))}")


@pytest.mark.slow
def test_gate_alone_reaches_the_closed_form(toy_data, toy_corpus, tiny_bert_dir):
    """Model frozen, only the gate trains, fewer target tokens than gate weights: every lambda_j goes to
    sigmoid(logit(p0) - d_j / tau), and L_M to its lower bound sum_j -tau log(1 - p0 + p0 exp(-d_j / tau))."""
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir)
    gate = criterion.gate
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    sample = first_batch(task, size=2)  # 2 sentences: their gate inputs are linearly independent and well apart
    net_output = model(**sample["net_input"], return_cross_attn_queries=True)
    n_weights = sum(w.numel() for w in gate_weights(criterion))
    terms = criterion.modality_terms(model, net_output, sample)
    d, mask = terms["layers"][0]["d"].detach(), terms["valid"]
    assert 0 < int(mask.sum()) < n_weights
    spread, centre = float(d[mask].std()), float(d[mask].mean())
    # the defaults, then a tau about the spread of d on this batch with p0 centring logit(p0) - d / tau on 0,
    # so that the closed form spreads lambda out (an untrained model's d is large: near 0.7 here)
    settings = [(0.5, gate.prior_tau), (1 / (1 + math.exp(-centre / spread)), spread)]
    for p0, tau in settings:
        gate.prior_p0, gate.prior_tau = p0, tau
        with torch.no_grad():
            for w in gate_weights(criterion):
                w.zero_()
        bound = gate.lower_bound(d)[mask].sum()
        at_start = criterion.modality_terms(model, net_output, sample)["loss"]
        assert at_start >= bound
        optimizer = torch.optim.LBFGS(gate_weights(criterion), max_iter=500, history_size=100, tolerance_grad=1e-10,
                                      tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def closure(optimizer=optimizer):
            optimizer.zero_grad()
            loss = criterion.modality_terms(model, net_output, sample)["loss"]
            loss.backward()
            return loss

        for _ in range(10):
            optimizer.step(closure)
        terms = criterion.modality_terms(model, net_output, sample)
        lam = terms["layers"][0]["lambda"][mask]
        target = gate.optimum(d)[mask]
        gap = (lam - target).abs().max().item()
        print(f"\n{int(mask.sum())} tokens, {n_weights} gate weights, p0 {p0:.6g}, tau {tau:.4f}: lambda* in "
              f"[{target.min():.3f}, {target.max():.3f}], max |lambda - lambda*| {gap:.2e}; "
              f"L_M - bound {float(at_start - bound):.4f} at the start, {float(terms['loss'] - bound):.2e} after")
        assert gap < 0.02
        assert terms["loss"] >= bound - 1e-4
    assert float(target.max() - target.min()) > 0.3  # the second closed form is far from a constant


@pytest.mark.slow
def test_lower_bound_on_a_real_batch(toy_data, toy_corpus, tiny_bert_dir):
    """With more tokens than gate weights the gate cannot fit each token: L_M stays above the bound."""
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir)
    gate = criterion.gate
    model.train()
    sample = first_batch(task, size=32)
    net_output = model(**sample["net_input"], return_cross_attn_queries=True)
    # an untrained model's d is near 0.7: with tau on that scale lambda* is not ~0 (trained gate: the slow test)
    d = criterion.modality_terms(model, net_output, sample)["layers"][0]["d"].detach()
    gate.prior_tau = float(d[d > 0].mean())
    optimizer = torch.optim.Adam(gate_weights(criterion), lr=0.05)
    gaps = []
    for step in range(101):
        terms = criterion.modality_terms(model, net_output, sample)
        d, mask = terms["layers"][0]["d"].detach(), terms["valid"]
        bound = gate.lower_bound(d)[mask].sum()
        gaps.append(float(terms["loss"] - bound))
        assert terms["loss"] >= bound, (step, gaps[-1])
        optimizer.zero_grad()
        terms["loss"].backward(retain_graph=True)
        optimizer.step()
    n = int(mask.sum())
    print(f"\n{n} tokens, tau {gate.prior_tau:.4f}: L_M - bound {gaps[0]:.4f} ({gaps[0] / n:.2e}/token) "
          f"at lambda = p0, {gaps[-1]:.4f} ({gaps[-1] / n:.2e}/token) after 100 gate steps")
    assert gaps[-1] < gaps[0]


@pytest.mark.slow
def test_checkpoint_activations_gives_the_same_modality_gradient(toy_data, toy_corpus, tiny_bert_dir):
    """--checkpoint-activations: the L_M gradient of every model parameter equals the one without it."""
    grads = {}
    for flags in ((), ("--checkpoint-activations",)):
        task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir, "--modality-loss", "all",
                                       "--modality-gate-inputs", "attached", *flags)
        assert hasattr(model.decoder.layers[0], "precheckpoint_forward") == bool(flags)
        with torch.no_grad():
            for w in gate_weights(criterion):
                w.normal_(0, 0.5)
        model.train()
        sample = first_batch(task)
        indices = criterion.modality_layer_indices(model)
        terms = criterion.modality_terms(model, model(**sample["net_input"], return_cross_attn_queries=indices),
                                         sample)
        model.zero_grad()
        terms["loss"].backward()
        grads[flags] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        if flags:
            # the query of a layer left checkpointed (here the last) carries no graph: the criterion refuses it
            captured = model(**sample["net_input"], return_cross_attn_queries=[0])
            assert captured[1]["cross_attn_queries"][0].requires_grad
            assert not captured[1]["cross_attn_queries"][1].requires_grad
            with pytest.raises(RuntimeError, match="without a graph"):
                criterion.modality_terms(model, captured, sample)
            # and the layers are checkpointed again afterwards
            assert all(layer.forward.func.__name__ == "_checkpointed_forward" for layer in model.decoder.layers)
    plain, checkpointed = grads[()], grads[("--checkpoint-activations",)]
    assert plain.keys() == checkpointed.keys()
    assert any("decoder.layers.0." in name for name in plain)  # L_M reaches the first layer too
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.slow
def test_terms_stay_finite_in_low_precision(toy_data, toy_corpus, tiny_bert_dir):
    """bf16 (CPU autocast, and the model cast to bf16 as --bf16 does): lambda, KL and L_M finite, in float32."""
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir)
    gate = criterion.gate
    extreme = torch.tensor([-1e4, -80.0, 0.0, 80.0, 1e4])
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        prior = gate.prior(extreme.to(dtype))
        assert prior.dtype == torch.float32 and torch.isfinite(prior).all(), (dtype, prior)
    assert torch.isfinite(gate.lower_bound(torch.tensor([0.0, 1.0, 2.0]))).all()
    model.train()
    sample = first_batch(task)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, log = criterion(model, sample)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(w.grad).all() for w in gate_weights(criterion))
    model.bfloat16()
    loss, _, log = criterion(model, sample)
    terms = criterion.modality_terms(model, model(**sample["net_input"], return_cross_attn_queries=True), sample)
    layer = terms["layers"][0]
    assert layer["h_x"].dtype == torch.bfloat16 and layer["lambda"].dtype == torch.float32
    assert all(torch.isfinite(layer[k]).all() for k in ("lambda", "prior", "d"))
    assert torch.isfinite(loss) and torch.isfinite(log["modality_loss"]) and torch.isfinite(log["modality_prior"])


@pytest.mark.slow
def test_literal_lambda_collapses_and_the_prior_keeps_it_on(toy_data, toy_corpus, tiny_bert_dir, tmp_path):
    """fairseq-train, a few hundred updates: the literal Eq. 5 drives the logged lambda below 0.05; with the prior it
    stays on, and inspect_lambda.py reads the checkpoint back: on every valid token lambda d + tau KL is at least its
    closed-form minimum."""
    common = [toy_data / "bert", "--user-dir", REPO_ROOT / "vlp_mmt_fairseq", "--task", "vlp_mmt",
              "--arch", "vlp_mmt_tiny", "--criterion", "vlp_mmt_loss", "--label-smoothing", "0.1",
              "--bert-model", tiny_bert_dir, "--image-features", toy_corpus / "features.h5", "--freeze-bert",
              "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "20",
              "--max-tokens", "400", "--max-update", "200", "--disable-validation", "--no-epoch-checkpoints",
              "--num-workers", "0", "--log-format", "json", "--log-interval", "20", "--seed", "1", "--cpu", *PAPER]
    runs = {"literal": ["--modality-gate", "literal", "--no-save"],
            "prior": ["--save-dir", tmp_path / "prior"]}
    processes = {name: start([fairseq_train(), *common, *extra], tmp_path / f"{name}.log")
                 for name, extra in runs.items()}
    records = {name: logged(finish(p, tmp_path / f"{name}.log"), "train_inner") for name, p in processes.items()}
    for name, rows in records.items():
        print(f"\n{name}: " + "; ".join(f"{r['num_updates']}: lambda {r['lambda']} (std {r['lambda_std']}), "
                                       f"cos {r['modality_cos']}" for r in rows[::2]))
    literal, prior = records["literal"], records["prior"]
    assert int(literal[-1]["num_updates"]) == 200
    assert float(literal[0]["lambda"]) > 0.25 and float(literal[-1]["lambda"]) < 0.05
    assert float(prior[-1]["lambda"]) > 0.1
    assert {"lambda_std", "lambda_frequent", "lambda_other", "modality_prior"} <= prior[-1].keys()

    run_cli([sys.executable, REPO_ROOT / "examples" / "modality_lambda" / "inspect_lambda.py",
             "--path", tmp_path / "prior" / "checkpoint_last.pt", "--data", toy_data / "bert", "--split", "valid",
             "--out", tmp_path / "inspect", "--summary-json", tmp_path / "inspect" / "summary.json"])
    for name in ("lambda_by_frequency.valid.png", "lambda_sentences.valid.png"):
        assert (tmp_path / "inspect" / name).read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "inspect" / "lambda.valid.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    p0, tau = VlpMmtLossConfig.modality_prior_p0, VlpMmtLossConfig.modality_prior_tau  # the defaults
    lam, d = (torch.tensor([float(r[k]) for r in rows], dtype=torch.float64) for k in ("lambda", "d"))
    star = torch.tensor([float(r["lambda_star"]) for r in rows], dtype=torch.float64)
    assert len(rows) > 1000 and {r["frequent"] for r in rows} == {"0", "1"}
    torch.testing.assert_close(star, torch.sigmoid(math.log(p0 / (1 - p0)) - d / tau), atol=1e-6, rtol=1e-5)
    kl = lam * torch.log(lam / p0) + (1 - lam) * torch.log((1 - lam) / (1 - p0))
    per_token = lam * d + tau * kl
    bound = -tau * torch.log(1 - p0 + p0 * torch.exp(-d / tau))
    gap = per_token - bound
    print(f"\ninspect_lambda on valid ({len(rows)} tokens): lambda {float(lam.mean()):.4f} (std "
          f"{float(lam.std()):.4f}), lambda* {float(star.mean()):.4f}; L_M - bound {float(gap.sum()):.4g} "
          f"({float(gap.mean()):.2e}/token, L_M {float(per_token.sum()):.4g})")
    assert (gap >= -1e-6).all()
