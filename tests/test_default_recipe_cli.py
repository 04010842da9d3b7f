"""The default recipe, through the real CLIs: stage 1 from VLP with no fusion or freezing flag at all.

The defaults are the stage-1 ablation's best multimodal row (examples/ablations/README.md, ``ffn_trained``): the
regions inside BERT (Eq. 1, ``--region-fusion bert``), one softmax over text, tag and region positions
(``--cross-attention joint``), and FFN(v) from ``--load-vlp`` training while BERT is frozen
(``--train-visual-projection``), with the default modality loss. On the toy ambiguity corpus, where one word per
sentence has two senses that only the region features reveal, the run keeps BERT as it was, trains FFN(v), generates
with beam search, and gets most senses right with the real images and far fewer with shuffled ones.
"""
import pytest
import torch

from test_vlp_mmt_e2e import generate, train
from utils import cli_env
from vlp_mmt_fairseq.evaluation.ambiguity import sense_accuracy


@pytest.mark.slow
def test_the_default_recipe_trains_ffn_v_into_the_frozen_bert_and_reads_the_image(toy_data, toy_corpus,
                                                                                  tiny_bert_dir, vlp_export,
                                                                                  tmp_path):
    from transformers import BertModel

    from vlp_mmt_fairseq.compat import register_safe_checkpoint_globals

    one_thread = cli_env()  # the same numbers whatever the machine's core count (torch's default thread count)
    checkpoint = train(toy_data, toy_corpus, tiny_bert_dir, tmp_path / "stage1", "--freeze-bert", "--load-vlp",
                       vlp_export, "--lr", "5e-3", "--max-update", "300", env=one_thread)
    register_safe_checkpoint_globals()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model_args = state["cfg"]["model"]
    assert (model_args.region_fusion, model_args.cross_attention, model_args.region_embedding,
            model_args.decoder_memory, model_args.train_visual_projection) == ("bert", "joint", "none", "all", True)
    assert state["cfg"]["criterion"]["modality_loss"] == "last"
    assert not any(k.endswith("encoder_attn.gate") for k in state["model"])
    exported = torch.load(f"{vlp_export}/visual_projection.pt", map_location="cpu", weights_only=True)["state_dict"]
    moved = [k for k, v in exported.items() if not torch.equal(state["model"][f"encoder.visual.{k}"], v)]
    assert moved, "FFN(v) from VLP did not train"
    frozen = BertModel.from_pretrained(vlp_export, add_pooling_layer=False).state_dict()
    assert all(torch.equal(state["model"][f"encoder.bert.{k}"], v) for k, v in frozen.items())  # BERT as loaded
    senses = str(toy_corpus / "senses.tsv")
    real = sense_accuracy(generate(toy_data, toy_corpus, tiny_bert_dir, checkpoint, env=one_thread), senses)
    shuffled = sense_accuracy(generate(toy_data, toy_corpus, tiny_bert_dir, checkpoint, "--shuffle-images-seed", "1",
                                       env=one_thread), senses)
    print({"real": real, "shuffled": shuffled, "ffn_v_moved": moved})
    assert real >= 0.6 and real - shuffled >= 0.25, (real, shuffled)
