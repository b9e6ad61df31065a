"""swiglu: silu(a) ⊙ b with a hand VJP/JVP; fixed float64 cases, the FlashAttention rule in
float32 and bfloat16, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import check, ops
from tests.helpers import precision_rule_errors


def test_is_silu_times_b_and_its_slope(key):
    ka, kb, ku = jax.random.split(key, 3)
    a = 4 * jax.random.normal(ka, (3, 7), jnp.float64)
    b, u = jax.random.normal(kb, (3, 7), jnp.float64), jax.random.normal(ku, (3, 7), jnp.float64)
    np.testing.assert_allclose(ops.swiglu(a, b), jax.nn.silu(a) * b, rtol=1e-14)
    da, db = jax.grad(lambda a, b: jnp.vdot(ops.swiglu(a, b), u), (0, 1))(a, b)
    s = 1 / (1 + np.exp(-np.asarray(a)))  # NumPy: silu' = σ + a σ (1 − σ)
    np.testing.assert_allclose(da, u * b * (s + a * s * (1 - s)), rtol=1e-12)
    np.testing.assert_allclose(db, u * a * s, rtol=1e-12)
    auto = jax.grad(lambda a, b: jnp.vdot(ops.swiglu.autodiff(a, b), u), (0, 1))(a, b)
    assert check.compare((da, db), auto, tol=1e-12).ok


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_flashattention_rule_low_precision(dtype, key):
    ka, kb = jax.random.split(key)
    a = 3 * jax.random.normal(ka, (8, 256), jnp.float32)
    b = jax.random.normal(kb, (8, 256), jnp.float32)
    hand, auto = precision_rule_errors(ops.swiglu, (a, b), jnp.dtype(dtype), key=key)
    print(f"swiglu {dtype}: hand {hand:.2e} vs autodiff-{dtype} {auto:.2e}")
    assert hand <= 2 * auto, (hand, auto)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"swiglu: a \(the gate\) and b .* one shape"):
        ops.swiglu(jnp.ones((2, 3)), jnp.ones((3,)))
    with pytest.raises(TypeError, match="swiglu: b must be a floating-point array"):
        ops.swiglu(jnp.ones(3), jnp.ones(3, jnp.int32))
    with pytest.raises(TypeError, match="swiglu: arrays must share one dtype"):
        ops.swiglu(jnp.ones(3), jnp.ones(3, jnp.float32))
