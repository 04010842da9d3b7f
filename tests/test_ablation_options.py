"""The options the ablation of issue 14 varies: each changes what it should; the defaults are the row it chose.

--no-regions, --region-embedding, --decoder-memory, --region-fusion, --train-visual-projection; in process, on the
toy data with a tiny random BERT (as tests/test_vlp_mmt_model.py).
"""
from pathlib import Path

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from test_vlp_mmt_model import PAPER  # the paper's model, which most of these options modify
from vlp_mmt_fairseq.evaluation.attention_mass import CrossAttentionRecorder, attention_mass
from vlp_mmt_fairseq.modules.frozen_encoder_cache import FrozenEncoderCache, FrozenEncoderCacheError
from vlp_mmt_fairseq.modules.text_packing import PositionKind

REPO_ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(toy_data, toy_corpus, tiny_bert_dir, *extra, criterion=True, paper=True):
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(toy_data / "bert"), "--user-dir", str(REPO_ROOT / "vlp_mmt_fairseq"), "--task", "vlp_mmt",
        "--arch", "vlp_mmt_tiny", "--criterion", "vlp_mmt_loss", "--bert-model", str(tiny_bert_dir),
        "--image-features", str(toy_corpus / "features.h5"), "--label-smoothing", "0.1", "--dropout", "0",
        "--seed", "1", *(PAPER if paper else ()), *map(str, extra),
    ])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task.build_model(cfg.model)
    built = task.build_criterion(cfg.criterion) if criterion else None
    task.load_dataset("valid")
    return task, model, built


def batches(task, size=8, count=2):
    itr = task.get_batch_iterator(task.dataset("valid"), max_sentences=size, seed=1).next_epoch_itr(shuffle=False)
    return [sample for sample, _ in zip(itr, range(count))]


def encode(model, sample):
    model.eval()
    with torch.no_grad():
        return model.encoder(**sample["net_input"])


