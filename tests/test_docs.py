"""The documentation site's sources: complete, generated where they can be, and runnable.

``make docs`` (part of ``make test``) builds the site strictly (a broken link or a missing
reference fails); these tests cover what a build cannot see: a public module left out of the API
reference, the CLI reference's generator, the docstring derivations kept as written, and the
examples on the pages actually running.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from funcbp.cli import build_parser
from funcbp.ops.linear import linear_bwd

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"funcbp_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _public_modules() -> list[str]:
    """Every module of the package whose dotted path has no ``_``-prefixed part."""
    out = []
    for path in sorted((ROOT / "funcbp").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts):
            out.append(".".join(parts))
    return out


def test_every_public_module_is_in_the_api_reference():
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), re.M))
    missing = [m for m in _public_modules() if m not in documented]
    assert not missing, f"add to docs/api/*.md: {missing}"


def test_cli_reference_lists_every_subcommand_and_option():
    parser = build_parser()
    text = _load("hooks").cli_reference(parser)
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        assert f"## `funcbp {name}`" in text
        for action in command._actions:
            for flag in action.option_strings:
                assert flag in ("-h", "--help") or f"`{flag}`" in text, (name, flag)


def test_derivations_keep_their_lines():
    fence = _load("derivations").fence_derivations
    bwd = fence(inspect.cleandoc(linear_bwd.__doc__))
    block = bwd.split("```text\n", 1)[1].split("```", 1)[0]
    assert "∂L/∂W_ij = Σ_n X_ni dY_nj" in block and "∂L/∂b_j" in block
    untouched = "Attributes:\n  name: the key.\n\n* a list item\n  its continuation:\n  more"
    assert fence(untouched) == untouched
    table = fence("Text.\n\n====  ====\na     b\n====  ====\n\nAfter the table.")
    assert "```text\n====  ====\na     b\n====  ====\n```" in table
    assert table.endswith("\n\nAfter the table.")


@pytest.mark.slow
def test_the_worked_op_runs():
    """docs/examples/softplus.py (included by the hand-VJP page) as a script: it registers
    ``softplus`` in its own process and puts it through the registry's checks."""
    out = subprocess.run(
        [sys.executable, str(DOCS / "examples" / "softplus.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0 and not out.stderr, out.stderr[-3000:]
    assert "0 missed" in out.stdout


@pytest.mark.slow
def test_the_pages_python_blocks_run():
    """Every Python block of the guide pages, in page order, in one fresh process."""
    blocks = [
        block
        for page in ("getting-started.md", "engine.md", "training.md", "checking.md")
        for block in re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
    ]
    assert len(blocks) >= 2
    script = "\n".join(f"exec(compile({b!r}, 'docs', 'exec'), {{}})" for b in blocks)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and not out.stderr, out.stderr[-3000:]
