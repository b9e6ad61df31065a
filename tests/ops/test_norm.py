"""layer_norm, batch_norm, batch_norm_inference: closed-form VJPs vs autodiff and FD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcbp import check
from funcbp.ops import REGISTRY
from funcbp.ops.norm import (
    batch_norm,
    batch_norm_fwd,
    batch_norm_inference,
    batch_norm_stats,
    layer_norm,
    layer_norm_fwd,
)

NAMES = ("layer_norm", "batch_norm", "batch_norm_inference")
seeds = st.integers(0, 2**31 - 1)
FEW = settings(max_examples=max(2, settings.default.max_examples // 2))
"""Expensive checks (three comparisons, several compiles per example): half the profile's."""


def _assert_ok(report):
    assert report.ok, str(report)


@pytest.mark.parametrize("name", NAMES)
@FEW
@given(seed=seeds)
def test_hand_matches_autodiff_and_fd(name, seed):
    """Sampler-drawn random shapes, eps and values: float64 vs jax.grad and vs central FD."""
    op, key = REGISTRY[name], jax.random.key(seed)
    _assert_ok(check.check_op(op, key, "float64", "hand", "autodiff"))
    _assert_ok(check.check_op(op, key, "float64", "hand", "fd"))


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_autodiff(name, key):
    """float32 within 1e-5 of jax.grad; every cotangent keeps its primal's dtype (batch norm
    in eval mode: mean and var get gradients too)."""
    op = REGISTRY[name]
    for seed in range(2):
        k1, k2 = jax.random.split(jax.random.fold_in(key, seed))
        arrays, static = op.sample(k1, jnp.float32)
        cot = jax.random.normal(k2, arrays[0].shape, jnp.float32)
        hand = check.op_gradients(op, arrays, static, cot, "hand")
        auto = check.op_gradients(op, arrays, static, cot, "autodiff")
        for a, h, ad in zip(arrays, hand, auto, strict=True):
            assert h.dtype == ad.dtype == a.dtype == jnp.float32 and h.shape == a.shape
            assert check.relative_error(h, ad) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_explicit_fwd_bwd_without_jit(name, key):
    """fwd then bwd called by hand (no JAX autodiff), un-jitted, against jax.grad un-jitted."""
    op = REGISTRY[name]
    k1, k2 = jax.random.split(key)
    arrays, static = op.sample(k1, jnp.float64)
    cot = check.random_cotangent(k2, jax.eval_shape(lambda *a: op.reference(*a, **static), *arrays))
    explicit = check.op_gradients(op, arrays, static, cot, "explicit", jit=False)
    hand = check.op_gradients(op, arrays, static, cot, "hand", jit=False)
    auto = check.op_gradients(op, arrays, static, cot, "autodiff", jit=True)
    for a, b, c in zip(explicit, hand, auto, strict=True):
        assert check.relative_error(a, c) <= 1e-10
        assert check.relative_error(b, c) <= 1e-10


def _closed_form_layer_norm(x, gamma, g, eps):
    """The docstring's formula, written once more in NumPy (independent of the op's code)."""
    mu = x.mean(-1, keepdims=True)
    r = 1 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (x - mu) * r
    dxhat = g * gamma
    dx = r * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    lead = tuple(range(x.ndim - 1))
    return dx, (g * xhat).sum(lead), g.sum(lead)


@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    d=st.integers(1, 9),
    eps=st.sampled_from([1e-5, 1e-2, 1.0]),
    seed=seeds,
)
def test_layer_norm_closed_form(lead, d, eps, seed):
    """Hypothesis shapes incl. degenerate D = 1, 2 (float64): hand grads = the NumPy closed form
    = jax.grad of the reference."""
    kx, kg, kb, ku = jax.random.split(jax.random.key(seed), 4)
    shape = (*lead, d)
    x = 2 * jax.random.normal(kx, shape) + 0.5
    gamma, beta = jax.random.normal(kg, (d,)), jax.random.normal(kb, (d,))
    u = jax.random.normal(ku, shape)

    @jax.jit
    def grads(x, gamma, beta):
        def loss(fn):
            return lambda x, gm, b: jnp.vdot(fn(x, gm, b, eps=eps), u)

        argnums = (0, 1, 2)
        hand = jax.grad(loss(layer_norm), argnums)(x, gamma, beta)
        return hand, jax.grad(loss(layer_norm.autodiff), argnums)(x, gamma, beta)

    hand, auto = grads(x, gamma, beta)
    numpy = _closed_form_layer_norm(np.asarray(x), np.asarray(gamma), np.asarray(u), eps)
    for h, a, n in zip(hand, auto, numpy, strict=True):
        assert h.shape == a.shape and h.dtype == a.dtype
        np.testing.assert_allclose(h, n, rtol=1e-10, atol=1e-12)
        assert check.relative_error(h, a) <= 1e-10 or np.abs(h - a).max() <= 1e-14


