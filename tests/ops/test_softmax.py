"""softmax / log_softmax: any axis, stable for huge logits, gradients vs autodiff, bad axes."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from funcbp import check
from funcbp.ops import log_softmax, softmax
from funcbp.ops.softmax import softmax_bwd, softmax_fwd

SEEDS = st.integers(0, 2**31 - 1)
OPS = [softmax, log_softmax]
INDEPENDENT = {"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax}


def _grad(fn, x, g, axis):
    return jax.grad(lambda v: jnp.vdot(fn(v, axis=axis), g))(x)


@st.composite
def _case(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return draw(SEEDS), shape, axis


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@given(case=_case())
def test_any_axis_matches_jax_nn_and_autodiff(op, case):
    seed, shape, axis = case
    gen = np.random.default_rng(seed)
    x = jnp.asarray(3 * gen.standard_normal(shape))
    g = jnp.asarray(gen.standard_normal(shape))
    other = INDEPENDENT[op.name]

    @jax.jit
    def everything(x, g):
        return (
            op(x, axis=axis),
            other(x, axis=axis),
            _grad(op, x, g, axis),
            _grad(op.autodiff, x, g, axis),
            _grad(other, x, g, axis),
        )

    y, y_nn, hand, ref, ref_nn = everything(x, g)
    np.testing.assert_allclose(y, y_nn, rtol=1e-13, atol=1e-15)
    assert check.relative_error(hand, ref) <= 1e-10
    assert check.relative_error(hand, ref_nn) <= 1e-10


@pytest.mark.parametrize("offset", [1e4, -1e4])
@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_huge_logits_are_stable(op, offset, key):
    """±1e4: a shift of 1e4 (shift invariance) and a spread of 1e4 (near one-hot rows)."""
    k1, k2 = jax.random.split(key)
    base = jax.random.normal(k1, (4, 6), jnp.float64)
    g = jax.random.normal(k2, (4, 6), jnp.float64)
    for x in (base + offset, base * offset):
        y = op(x)
        assert bool(jnp.all(jnp.isfinite(y)))
        p = y if op is softmax else jnp.exp(y)
        np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-12)
        hand = jax.jit(lambda x, g: _grad(op, x, g, -1))(x, g)
        ref = _grad(op.autodiff, x, g, -1)
        assert bool(jnp.all(jnp.isfinite(hand)))
        assert check.relative_error(hand, ref) <= 1e-10
    # The shifted logits give the same probabilities as the unshifted ones (to the rounding
    # of base + 1e4, about 1e4 · 2⁻⁵² relative).
    np.testing.assert_allclose(softmax(base + offset), jax.nn.softmax(base), rtol=1e-9, atol=1e-15)


def test_huge_logits_float32():
    x = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4 + 1]], jnp.float32)
    g = jnp.array([[0.3, -1.2, 2.0], [1.0, 0.5, -0.7]], jnp.float32)
    for op in OPS:
        y = op(x)
        assert y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))
        dx = _grad(op, x, g, -1)
        assert dx.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(dx)))
        np.testing.assert_allclose(dx, _grad(op.autodiff, x, g, -1), rtol=1e-5, atol=1e-6)


def test_softmax_residual_is_its_output():
    x = jax.random.normal(jax.random.key(0), (3, 4), jnp.float64)
    y, (kept,) = softmax_fwd(x, axis=0)
    assert kept is y
    g = jax.random.normal(jax.random.key(1), (3, 4), jnp.float64)
    (dx,) = softmax_bwd((y,), g, axis=0)
    # The Jacobian diag(y) − y yᵀ applied column by column, written out independently.
    for j in range(4):
        col = y[:, j]
        jac = jnp.diag(col) - jnp.outer(col, col)
        np.testing.assert_allclose(dx[:, j], jac @ g[:, j], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("axis", [2, -3, 5])
def test_axis_out_of_range(op, axis):
    x = jnp.ones((2, 3))
    with pytest.raises(
        ValueError, match=rf"{op.name}: axis {axis} is out of range for x of shape \(2, 3\)"
    ):
        op(x, axis=axis)
    with pytest.raises(ValueError, match=rf"{op.name}: axis {axis} is out of range"):
        jax.jit(lambda v: op(v, axis=axis)).trace(jax.ShapeDtypeStruct((2, 3), jnp.float64))


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("axis", [1.0, "1", (0, 1), None, True])
def test_axis_not_an_int(op, axis):
    with pytest.raises(TypeError, match=re.escape(f"{op.name}: axis must be an int, got {axis!r}")):
        op(jnp.ones((2, 3)), axis=axis)


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_bad_x(op):
    with pytest.raises(ValueError, match=rf"{op.name}: x must have at least 1 dim, got shape"):
        op(jnp.ones(()))
    with pytest.raises(TypeError, match=rf"{op.name}: x must be a floating-point array"):
        op(jnp.arange(3))
