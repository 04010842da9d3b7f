"""Registers the criterions."""
from vlp_mmt_fairseq.criterions import vlp_mmt_loss, vlp_pretrain_loss  # noqa: F401
