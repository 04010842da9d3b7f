"""Registers the models and their architectures."""
from vlp_mmt_fairseq.models import vlp_mmt  # noqa: F401
from vlp_mmt_fairseq.models import vlp_pretrain  # noqa: F401
from vlp_mmt_fairseq.models import bert_fused  # noqa: F401
