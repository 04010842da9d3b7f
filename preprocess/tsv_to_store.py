#!/usr/bin/env python3
"""Kept for existing commands: the console script ``vlp-mmt-tsv-to-store``."""
from vlp_mmt_fairseq.cli.tsv_to_store import cli_main

if __name__ == "__main__":
    cli_main()
