#!/usr/bin/env python3
"""Kept for existing commands: the console script ``vlp-mmt-prepare-multi30k``."""
from vlp_mmt_fairseq.cli.prepare_multi30k import cli_main

if __name__ == "__main__":
    cli_main()
