"""Elementwise activations: values against jax.nn, gradients against autodiff, edge cases."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from funcbp import check
from funcbp.ops import gelu, leaky_relu, relu, sigmoid, tanh

SEEDS = st.integers(0, 2**31 - 1)
SHAPES = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


def _grad(fn, x, g, **static):
    return jax.grad(lambda v: jnp.vdot(fn(v, **static), g))(x)


def _draw(seed, shape, scale=3.0, dtype=jnp.float64):
    """Input and cotangent, drawn on the host (no compile per shape)."""
    gen = np.random.default_rng(seed)
    x = jnp.asarray(scale * gen.standard_normal(shape), dtype)
    return x, jnp.asarray(gen.standard_normal(shape), dtype)


# Independent implementations (jax.nn) of each forward, and the derivative written out.
CASES = {
    "relu": (relu, {}, jax.nn.relu, lambda x: (x > 0).astype(x.dtype)),
    "leaky_relu": (
        leaky_relu,
        {"negative_slope": 0.2},
        lambda x: jax.nn.leaky_relu(x, 0.2),
        lambda x: jnp.where(x > 0, 1.0, 0.2).astype(x.dtype),
    ),
    "sigmoid": (
        sigmoid,
        {},
        jax.nn.sigmoid,
        lambda x: jax.nn.sigmoid(x) * jax.nn.sigmoid(-x),
    ),
    "tanh": (tanh, {}, jnp.tanh, lambda x: 1 / jnp.cosh(x) ** 2),
}


@pytest.mark.parametrize("name", sorted(CASES))
@given(seed=SEEDS, shape=SHAPES)
def test_values_and_derivatives(name, seed, shape):
    op, static, forward, derivative = CASES[name]
    x, g = _draw(seed, shape)

    @jax.jit
    def everything(x, g):
        return (
            op(x, **static),
            forward(x),
            _grad(op, x, g, **static),
            g * derivative(x),
            _grad(op.autodiff, x, g, **static),
        )

    y, y_nn, dx, dx_formula, dx_ref = everything(x, g)
    np.testing.assert_allclose(y, y_nn, rtol=1e-14, atol=1e-15)
    # 1 − t² (kept output) vs sech²(x): equal up to the absolute rounding of t², ~1e-16.
    np.testing.assert_allclose(dx, dx_formula, rtol=1e-12, atol=1e-14)
    assert check.relative_error(dx, dx_ref) <= 1e-10
    # The un-jitted path gives the same gradient (up to an ulp of tanh: XLA fuses it).
    np.testing.assert_allclose(_grad(op, x, g, **static), dx, rtol=1e-12, atol=1e-14)


def test_relu_gradient_at_zero_is_zero():
    x = jnp.array([-1.0, 0.0, 2.0])
    g = jnp.array([3.0, 5.0, 7.0])
    np.testing.assert_array_equal(_grad(relu, x, g), [0.0, 0.0, 7.0])
    np.testing.assert_allclose(
        _grad(leaky_relu, x, g, negative_slope=0.1), [0.3, 0.5, 7.0], rtol=1e-15
    )


@given(seed=SEEDS, shape=SHAPES, residual=st.sampled_from(["output", "input", "bits"]))
def test_relu_residuals_give_the_same_gradient(seed, shape, residual):
    """Whatever relu keeps for its mask (y, x, or one bit an element), dx = g · 1[x > 0]
    exactly, under jit and vmap; the forward is max(x, 0) in every form (NaN included)."""
    x, g = _draw(seed, (2, *shape))
    x = x.at[..., :1].set(0.0).at[(1,) + (-1,) * len(shape)].set(jnp.nan)  # the kink; a NaN
    want = jnp.where(x > 0, g, 0.0)
    dx = jax.jit(lambda x, g: _grad(relu, x, g, residual=residual))(x, g)
    np.testing.assert_array_equal(dx, want)
    per_row = jax.vmap(lambda x, g: _grad(relu, x, g, residual=residual))(x, g)
    np.testing.assert_array_equal(per_row, want)
    y, (kept,) = relu.fwd(x, residual=residual)
    np.testing.assert_array_equal(y, jnp.maximum(x, 0))
    if residual == "bits":
        assert kept.dtype == jnp.uint8 and kept.shape == (-(-x.size // 8),)
    else:
        np.testing.assert_array_equal(kept, y if residual == "output" else x)


def test_relu_bad_residual():
    with pytest.raises(
        ValueError, match=r"relu: residual must be one of 'output', 'input', 'bits'"
    ):
        relu(jnp.ones((2,)), residual="mask")


def test_leaky_relu_zero_slope_is_relu():
    x, g = _draw(4, (3, 5))
    np.testing.assert_array_equal(leaky_relu(x, negative_slope=0.0), relu(x))
    np.testing.assert_array_equal(_grad(leaky_relu, x, g, negative_slope=0.0), _grad(relu, x, g))


@pytest.mark.parametrize("slope", [-0.1, math.nan, math.inf, "0.1", None, jnp.array(0.1)], ids=repr)
def test_leaky_relu_bad_negative_slope(slope):
    x = jnp.ones((2,))
    with pytest.raises(
        ValueError, match=r"leaky_relu: negative_slope must be a finite number >= 0, got"
    ):
        leaky_relu(x, negative_slope=slope)


@jax.jit
def _gelu_everything(x, g):
    """Both variants' values and gradients by four routes, in one compiled program."""
    out = {}
    for a in (False, True):
        out[a] = (
            gelu(x, approximate=a),
            jax.nn.gelu(x, approximate=a),  # independent implementation
            _grad(gelu, x, g, approximate=a),  # hand VJP
            _grad(lambda v, a=a: jax.nn.gelu(v, approximate=a), x, g),
            _grad(gelu.autodiff, x, g, approximate=a),
        )
    return out


