"""The layers of the package hold: imports point down (the import-linter contract in
pyproject.toml, run by ``make lint``), and the contract does fail for an upward or cyclic
import planted in a copy of the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True, text=True, cwd=root, env={"PYTHONPATH": str(root)}, timeout=120,
    )  # fmt: skip


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(ROOT / "funcbp", tmp_path / "funcbp",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    return tmp_path


def test_the_package_keeps_its_contracts():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        ("ops/linear.py", "import funcbp.cli  # noqa", "Layers"),  # an op importing the CLI
        ("nn/core.py", "def f():\n    from funcbp.training import fit  # noqa", "Layers"),
        ("nn/init.py", "def f():\n    import funcbp.nn.layers  # noqa", "No import cycle"),
    ],
)
def test_a_planted_upward_or_cyclic_import_breaks_a_contract(copy, module, planted, broken):
    path = copy / "funcbp" / module
    path.write_text(path.read_text() + "\n\n" + planted + "\n")
    result = _lint(copy)
    assert result.returncode != 0
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout, result.stdout
