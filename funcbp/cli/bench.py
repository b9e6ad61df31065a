"""``funcbp bench``: the benchmark suite (``benchmarks/``) from the command line.

The suite lives in the repository's ``benchmarks/`` folder, beside the package, not inside it
(it imports PyTorch and NumPy peers and writes reports); this module finds it and runs
``benchmarks.suite``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys

__all__ = ["add_bench_arguments", "run_bench"]


def _suite():
    """``benchmarks.suite``, importing it from the checkout that holds this package if needed."""
    try:
        return importlib.import_module("benchmarks.suite")
    except ModuleNotFoundError as e:
        if e.name not in ("benchmarks", "benchmarks.suite"):
            raise
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(root, "benchmarks", "suite.py")):
        return None
    sys.path.insert(0, root)
    return importlib.import_module("benchmarks.suite")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options (``--quick``, ``--repeats``, ``--models``, ``--skip``, ``--out``,
    ``--wait-load`` ...), added to ``parser``."""
    suite = _suite()
    if suite is None:
        parser.set_defaults(_bench_missing=True)
        return
    suite.add_arguments(parser)


def run_bench(args: argparse.Namespace) -> int:
    """Run the suite; print its Markdown report; exit status 0, or 2 for bad arguments."""
    suite = _suite()
    if suite is None or getattr(args, "_bench_missing", False):
        print(
            "funcbp bench: the benchmark suite (benchmarks/suite.py) is not beside this "
            "installation of funcbp; run it from a checkout of the repository",
            file=sys.stderr,
        )
        return 2
    command = "funcbp bench " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None
    return suite.run(args, command=command)
