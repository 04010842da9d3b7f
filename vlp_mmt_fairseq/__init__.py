"""vlp_mmt_fairseq: a fairseq plugin for multimodal machine translation with a vision-language BERT.

``--user-dir`` imports this package after fairseq; that import registers the tasks, models and
criterions. Tools that need only the feature store, the converters or the scorers import their
modules without fairseq being loaded, and then skip the (slow) registration.
"""
import sys

if "fairseq" in sys.modules:
    from vlp_mmt_fairseq import compat

    compat.register_safe_checkpoint_globals()
    compat.show_plugin_options_in_help()
    compat.make_checkpoints_crash_safe()
    compat.allow_bf16_without_tpu()

    from vlp_mmt_fairseq import criterions, models, tasks  # noqa: E402,F401  (registration)
