"""The bf16 policy in training: the data-parallel gradient reduction happens once per parameter,
in float32 (counted in the HLO of a sharded step: JAX #27496), and bf16 training learns."""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import optax
import pytest

from funcbp import nn
from funcbp.training import FitConfig, fit
from funcbp.training.precision import POLICIES, apply_policy, get_policy
from tests.helpers import toy_classification

ROOT = Path(__file__).resolve().parents[2]
HALF = {"bf16", "f16"}
EXTRA = {"mlp": 0, "cnn": 6, "gpt": 1}
"""Non-scalar all-reduces beyond one per parameter: the CNN's batch norm reduces statistics of
the sharded batch (mean and variance in the op's forward and again, in float32, for the running
statistics; two means in its backward: 6 of C = 4 values), the GPT's tied table is reduced once
per use (embedding and head)."""


@pytest.fixture(scope="module")
def hlo() -> dict:
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(ROOT)
    )
    r = subprocess.run(
        [sys.executable, "-m", "tests.scripts.precision_hlo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _sizes(operands) -> collections.Counter:
    return collections.Counter(math.prod(shape) for _, shape in operands if shape)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn", "gpt"])
def test_hand_gradients_are_all_reduced_once_per_param_in_float32(hlo, model):
    """8 data-parallel CPU devices, bf16 compute, float32 masters: every all-reduce of the hand
    path's step is float32 — right after the SPMD partitioner (what any backend would run) and
    in the compiled program — and each parameter's gradient is reduced once (by size; a
    reshaped conv kernel keeps its size). Autodiff of the same policy reduces its weight
    gradients in bfloat16 after partitioning (JAX #27496): the count sees half precision when
    it is there. (XLA's CPU backend later widens those to float32; a GPU keeps them.)"""
    assert hlo["devices"] == 8
    entry = hlo[model]
    params = _sizes(entry["params"])
    for where in ("partitioned", "compiled"):
        hand = entry["hand"][where]
        assert {dtype for dtype, _ in hand} == {"f32"}, (where, hand)
        reduced = _sizes(hand)
        assert all(reduced[size] >= n for size, n in params.items()), (where, reduced, params)
        assert sum(reduced.values()) == sum(params.values()) + EXTRA[model], (where, reduced)
    auto = entry["autodiff"]["partitioned"]
    assert sum(dtype == "bf16" for dtype, _ in auto) >= sum(params.values())


def test_policies():
    assert set(POLICIES) == {"f32", "bf16", "f16"}
    assert get_policy("bf16").compute_dtype == jnp.bfloat16
    assert get_policy("f16").loss_scale == 2.0**15 and get_policy("bf16").loss_scale is None
    model = nn.mlp([4, 2])
    assert apply_policy(model, "f32") is model
    with pytest.raises(ValueError, match="precision must be one of"):
        FitConfig(1, 8, precision="fp8")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_half_precision_training_matches_float32(precision):
    data = toy_classification(n_train=256, features=8)
    runs = {
        p: fit(nn.mlp([32, 3]), data, optax.adam(1e-2), FitConfig(5, 32, precision=p))
        for p in ("f32", precision)
    }
    f32, half = (runs[p].history for p in ("f32", precision))
    assert all(a.dtype == jnp.float32 for a in runs[precision].params[0].values())
    assert half["test_accuracy"][-1] >= f32["test_accuracy"][-1] - 0.03
    assert abs(half["train_loss"][-1] - f32["train_loss"][-1]) < 0.05