@pytest.mark.slow
def test_defaults_are_the_ablation_choice_and_the_alternatives_are_options(toy_data, toy_corpus, tiny_bert_dir,
                                                                           vlp_export):
    from fairseq.modules import MultiheadAttention

    from vlp_mmt_fairseq.modules.gated_cross_attention import GatedCrossAttention

    # the ablation's ffn_trained row: Eq. 1, one joint softmax, and FFN(v) from VLP training while BERT is frozen
    _, model, _ = build(toy_data, toy_corpus, tiny_bert_dir, "--freeze-bert", "--load-vlp", vlp_export, paper=False)
    encoder = model.encoder
    assert (encoder.region_fusion, encoder.region_embedding, encoder.decoder_memory) == ("bert", "none", "all")
    assert all(type(layer.encoder_attn) is MultiheadAttention for layer in model.decoder.layers)
    assert not any("region_type" in name for name, _ in model.named_parameters())
    assert all(p.requires_grad for p in encoder.visual.parameters()) and not encoder.visual_frozen
    assert not any(p.requires_grad for p in encoder.bert.parameters())
    _, explicit, _ = build(toy_data, toy_corpus, tiny_bert_dir, "--freeze-bert", "--load-vlp", vlp_export,
                           "--region-fusion", "bert", "--cross-attention", "joint", "--train-visual-projection",
                           "--region-embedding", "none", "--decoder-memory", "all", paper=False)
    assert explicit.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(explicit.state_dict()[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in explicit.encoder.visual.parameters())
    # the paper's stage 1 freezes FFN(v) with BERT; the regions can also go after BERT, behind a closed gate
    _, paper, _ = build(toy_data, toy_corpus, tiny_bert_dir, "--freeze-bert", "--load-vlp", vlp_export,
                        "--no-train-visual-projection", paper=False)
    assert paper.encoder.visual_frozen and not any(p.requires_grad for p in paper.encoder.visual.parameters())
    _, gated, _ = build(toy_data, toy_corpus, tiny_bert_dir, "--region-fusion", "decoder", "--cross-attention",
                        "gated", paper=False)
    assert gated.encoder.region_fusion == "decoder"
    assert all(type(layer.encoder_attn) is GatedCrossAttention for layer in gated.decoder.layers)
    assert {k for k in gated.state_dict() if k not in model.state_dict()} == \
        {f"decoder.layers.{i}.encoder_attn.gate" for i in range(len(model.decoder.layers))}


@pytest.mark.slow
def test_no_regions_gives_tags_only(toy_data, toy_corpus, tiny_bert_dir):
    task, model, _ = build(toy_data, toy_corpus, tiny_bert_dir, "--no-regions", "--modality-loss", "off")
    assert model.encoder.visual is None  # no FFN(v) without regions
    for sample in batches(task):
        net_input = sample["net_input"]
        assert net_input["region_features"].size(1) == 0 and not net_input["region_mask"].any()
        assert net_input["tag_tokens"].ne(task.source_dictionary.pad()).any()
        kinds = encode(model, sample)["position_kinds"][0]
        assert not kinds.eq(PositionKind.REGION).any() and kinds.eq(PositionKind.TAG).any()
    with pytest.raises(ValueError, match="modality loss needs regions"):
        build(toy_data, toy_corpus, tiny_bert_dir, "--no-regions")
    # regions only (--no-tags, as before): regions, and no tag position
    task, model, _ = build(toy_data, toy_corpus, tiny_bert_dir, "--no-tags")
    kinds = encode(model, batches(task, count=1)[0])["position_kinds"][0]
    assert kinds.eq(PositionKind.REGION).any() and not kinds.eq(PositionKind.TAG).any()


@pytest.mark.slow
def test_decoder_memory_text_hides_the_regions_from_the_decoder(toy_data, toy_corpus, tiny_bert_dir):
    task, shown, _ = build(toy_data, toy_corpus, tiny_bert_dir, "--modality-loss", "off")
    _, hidden, _ = build(toy_data, toy_corpus, tiny_bert_dir, "--modality-loss", "off", "--decoder-memory", "text")
    hidden.load_state_dict(shown.state_dict())  # the same weights: only the decoder's key mask differs
    sample = batches(task, count=1)[0]
    out_shown, out_hidden = encode(shown, sample), encode(hidden, sample)
    kinds = out_hidden["position_kinds"][0]
    assert torch.equal(out_shown["encoder_out"][0], out_hidden["encoder_out"][0])  # BERT still reads the regions
    assert out_hidden["encoder_padding_mask"][0][kinds.eq(PositionKind.REGION)].all()
    assert not out_shown["encoder_padding_mask"][0][kinds.eq(PositionKind.REGION)].any()
    pad = task.target_dictionary.pad()
    mass_shown = attention_mass(shown, batches(task), pad)
    mass_hidden = attention_mass(hidden, batches(task), pad)
    for result in (mass_shown, mass_hidden):
        assert len(result["layers"]) == len(shown.decoder.layers)
        for layer in result["layers"]:
            assert sum(layer.values()) == pytest.approx(1.0, abs=1e-5) and layer["pad"] == 0
    assert all(layer["region"] > 0.01 for layer in mass_shown["layers"])
    assert all(layer["region"] == 0 for layer in mass_hidden["layers"])
    with pytest.raises(ValueError, match="--decoder-memory text"):
        build(toy_data, toy_corpus, tiny_bert_dir, "--decoder-memory", "text")  # the modality loss is on


@pytest.mark.slow
def test_recording_the_attention_changes_no_output(toy_data, toy_corpus, tiny_bert_dir):
    task, model, _ = build(toy_data, toy_corpus, tiny_bert_dir, "--modality-loss", "off")
    model.eval()
    sample = batches(task, count=1)[0]
    with torch.no_grad():
        plain = model(**sample["net_input"])[0]
        with CrossAttentionRecorder(model.decoder) as recorder:
            recorded = model(**sample["net_input"])[0]
    assert torch.equal(plain, recorded) and len(recorder.weights) == len(model.decoder.layers)
    assert all(layer.need_attn for layer in model.decoder.layers)  # restored as fairseq had it


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["segment", "position", "type"])
def test_region_embedding_is_added_before_the_layer_norm_of_ffn_v(toy_data, toy_corpus, tiny_bert_dir, mode):
    task, plain, _ = build(toy_data, toy_corpus, tiny_bert_dir)
    _, model, _ = build(toy_data, toy_corpus, tiny_bert_dir, "--region-embedding", mode)
    model.load_state_dict(plain.state_dict(), strict=mode != "type")
    encoder = model.encoder
    encoder.eval()
    net_input = batches(task, count=1)[0]["net_input"]
    with torch.no_grad():
        x, keep, kinds = encoder.embed(net_input["src_tokens"], net_input["tag_tokens"], net_input["region_features"],
                                       net_input["region_boxes"], net_input["region_mask"])
        x0, _, kinds0 = plain.encoder.eval().embed(net_input["src_tokens"], net_input["tag_tokens"],
                                                   net_input["region_features"], net_input["region_boxes"],
                                                   net_input["region_mask"])
        assert torch.equal(kinds, kinds0)
        text = ~kinds.eq(PositionKind.REGION) & keep
        regions = kinds.eq(PositionKind.REGION)
        assert torch.equal(x[text], x0[text]) and not torch.allclose(x[regions], x0[regions])
        visual, bert = encoder.visual, encoder.bert.embeddings
        boxes = net_input["region_boxes"]
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        ffn = visual.ffn(torch.cat([net_input["region_features"], boxes, area[..., None]], -1))  # B x R x H
        text_len = (kinds[:, : kinds.size(1) - ffn.size(1)] != PositionKind.PAD).sum(1)  # B
        if mode == "segment":
            e = bert.token_type_embeddings.weight[1]
        elif mode == "type":
            e = encoder.region_type_embedding
        else:
            e = bert.position_embeddings(text_len[:, None] + torch.arange(ffn.size(1)))
        expected = visual.layer_norm(ffn + e)
        assert torch.allclose(x[:, -ffn.size(1):][net_input["region_mask"]], expected[net_input["region_mask"]],
                              atol=1e-5)


