"""Beam search checks shared by the model tests: incremental decoding against a full recompute."""
import torch
from fairseq.models import FairseqDecoder, FairseqEncoderDecoderModel
from fairseq.sequence_generator import SequenceGenerator


class FullRecomputeDecoder(FairseqDecoder):
    """The same decoder without incremental state: every step recomputes the whole prefix."""

    def __init__(self, decoder):
        super().__init__(decoder.dictionary)
        self.inner = decoder

    def forward(self, prev_output_tokens, encoder_out=None, **kwargs):
        return self.inner(prev_output_tokens, encoder_out=encoder_out)

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return self.inner.get_normalized_probs(net_output, log_probs, sample)

    def max_positions(self):
        return self.inner.max_positions()


def full_recompute_model(model):
    return FairseqEncoderDecoderModel(model.encoder, FullRecomputeDecoder(model.decoder))


def make_outputs_peaked(model, factor=3.0):
    """Random but peaked decoder outputs, so that the hypotheses of a beam differ."""
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(factor)


def assert_beam_search_matches_full_recompute(model, sample, tgt_dict, key_projections, beam=5):
    """Incremental beam search gives the full recompute's hypotheses and scores, and each module in
    ``key_projections`` (a cross-attention's k_proj) projects one row per sentence, not per hypothesis."""
    rows = []
    hooks = [proj.register_forward_hook(lambda module, args, out: rows.append(out.size(1)))
             for proj in key_projections]
    sentences = sample["net_input"]["src_tokens"].size(0)
    incremental = SequenceGenerator([model], tgt_dict, beam_size=beam, max_len_b=12)
    full = SequenceGenerator([full_recompute_model(model)], tgt_dict, beam_size=beam, max_len_b=12)
    assert incremental.model.has_incremental_states() and not full.model.has_incremental_states()
    try:
        with torch.no_grad():
            hyps_inc = incremental.generate([model], sample)
            # keys and values projected once per sentence and cross-attention, not per hypothesis or step
            assert rows == [sentences] * len(key_projections)
            hyps_full = full.generate([model], sample)
            assert all(r == sentences * beam for r in rows[len(key_projections):])
    finally:
        for hook in hooks:
            hook.remove()
    for a, b in zip(hyps_inc, hyps_full):
        assert len(a) == len(b) == beam
        for x, y in zip(a, b):
            assert torch.equal(x["tokens"], y["tokens"])
            torch.testing.assert_close(x["score"], y["score"], atol=1e-4, rtol=1e-4)
