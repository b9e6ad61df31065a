"""The ``funcbp`` command line: the only place that parses arguments and prints."""

from funcbp.cli.main import build_parser as build_parser
from funcbp.cli.main import main as main

__all__ = ["build_parser", "main"]
