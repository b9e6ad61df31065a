"""``notebooks/06_llama_block_by_hand.py`` runs top to bottom as a plain script (its asserts
compare the notebook's jnp derivations of RMSNorm, RoPE and SwiGLU with funcbp, jax.grad and
finite differences, and a whole tiny Llama's hand and explicit gradients with autodiff)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "06_llama_block_by_hand.py"


@pytest.mark.slow
def test_llama_notebook_runs_as_a_script():
    done = subprocess.run(
        [sys.executable, str(NOTEBOOK)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("rms_norm [(3, 5, 16)", "rope [(2, 3, 7, 8)", "swiglu [(4, 24)", "explicit vs"):
        assert line in done.stdout, done.stdout
