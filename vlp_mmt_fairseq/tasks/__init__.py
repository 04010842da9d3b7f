"""Registers the tasks."""
from vlp_mmt_fairseq.tasks import vlp_mmt  # noqa: F401
from vlp_mmt_fairseq.tasks import vlp_pretrain  # noqa: F401
from vlp_mmt_fairseq.tasks import bert_fused_translation  # noqa: F401