def test_layer_norm_output_statistics(key):
    """γ = 1, β = 0: every row has mean 0 and variance σ²/(σ² + ε), computed in NumPy."""
    x = 3 * jax.random.normal(key, (4, 7)) - 1.0
    eps = 0.5
    y = np.asarray(layer_norm(x, jnp.ones(7), jnp.zeros(7), eps=eps))
    var = np.asarray(x).var(-1)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), var / (var + eps), rtol=1e-12)


def test_layer_norm_residuals_are_small(key):
    """fwd keeps x itself (no copy), mean and rstd per row (..., 1), and gamma: nothing new of
    the size of x."""
    x = jax.random.normal(key, (3, 2, 5))
    gamma, beta = jnp.full((5,), 1.5), jnp.zeros(5)
    _, (x_kept, mean, rstd, gamma_kept) = layer_norm_fwd(x, gamma, beta)
    assert x_kept is x and gamma_kept is gamma
    assert mean.shape == rstd.shape == (3, 2, 1)
    _, (x_kept, mean, rstd, _) = batch_norm_fwd(x, gamma, beta)
    assert x_kept is x and mean.shape == rstd.shape == (1, 1, 5)


@given(
    lead=st.lists(st.integers(1, 4), min_size=1, max_size=3).filter(lambda s: np.prod(s) >= 2),
    c=st.integers(1, 4),
    seed=seeds,
)
def test_batch_norm_closed_form(lead, c, seed):
    """Hypothesis shapes (N, C) ... (N, H, W, C): the closed form over the reduced axes, written
    in NumPy, equals the hand VJP and jax.grad of the reference (float64)."""
    kx, kg, kb, ku = jax.random.split(jax.random.key(seed), 4)
    shape = (*lead, c)
    x = jax.random.normal(kx, shape) * jnp.arange(1.0, c + 1.0).reshape((1,) * len(lead) + (c,))
    x = x + 3.0  # a different scale per channel, offset mean
    gamma, beta = jax.random.normal(kg, (c,)), jax.random.normal(kb, (c,))
    u = jax.random.normal(ku, shape)
    eps = 1e-3

    @jax.jit
    def grads(x, gamma, beta):
        argnums = (0, 1, 2)
        hand = jax.grad(lambda *a: jnp.vdot(batch_norm(*a, eps=eps), u), argnums)
        auto = jax.grad(lambda *a: jnp.vdot(batch_norm.autodiff(*a, eps=eps), u), argnums)
        return hand(x, gamma, beta), auto(x, gamma, beta)

    hand, auto = grads(x, gamma, beta)
    xn, gn, un = np.asarray(x), np.asarray(gamma), np.asarray(u)
    axes = tuple(range(xn.ndim - 1))
    mu = xn.mean(axes, keepdims=True)
    r = 1 / np.sqrt(xn.var(axes, keepdims=True) + eps)
    xhat = (xn - mu) * r
    dxhat = un * gn
    dx = r * (
        dxhat - dxhat.mean(axes, keepdims=True) - xhat * (dxhat * xhat).mean(axes, keepdims=True)
    )
    numpy = (dx, (un * xhat).sum(axes), un.sum(axes))
    for h, a, n in zip(hand, auto, numpy, strict=True):
        np.testing.assert_allclose(h, n, rtol=1e-9, atol=1e-12)
        assert check.relative_error(h, a) <= 1e-10 or np.abs(h - a).max() <= 1e-14


