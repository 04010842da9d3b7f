"""Registers the models and their architectures."""
from vlp_mmt_fairseq.models import vlp_mmt  # noqa: F401
