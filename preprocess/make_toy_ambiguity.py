#!/usr/bin/env python3
"""Kept for existing commands: the console script ``vlp-mmt-make-toy-ambiguity``."""
from vlp_mmt_fairseq.cli.make_toy_ambiguity import cli_main

if __name__ == "__main__":
    cli_main()
