"""Registers the tasks."""
from vlp_mmt_fairseq.tasks import bert_fused_translation, vlp_mmt, vlp_pretrain  # noqa: F401
