"""Registers the criterions."""
from vlp_mmt_fairseq.criterions import vlp_mmt_loss  # noqa: F401
