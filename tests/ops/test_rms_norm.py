"""rms_norm: the hand VJP/JVP at fixed edge shapes (D = 1, large ε), the FlashAttention rule in
float32 and bfloat16, agreement with a NumPy Hugging Face-style RMSNorm, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import check, ops
from funcbp.ops.rms_norm import rms_norm_bwd, rms_norm_fwd
from tests.helpers import precision_rule_errors

EXACT = 1e-12


@pytest.mark.parametrize(("shape", "eps"), [((1,), 0.1), ((3, 1), 0.5), ((2, 3, 5), 1e-6)])
def test_hand_equals_autodiff_float64_edge_shapes(shape, eps, key):
    kx, kg, ku = jax.random.split(key, 3)
    x = 2 * jax.random.normal(kx, shape, jnp.float64) + 0.3
    gamma = jax.random.normal(kg, shape[-1:], jnp.float64)
    u = jax.random.normal(ku, shape, jnp.float64)
    loss = lambda fn: lambda x, g: jnp.vdot(fn(x, g, eps=eps), u)
    hand = jax.grad(loss(ops.rms_norm), (0, 1))(x, gamma)
    auto = jax.grad(loss(ops.rms_norm.autodiff), (0, 1))(x, gamma)
    explicit = rms_norm_bwd(rms_norm_fwd(x, gamma, eps)[1], u, eps)
    for got in (hand, explicit):
        assert check.compare(got, auto, tol=EXACT).ok
    t = jax.jvp(lambda x, g: ops.rms_norm.forward_mode(x, g, eps=eps), (x, gamma), (u, gamma))
    want = jax.jvp(lambda x, g: ops.rms_norm.autodiff(x, g, eps=eps), (x, gamma), (u, gamma))
    assert check.compare(t, want, tol=EXACT).ok


def test_matches_a_numpy_llama_rmsnorm(key):
    """y = weight * x / sqrt(mean(x**2) + eps), as `LlamaRMSNorm` computes it (in NumPy)."""
    kx, kg = jax.random.split(key)
    x = np.asarray(jax.random.normal(kx, (2, 3, 8), jnp.float64))
    w = np.asarray(jax.random.normal(kg, (8,), jnp.float64))
    want = w * x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(ops.rms_norm(jnp.asarray(x), jnp.asarray(w)), want, rtol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_flashattention_rule_low_precision(dtype, key):
    """Against float64, the hand path's error (output, dx, dγ) is at most 2× that of jax.grad
    of the reference in the same dtype."""
    kx, kg = jax.random.split(key)
    x = 3 * jax.random.normal(kx, (4, 16, 64), jnp.float32)
    gamma = 1 + 0.1 * jax.random.normal(kg, (64,), jnp.float32)
    hand, auto = precision_rule_errors(ops.rms_norm, (x, gamma), jnp.dtype(dtype), key=key)
    print(f"rms_norm {dtype}: hand {hand:.2e} vs autodiff-{dtype} {auto:.2e}")
    assert hand <= 2 * auto, (hand, auto)


def test_cotangent_dtypes_follow_the_primals(key):
    x = jax.random.normal(key, (3, 4), jnp.bfloat16)
    grads = jax.grad(lambda x, g: jnp.sum(ops.rms_norm(x, g) * x), (0, 1))(x, jnp.ones(4, x.dtype))
    assert [(g.dtype, g.shape) for g in grads] == [(x.dtype, (3, 4)), (x.dtype, (4,))]


def test_bad_inputs():
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match=r"rms_norm: gamma must have shape \(4,\).*got shape"):
        ops.rms_norm(x, jnp.ones(3))
    with pytest.raises(TypeError, match="rms_norm: x must be a floating-point array"):
        ops.rms_norm(jnp.ones((2, 4), jnp.int32), jnp.ones(4))
    with pytest.raises(TypeError, match="rms_norm: arrays must share one dtype"):
        ops.rms_norm(x, jnp.ones(4, jnp.float32))
    with pytest.raises(ValueError, match="rms_norm: eps must be a finite number >= 0"):
        ops.rms_norm(x, jnp.ones(4), eps=-1.0)
    with pytest.raises(ValueError, match="rms_norm: x must have at least 1 dims"):
        ops.rms_norm(jnp.float64(1.0), jnp.ones(()))
