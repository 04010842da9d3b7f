"""vlp_mmt_fairseq: a fairseq plugin for multimodal machine translation with a vision-language BERT.

Importing the package (``--user-dir vlp_mmt_fairseq``, or ``import vlp_mmt_fairseq``) registers its
tasks, models and criterions with fairseq and applies the compatibility fixes of ``compat``.
"""
from vlp_mmt_fairseq import compat

compat.apply()

from vlp_mmt_fairseq import criterions, models, tasks  # noqa: E402,F401  (registration)
