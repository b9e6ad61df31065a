"""Sharded training on 8 simulated CPU devices equals single-device training.

Runs in a subprocess: XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX
starts, and the rest of the suite keeps one device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from funcbp.training import distributed

ROOT = Path(__file__).resolve().parents[2]


def _run(dtype: str) -> dict:
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(ROOT)
    )
    r = subprocess.run(
        [sys.executable, "-m", "tests.scripts.sharded_training", dtype],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-4)])
def test_sharded_trajectories_equal_single_device(dtype, tol):
    out = _run(dtype)
    assert out["devices"] == 8 and out["steps"] == 24
    for name in ("data8", "data4_model2"):
        assert out[name]["max_abs"] <= tol * out[name]["scale"], (name, out[name])
    assert "P(None, 'model')" in out["data4_model2"]["specs"]  # weights really split
    assert out["data8"]["specs"] == ["P()"]  # replicated
    assert out["grad_max_abs"] <= tol
    assert "not divisible by the 8 devices" in out["indivisible_error"]


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="available"):
        distributed.make_mesh(10_000)
    with pytest.raises(ValueError, match="groups of"):
        distributed.make_mesh(1, model=2)


def test_single_device_mesh_runs_like_no_mesh():
    import jax
    import optax

    from funcbp import nn
    from funcbp.training import FitConfig, fit
    from tests.helpers import toy_classification, tree_max_abs_diff

    data = toy_classification()
    args = (optax.adam(1e-2), FitConfig(1, 16))
    a = fit(nn.mlp([8, 3]), data, *args)
    b = fit(nn.mlp([8, 3]), data, *args, mesh=distributed.make_mesh(1))
    assert tree_max_abs_diff(a.params, b.params) == 0.0
    assert len(jax.devices()) == 1
