"""Command-line tools installed with the package (``vlp-mmt-score``, ``vlp-mmt-average-checkpoints``)."""
