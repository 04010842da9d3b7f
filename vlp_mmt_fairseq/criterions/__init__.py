"""Registers the criterions."""
from vlp_mmt_fairseq.criterions import vlp_mmt_loss  # noqa: F401
from vlp_mmt_fairseq.criterions import vlp_pretrain_loss  # noqa: F401