@given(seed=SEEDS, shape=SHAPES)
def test_gelu_exact_and_approximate(seed, shape):
    x, g = _draw(seed, (*shape, 3), scale=2.0)
    out = _gelu_everything(x, g)
    # They are different functions (they differ by up to ~1e-3 near |x| ~ 2) ...
    assert float(np.max(np.abs(out[False][0] - out[True][0]))) > 1e-6
    assert check.relative_error(out[False][2], out[True][2]) > 1e-6
    # ... and each matches its own independent implementation, values and gradients.
    for approximate, (y, y_nn, hand, ref_nn, ref) in out.items():
        np.testing.assert_allclose(y, y_nn, rtol=1e-13, atol=1e-15)
        assert check.relative_error(hand, ref_nn) <= 1e-10, approximate
        assert check.relative_error(hand, ref) <= 1e-10, approximate


def test_gelu_approximate_must_be_bool():
    with pytest.raises(TypeError, match=r"gelu: approximate must be a bool, got 1"):
        gelu(jnp.ones(2), approximate=1)


def test_saturated_sigmoid_and_tanh_are_finite():
    x = jnp.array([-800.0, -40.0, 40.0, 800.0])
    g = jnp.ones_like(x) * 0.5 + jnp.arange(4.0)
    for op in (sigmoid, tanh):
        assert bool(jnp.all(jnp.isfinite(op(x))))
        dx = _grad(op, x, g)
        assert bool(jnp.all(jnp.isfinite(dx)))
        np.testing.assert_allclose(dx, _grad(op.autodiff, x, g), atol=1e-15)


@pytest.mark.parametrize("op", [relu, sigmoid, tanh, gelu, leaky_relu], ids=lambda o: o.name)
def test_int_input_raises(op):
    with pytest.raises(TypeError, match=rf"{op.name}: x must be a floating-point array, got"):
        op(jnp.arange(3))
    with pytest.raises(TypeError, match=rf"{op.name}: x must be a floating-point array"):
        jax.jit(op).trace(jax.ShapeDtypeStruct((3,), jnp.int32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("op", [relu, sigmoid, tanh, gelu, leaky_relu], ids=lambda o: o.name)
def test_dtype_kept(op, dtype):
    x, g = _draw(1, (2, 3), dtype=dtype)
    assert op(x).dtype == dtype
    assert _grad(op, x, g).dtype == dtype
