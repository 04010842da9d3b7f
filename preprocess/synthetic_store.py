#!/usr/bin/env python3
"""Kept for existing commands: the console script ``vlp-mmt-synthetic-store``."""
from vlp_mmt_fairseq.cli.synthetic_store import cli_main

if __name__ == "__main__":
    cli_main()
