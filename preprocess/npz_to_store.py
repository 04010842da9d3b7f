#!/usr/bin/env python3
"""Kept for existing commands: the console script ``vlp-mmt-npz-to-store``."""
from vlp_mmt_fairseq.cli.npz_to_store import cli_main

if __name__ == "__main__":
    cli_main()