@pytest.mark.slow
def test_region_type_embedding_trains_and_refuses_the_cache(toy_data, toy_corpus, tiny_bert_dir, vlp_export):
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir, "--region-embedding", "type",
                                   "--freeze-bert", "--load-vlp", vlp_export, "--no-train-visual-projection",
                                   "--modality-loss", "off")
    embedding = model.encoder.region_type_embedding
    assert embedding.requires_grad and any(p is embedding for p in model.parameters())
    assert not any(p.requires_grad for p in model.encoder.visual.parameters())  # FFN(v) from VLP: frozen
    model.train()
    loss, _, _ = criterion(model, batches(task, count=1)[0])
    loss.backward()
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0
    with pytest.raises(FrozenEncoderCacheError, match="region-embedding type"):
        FrozenEncoderCache.check(model.encoder, has_regions=True)
    _, plain, _ = build(toy_data, toy_corpus, tiny_bert_dir, "--freeze-bert", "--load-vlp", vlp_export,
                        "--no-train-visual-projection")
    FrozenEncoderCache.check(plain.encoder, has_regions=True)  # the paper's stage 1 from VLP: cacheable


@pytest.mark.slow
def test_train_visual_projection_keeps_ffn_v_training(toy_data, toy_corpus, tiny_bert_dir, vlp_export):
    _, frozen, _ = build(toy_data, toy_corpus, tiny_bert_dir, "--freeze-bert", "--load-vlp", vlp_export,
                         "--no-train-visual-projection")
    assert not any(p.requires_grad for p in frozen.encoder.visual.parameters())  # the paper's stage 1
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir, "--freeze-bert", "--load-vlp", vlp_export)
    visual = model.encoder.visual
    assert all(p.requires_grad for p in visual.parameters())
    assert not any(p.requires_grad for p in model.encoder.bert.parameters())
    assert torch.equal(visual.ffn[0].weight, frozen.encoder.visual.ffn[0].weight)  # still loaded from VLP
    model.train()
    loss, _, _ = criterion(model, batches(task, count=1)[0])
    loss.backward()
    assert visual.ffn[0].weight.grad.abs().sum() > 0
    with pytest.raises(FrozenEncoderCacheError, match="FFN\\(v\\) trains"):
        FrozenEncoderCache.check(model.encoder, has_regions=True)


