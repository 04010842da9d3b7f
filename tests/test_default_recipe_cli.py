"""The default recipe, through the real CLIs: stage 1 with no fusion flag at all.

The defaults are the ones the stage-1 ablation supports (examples/ablations/README.md): the regions after BERT
(``--region-fusion decoder``), entering each decoder layer's cross-attention through a per-head gate that starts
closed (``--cross-attention gated``), and the default modality loss. On the toy ambiguity corpus, where one word
per sentence has two senses that only the region features reveal, the run (BERT frozen, its text states cached,
FFN(v) training after it) opens the gates, generates with beam search, and gets most senses right with the real
images and far fewer with shuffled ones.
"""
import pytest
import torch

from test_vlp_mmt_e2e import generate, train
from vlp_mmt_fairseq.evaluation.ambiguity import sense_accuracy


@pytest.mark.slow
def test_the_default_recipe_opens_the_gate_and_reads_the_image(toy_data, toy_corpus, tiny_bert_dir, tmp_path):
    from vlp_mmt_fairseq.compat import register_safe_checkpoint_globals

    checkpoint = train(toy_data, toy_corpus, tiny_bert_dir, tmp_path / "stage1", "--freeze-bert",
                       "--cache-frozen-encoder", "--lr", "5e-3", "--max-update", "200")
    register_safe_checkpoint_globals()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model_args = state["cfg"]["model"]
    assert (model_args.region_fusion, model_args.cross_attention, model_args.region_embedding,
            model_args.decoder_memory) == ("decoder", "gated", "none", "all")
    assert state["cfg"]["criterion"]["modality_loss"] == "last"
    gates = [torch.tanh(v).abs() for k, v in state["model"].items() if k.endswith("encoder_attn.gate")]
    assert len(gates) == 2 and max(float(g.max()) for g in gates) > 0.05  # the gates opened from 0
    senses = str(toy_corpus / "senses.tsv")
    real = sense_accuracy(generate(toy_data, toy_corpus, tiny_bert_dir, checkpoint), senses)
    shuffled = sense_accuracy(generate(toy_data, toy_corpus, tiny_bert_dir, checkpoint, "--shuffle-images-seed", "1"),
                              senses)
    print({"real": real, "shuffled": shuffled, "gates": [g.tolist() for g in gates]})
    assert real >= 0.6 and real - shuffled >= 0.25, (real, shuffled)
