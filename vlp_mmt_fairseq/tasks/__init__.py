"""Registers the tasks."""
from vlp_mmt_fairseq.tasks import vlp_mmt  # noqa: F401