@pytest.mark.slow
def test_validation_bleu_counts_batches_with_empty_hypotheses(toy_data, toy_corpus, tiny_bert_dir):
    """--best-checkpoint-metric bleu needs a value even when an untrained model's hypotheses are all empty, and a
    validation batch without hypotheses must neither crash the next one nor hide its BLEU (the trainer reduces
    every batch on its own). The fix wraps fairseq's TranslationTask, so its translation task has it too."""
    import sacrebleu
    from fairseq.logging import metrics
    from fairseq.tasks.translation import TranslationTask

    task, _, criterion = build(toy_data, toy_corpus, tiny_bert_dir, "--modality-loss", "off", "--eval-bleu")
    assert type(task).reduce_metrics is TranslationTask.reduce_metrics  # the patched method, not an override

    def batch(hypothesis: str, reference: str) -> dict:
        stats = sacrebleu.corpus_bleu([hypothesis], [[reference]])
        return {"loss": 1.0, "nll_loss": 1.0, "ntokens": 10, "nsentences": 1, "sample_size": 10,
                "_bleu_sys_len": stats.sys_len, "_bleu_ref_len": stats.ref_len,
                **{f"_bleu_counts_{i}": stats.counts[i] for i in range(4)},
                **{f"_bleu_totals_{i}": stats.totals[i] for i in range(4)}}

    def validate(*batches) -> dict:
        with metrics.aggregate(new_root=True) as agg:
            for logs in batches:
                task.reduce_metrics([logs], criterion)
        return agg.get_smoothed_values()

    hypothesis, reference = "ein Mann fährt mit dem Fahrrad die Straße entlang", \
        "ein Mann fährt mit seinem Fahrrad eine Straße entlang"
    empty_reference = "zwei Hunde spielen im Schnee"
    expected = sacrebleu.corpus_bleu([hypothesis, ""], [[reference, empty_reference]]).score
    assert validate(batch("", empty_reference))["bleu"] == 0  # nothing translated yet: 0, not a KeyError
    for order in ((batch("", empty_reference), batch(hypothesis, reference)),
                  (batch(hypothesis, reference), batch("", empty_reference))):
        assert validate(*order)["bleu"] == pytest.approx(expected, abs=0.01)  # the empty batch's length counts
    with metrics.aggregate(new_root=True) as agg:  # training: no BLEU
        task.reduce_metrics([{k: v for k, v in batch("", "x").items() if not k.startswith("_bleu")}], criterion)
    assert "bleu" not in agg.get_smoothed_values()


@pytest.mark.slow
def test_region_fusion_decoder_keeps_the_regions_out_of_bert(toy_data, toy_corpus, tiny_bert_dir, vlp_export):
    flags = ("--freeze-bert", "--load-vlp", vlp_export, "--modality-loss", "off")
    task, model, criterion = build(toy_data, toy_corpus, tiny_bert_dir, *flags, "--region-fusion", "decoder")
    _, joint, _ = build(toy_data, toy_corpus, tiny_bert_dir, *flags)
    encoder = model.encoder
    assert all(p.requires_grad for p in encoder.visual.parameters())  # FFN(v) trains after the frozen BERT
    assert torch.equal(encoder.visual.ffn[0].weight, joint.encoder.visual.ffn[0].weight)  # loaded from VLP
    sample = batches(task, count=1)[0]
    net_input = sample["net_input"]
    regions = (net_input["region_features"], net_input["region_boxes"], net_input["region_mask"])
    encoder.eval(), joint.encoder.eval()
    with torch.no_grad():
        hidden, keep, kinds = encoder.forward_bert(net_input["src_tokens"], net_input["tag_tokens"], *regions)
        text_alone, text_keep, _ = encoder.forward_bert(net_input["src_tokens"], net_input["tag_tokens"])
        joint_hidden, _, joint_kinds = joint.encoder.forward_bert(net_input["src_tokens"], net_input["tag_tokens"],
                                                                  *regions)
        visual = encoder.visual(net_input["region_features"], net_input["region_boxes"])  # B x R x H
    length = text_alone.size(1)
    assert torch.equal(kinds, joint_kinds) and kinds[:, length:].eq(PositionKind.REGION).any()
    text = text_keep.unsqueeze(-1)
    assert torch.equal(hidden[:, :length] * text, text_alone * text)  # the regions leave the text states alone
    assert not torch.allclose(joint_hidden[:, :length] * text, text_alone * text, atol=1e-4)  # Eq. 1: they do not
    shown = net_input["region_mask"]
    assert torch.allclose(hidden[:, length:][shown], visual[shown], atol=1e-6)  # FFN(v) itself, after BERT
    # stage 1 with the frozen-encoder cache: BERT's text states are cached, FFN(v) still trains
    encoder.cache = FrozenEncoderCache(mem_mb=16)
    model.train()
    losses = []
    for _ in range(2):
        torch.manual_seed(3)
        model.zero_grad()
        loss, _, _ = criterion(model, sample)
        loss.backward()
        losses.append(loss.item())
    assert encoder.cache.misses == sample["nsentences"] and encoder.cache.hits == sample["nsentences"]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert encoder.visual.ffn[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.bert.parameters())
