"""Stage 1 with the regions after BERT (``--region-fusion decoder``), through the real CLIs.

On the toy ambiguity corpus, where one word per sentence has two senses that only the region features reveal:
BERT frozen with its text states cached while FFN(v) trains from scratch after it; the run trains, generates with
beam search, gets most senses right with the real images and far fewer with shuffled ones.
"""
import pytest
import torch

from test_vlp_mmt_e2e import generate, train
from vlp_mmt_fairseq.evaluation.ambiguity import sense_accuracy

FLAGS = ["--region-fusion", "decoder"]


@pytest.mark.slow
def test_stage1_with_regions_after_bert_reads_the_image(toy_data, toy_corpus, tiny_bert_dir, tmp_path):
    from vlp_mmt_fairseq.compat import register_safe_checkpoint_globals

    checkpoint = train(toy_data, toy_corpus, tiny_bert_dir, tmp_path / "stage1", "--freeze-bert",
                       "--cache-frozen-encoder", "--modality-loss", "off", "--lr", "3e-3", "--max-update", "300",
                       *FLAGS)
    register_safe_checkpoint_globals()
    model_args = torch.load(checkpoint, map_location="cpu", weights_only=True)["cfg"]["model"]
    assert (model_args.region_fusion, model_args.region_embedding, model_args.decoder_memory) == \
        ("decoder", "none", "all")
    senses = str(toy_corpus / "senses.tsv")
    real = sense_accuracy(generate(toy_data, toy_corpus, tiny_bert_dir, checkpoint), senses)
    shuffled = sense_accuracy(generate(toy_data, toy_corpus, tiny_bert_dir, checkpoint, "--shuffle-images-seed", "1"),
                              senses)
    print({"real": real, "shuffled": shuffled})
    assert real >= 0.6 and real - shuffled >= 0.25, (real, shuffled)
