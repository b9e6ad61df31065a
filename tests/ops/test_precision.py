"""`Op.cast` (mixed precision inside the custom VJP) and float32 accumulation of weight
gradients: cotangents in their primals' dtypes (JAX #18931), a bf16 `lax.scan` over a hand-VJP
cell that compiles (JAX #27144), dW never rounded through bfloat16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import check, ops

BF16 = jnp.bfloat16


def _linear_inputs(key, dtype=jnp.float32):
    kx, kw, kb, ku = jax.random.split(key, 4)
    x = jax.random.normal(kx, (64, 16), dtype)
    w, b = jax.random.normal(kw, (16, 8), dtype), jax.random.normal(kb, (8,), dtype)
    return x, w, b, jax.random.normal(ku, (64, 8), BF16)


def test_cast_is_cached_and_none_is_the_op_itself():
    assert ops.linear.cast(BF16) is ops.linear.cast("bfloat16")
    assert ops.linear.cast(None) is ops.linear
    assert ops.linear.cast(BF16).name == "linear.bfloat16"


@pytest.mark.parametrize("jit", [False, True])
def test_cast_computes_in_bf16_and_returns_float32_gradients(key, jit):
    """Float32 masters in, bfloat16 forward out; the gradients are float32 and dW equals the
    float32-accumulated product of the bfloat16 operands (never rounded to bfloat16)."""
    x, w, b, u = _linear_inputs(key)
    low = ops.linear.cast(BF16)
    wrap = jax.jit if jit else (lambda f: f)
    y, vjp = jax.vjp(wrap(low), x, w, b)
    dx, dw, db = vjp(u)
    assert y.dtype == BF16
    assert (dx.dtype, dw.dtype, db.dtype) == (jnp.float32,) * 3
    xb = np.asarray(x.astype(BF16), np.float64)
    want = xb.T @ np.asarray(u, np.float64)  # exact sums of bf16 products (in float64)
    np.testing.assert_allclose(dw, want, rtol=1e-6, atol=1e-6)
    rounded = np.asarray(jnp.asarray(want, BF16), np.float64)
    assert np.abs(want - rounded).max() > 100 * np.abs(np.asarray(dw) - want).max()


def test_autodiff_of_the_cast_rounds_dw_through_bf16(key):
    """The contrast: jax.grad of the reference differentiates the casts, so its dW is formed in
    bfloat16 and converted after (what a plain mixed-precision model does)."""
    x, w, b, u = _linear_inputs(key)
    _, vjp = jax.vjp(ops.linear.cast(BF16).autodiff, x, w, b)
    dw = vjp(u)[1]
    assert dw.dtype == jnp.float32
    assert np.array_equal(dw, jnp.asarray(dw, BF16).astype(jnp.float32))  # bf16 values only


@pytest.mark.parametrize("op", [ops.linear, ops.conv2d, ops.layer_norm, ops.unembed])
def test_half_params_get_half_gradients(op, key):
    """Pure bfloat16 (no policy): each ``bwd`` accumulates in float32 and the op casts the
    cotangent back to the primal's dtype (JAX #18931: no float32 gradient for a bf16 param)."""
    arrays, static = op.sample(key, jnp.float32)
    arrays = [a.astype(BF16) for a in arrays]
    out, vjp = jax.vjp(lambda *a: op(*a, **static), *arrays)
    grads = vjp(check.random_cotangent(key, out))
    assert [g.dtype for g in grads] == [BF16] * len(arrays)
    _, residuals = op.fwd(*arrays, **static)
    raw = op.bwd(residuals, check.random_cotangent(key, out), **static)
    assert jnp.dtype(jnp.float32) in {g.dtype for g in raw}  # accumulated, before the cast


def _rnn_loss(cell, wx, wh, b, xs, h0, u):
    def step(h, x):
        h = cell(x, h, wx, wh, b)
        return h, h

    _, hs = jax.lax.scan(step, h0, xs)
    return jnp.vdot(hs.astype(jnp.float32), u)


def test_bf16_scan_over_a_hand_vjp_cell_compiles_and_is_accurate(key):
    """JAX #27144: `scan` over a custom_vjp whose backward returns a higher precision than its
    primal fails to compile. The cell's bwd accumulates dW in float32; `Op` casts every
    cotangent to its primal's dtype, so a bf16 scan (float32 weights, bf16 carry) compiles, and
    its gradients meet the FlashAttention rule against autodiff in bf16."""
    ks = jax.random.split(key, 6)
    t, n, d, h = 8, 4, 5, 6
    xs = jax.random.normal(ks[0], (t, n, d), BF16)
    normal = lambda k, shape, scale=1.0: scale * jax.random.normal(k, shape, jnp.float32)
    h0 = jnp.tanh(normal(ks[1], (n, h))).astype(BF16)
    wx, wh = normal(ks[2], (d, h), 0.5), normal(ks[3], (h, h), 0.5)
    b, u = normal(ks[4], (h,), 0.1), normal(ks[5], (t, n, h))
    cell = ops.rnn_cell.cast(BF16)
    grad = jax.jit(jax.grad(_rnn_loss, argnums=(1, 2, 3, 4, 5)), static_argnums=0)
    hand = grad(cell, wx, wh, b, xs, h0, u)
    auto = grad(cell.autodiff, wx, wh, b, xs, h0, u)
    wide = [a.astype(jnp.float64) for a in (wx, wh, b, xs, h0, u)]
    truth = grad(ops.rnn_cell.autodiff, *wide)
    assert [g.dtype for g in hand] == [jnp.float32] * 3 + [BF16] * 2
    for name, g, a, t64 in zip(("wx", "wh", "b", "xs", "h0"), hand, auto, truth, strict=True):
        e_hand, e_auto = check.relative_error(g, t64), check.relative_error(a, t64)
        assert e_hand <= 2 * e_auto + 1e-6, (name, e_hand, e_auto)


def test_bf16_rnn_op_with_bf16_weights_compiles(key):
    """The same trap with every array bf16 (the cells' dW come back in float32 from bwd)."""
    ks = jax.random.split(key, 3)
    xs = jax.random.normal(ks[0], (6, 2, 3), BF16)
    w = [jax.random.normal(k, s, BF16) for k, s in zip(ks[1:], [(3, 4), (4, 4)], strict=True)]
    loss = lambda *a: jnp.sum(ops.rnn(xs, *a)[0].astype(jnp.float32))
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(
        jnp.zeros((2, 4), BF16), *w, jnp.zeros(4, BF16)
    )
    assert [g.dtype for g in grads] == [BF16] * 4
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
