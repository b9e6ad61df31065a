"""Notebook 07 (forward mode by hand) runs top to bottom as a plain script; its asserts hold.

The notebook is a jupytext percent-format script, so it is executed here with this interpreter,
in a subprocess from the repository root (as ``python notebooks/07_forward_mode_by_hand.py``):
a wrong formula fails one of its ``assert``s, and anything written to stderr fails the test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "notebooks" / "07_forward_mode_by_hand.py"


@pytest.mark.slow
def test_notebook_07_runs_and_its_asserts_hold():
    run = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stderr == "", run.stderr[-4000:]
    assert "forward-mode rules vs autodiff" in run.stdout
