"""Registers the models and their architectures."""
from vlp_mmt_fairseq.models import bert_fused, vlp_mmt, vlp_pretrain  # noqa: F401
