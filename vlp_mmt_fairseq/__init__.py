"""vlp_mmt_fairseq: a fairseq plugin for multimodal machine translation with a vision-language BERT.

Importing the package (``--user-dir``) registers its tasks, models and criterions.
"""
from vlp_mmt_fairseq import compat

compat.register_safe_checkpoint_globals()

from vlp_mmt_fairseq import criterions, models, tasks  # noqa: E402,F401  (registration)