def test_batch_norm_stats_and_inference_agree_with_training_mode(key):
    """batch_norm_stats = NumPy mean and biased variance over all axes but the last, and eval
    mode fed those statistics reproduces the training-mode output."""
    kx, kg, kb = jax.random.split(key, 3)
    x = jax.random.normal(kx, (4, 3, 2, 5)) * 2 + 1
    gamma, beta = jax.random.normal(kg, (5,)), jax.random.normal(kb, (5,))
    mean, var = batch_norm_stats(x)
    np.testing.assert_allclose(mean, np.asarray(x).mean((0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(var, np.asarray(x).var((0, 1, 2)), rtol=1e-12)
    train = batch_norm(x, gamma, beta, eps=1e-3)
    evaluated = batch_norm_inference(x, mean, var, gamma, beta, eps=1e-3)
    np.testing.assert_allclose(evaluated, train, rtol=1e-12, atol=1e-12)
    jitted = jax.jit(batch_norm_stats)(x)
    np.testing.assert_allclose(jitted[1], var, rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cotangent_dtypes_follow_the_primals(dtype, key):
    x = jax.random.normal(key, (3, 4), dtype)
    gamma, beta = jnp.ones(4, dtype), jnp.zeros(4, dtype)
    for fn in (layer_norm, batch_norm):
        grads = jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a) * x), argnums=(0, 1, 2))(x, gamma, beta)
        assert [g.dtype for g in grads] == [jnp.dtype(dtype)] * 3
        assert [g.shape for g in grads] == [(3, 4), (4,), (4,)]


def test_bad_inputs():
    x = jnp.ones((2, 3, 4))
    g4, b4 = jnp.ones(4), jnp.zeros(4)
    with pytest.raises(
        ValueError, match=r"layer_norm: gamma must have shape \(4,\).*got shape \(3,\)"
    ):
        layer_norm(x, jnp.ones(3), b4)
    with pytest.raises(ValueError, match=r"layer_norm: beta must have shape \(4,\)"):
        layer_norm(x, g4, jnp.zeros((1, 4)))
    with pytest.raises(TypeError, match="layer_norm: x must be a floating-point array"):
        layer_norm(jnp.ones((2, 4), jnp.int32), g4, b4)
    with pytest.raises(TypeError, match="layer_norm: arrays must share one dtype"):
        layer_norm(x, g4.astype(jnp.float32), b4)
    with pytest.raises(ValueError, match="layer_norm: eps must be a finite number >= 0, got -1"):
        layer_norm(x, g4, b4, eps=-1e-5)
    with pytest.raises(TypeError, match="layer_norm: eps must be a Python float"):
        layer_norm(x, g4, b4, eps=jnp.array(1e-5))
    with pytest.raises(ValueError, match="layer_norm: x must have at least 1 dims"):
        layer_norm(jnp.float64(1.0), jnp.ones(()), jnp.ones(()))
    with pytest.raises(
        ValueError, match=r"batch_norm: x must have at least 2 dims.*got shape \(4,\)"
    ):
        batch_norm(g4, g4, b4)
    with pytest.raises(ValueError, match=r"batch_norm: training mode needs more than one value"):
        batch_norm(jnp.ones((1, 1, 4)), g4, b4)
    with pytest.raises(ValueError, match=r"batch_norm: gamma must have shape \(4,\)"):
        jax.jit(batch_norm)(x, jnp.ones(2), b4)
    with pytest.raises(ValueError, match=r"batch_norm_inference: var must have shape \(4,\)"):
        batch_norm_inference(x, b4, jnp.ones(3), g4, b4)
    with pytest.raises(TypeError, match="batch_norm_inference: mean must be a floating-point"):
        batch_norm_inference(x, jnp.zeros(4, jnp.int32), g4, g4, b4)
    with pytest.raises(ValueError, match=r"batch_norm_stats: x must have at least 2 dims"):
        batch_norm_stats(g4)
    with pytest.raises(TypeError, match="layer_norm: .*unexpected keyword argument 'epsilon'"):
        layer_norm(x, g4, b4, epsilon=1e-5)
