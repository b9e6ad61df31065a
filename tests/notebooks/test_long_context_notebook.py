"""``notebooks/08_long_context_by_hand.py`` runs top to bottom as a plain script (its ``assert``
cells compare the notebook's jnp derivations with funcbp, jax.grad and finite differences)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "08_long_context_by_hand.py"


@pytest.mark.slow
def test_long_context_notebook_runs_as_a_script():
    done = subprocess.run(
        [sys.executable, str(NOTEBOOK)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "chunked CE dw" in done.stdout and "grouped dk" in done.stdout
