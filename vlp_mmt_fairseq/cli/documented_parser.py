"""What the console scripts share: an argument parser whose help is the module docstring, and quiet logging."""
import argparse
import logging


def documented_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser for ``prog``: the first paragraph of ``doc`` describes it, the rest follows the options."""
    summary, _, details = doc.partition("\n\n")
    return argparse.ArgumentParser(prog=prog, description=summary, epilog=details or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def quiet_logging() -> None:
    """Only warnings and errors from the root logger: importing fairseq (with the plugin) sets it to DEBUG."""
    logging.getLogger().setLevel(logging.WARNING)
