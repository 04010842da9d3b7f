"""The argument parser of a console script whose module docstring is its help."""
import argparse


def documented_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser for ``prog``: the first paragraph of ``doc`` describes it, the rest follows the options."""
    summary, _, details = doc.partition("\n\n")
    return argparse.ArgumentParser(prog=prog, description=summary, epilog=details or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
