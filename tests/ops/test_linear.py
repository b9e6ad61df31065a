"""linear: Y = X W + b with any number of leading dims, its hand VJP, and its input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from funcbp import check
from funcbp.ops import linear
from funcbp.ops.linear import linear_bwd, linear_fwd


def _inputs(seed, lead, n_in, n_out, dtype=jnp.float64):
    """x, w, b and a random cotangent dy, drawn on the host (no compile per shape)."""
    gen = np.random.default_rng(seed)
    shapes = [(*lead, n_in), (n_in, n_out), (n_out,), (*lead, n_out)]
    return tuple(jnp.asarray(gen.standard_normal(s), dtype) for s in shapes)


def _grads(fn, x, w, b, dy):
    return jax.grad(lambda *a: jnp.vdot(fn(*a), dy), argnums=(0, 1, 2))(x, w, b)


LEAD = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
DIM = st.integers(1, 5)


@given(seed=st.integers(0, 2**31 - 1), lead=LEAD, n_in=DIM, n_out=DIM)
def test_leading_dims_forward_and_grads(seed, lead, n_in, n_out):
    """1, 2 and 3 leading dims: forward is x·W + b per sample; dW is Σ_n x_n ⊗ dy_n."""
    x, w, b, dy = _inputs(seed, lead, n_in, n_out)
    xn, wn, bn, dyn = (np.asarray(a) for a in (x, w, b, dy))
    y = linear(x, w, b)
    assert y.shape == (*lead, n_out) and y.dtype == x.dtype
    np.testing.assert_allclose(y, np.einsum("...i,io->...o", xn, wn) + bn, rtol=1e-12, atol=1e-12)

    (dx, dw, db), ref = jax.jit(lambda *a: (_grads(linear, *a), _grads(linear.autodiff, *a)))(
        x, w, b, dy
    )
    # Independent computations in NumPy, one per formula.
    np.testing.assert_allclose(dx, np.einsum("...o,io->...i", dyn, wn), rtol=1e-12, atol=1e-12)
    outer = np.einsum("...i,...o->...io", xn, dyn)  # x_n ⊗ dy_n for every sample n
    np.testing.assert_allclose(
        dw, outer.reshape(-1, n_in, n_out).sum(axis=0), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(db, dyn.reshape(-1, n_out).sum(axis=0), rtol=1e-12, atol=1e-12)
    # And against jax.grad of the reference, jitted and not.
    report = check.compare((dx, dw, db), ref, tol=check.TOLERANCE["float64"], name="linear")
    assert report.ok, str(report)
    eager = _grads(linear, x, w, b, dy)
    assert check.compare(eager, ref, tol=check.TOLERANCE["float64"]).ok


def test_rank1_x():
    """A single sample x: (I,) -> (O,); dW is the outer product x ⊗ dy itself."""
    x, w, b, dy = _inputs(7, (), 3, 4)
    assert linear(x, w, b).shape == (4,)
    dx, dw, db = _grads(linear, x, w, b, dy)
    np.testing.assert_allclose(dw, jnp.outer(x, dy), rtol=1e-12)
    np.testing.assert_allclose(db, dy, rtol=1e-12)
    np.testing.assert_allclose(dx, w @ dy, rtol=1e-12)


@pytest.mark.parametrize("lead", [(5,), (2, 3), (2, 1, 3)])
def test_float32_matches_reference(lead):
    x, w, b, dy = _inputs(3, lead, 4, 3, jnp.float32)
    hand = jax.jit(lambda *a: _grads(linear, *a))(x, w, b, dy)
    ref = jax.jit(lambda *a: _grads(linear.autodiff, *a))(x, w, b, dy)
    assert all(g.dtype == jnp.float32 for g in hand)
    report = check.compare(hand, ref, tol=check.TOLERANCE["float32"], name="linear")
    assert report.ok, str(report)


def test_explicit_fwd_bwd_keeps_x_and_w():
    x, w, b, dy = _inputs(11, (2, 3), 4, 2)
    y, residuals = linear_fwd(x, w, b)
    assert len(residuals) == 2
    assert residuals[0] is x and residuals[1] is w
    dx, dw, db = linear_bwd(residuals, dy)
    assert (dx.shape, dw.shape, db.shape) == (x.shape, w.shape, b.shape)
    report = check.compare((dx, dw, db), _grads(linear.autodiff, x, w, b, dy), tol=1e-12)
    assert report.ok, str(report)


def _f64(*shape):
    return jnp.ones(shape, jnp.float64)


BAD = [
    (
        "inner dims",
        (_f64(2, 3), _f64(4, 5), _f64(5)),
        ValueError,
        r"linear: x has 3 features but w expects 4 \(x \(2, 3\), w \(4, 5\)\)",
    ),
    (
        "bias size",
        (_f64(2, 3), _f64(3, 5), _f64(4)),
        ValueError,
        r"linear: b has 4 entries but w has 5 outputs \(w \(3, 5\), b \(4,\)\)",
    ),
    (
        "int x",
        (jnp.ones((2, 3), jnp.int32), _f64(3, 5), _f64(5)),
        TypeError,
        r"linear: x must be a floating-point array, got shape \(2, 3\) dtype int32",
    ),
    (
        "mixed dtypes",
        (jnp.ones((2, 3), jnp.float32), _f64(3, 5), _f64(5)),
        TypeError,
        r"linear: arrays must share one dtype, got x float32, w float64, b float64",
    ),
    (
        "rank-0 x",
        (jnp.ones((), jnp.float64), _f64(3, 5), _f64(5)),
        ValueError,
        r"linear: x must have at least 1 dims \(\.\.\., in\), got shape \(\) dtype float64",
    ),
    (
        "rank-1 w",
        (_f64(2, 3), _f64(3), _f64(5)),
        ValueError,
        r"linear: w must have 2 dims \(in, out\), got shape \(3,\)",
    ),
    (
        "rank-2 b",
        (_f64(2, 3), _f64(3, 5), _f64(1, 5)),
        ValueError,
        r"linear: b must have 1 dims \(out,\), got shape \(1, 5\)",
    ),
]


@pytest.mark.parametrize(("what", "args", "error", "match"), BAD, ids=[c[0] for c in BAD])
def test_bad_inputs_raise(what, args, error, match):
    with pytest.raises(error, match=match):
        linear(*args)
    with pytest.raises(error, match=match):
        linear.autodiff(*args)


@pytest.mark.parametrize(("what", "args", "error", "match"), BAD, ids=[c[0] for c in BAD])
def test_bad_inputs_raise_at_trace_time(what, args, error, match):
    """Under jit the check fires while tracing: abstract shapes only, no values, no compile."""
    abstract = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    with pytest.raises(error, match=match):
        jax.jit(linear).trace(*abstract)
    with pytest.raises(error, match=match):
        jax.jit(jax.grad(lambda *a: linear(*a).sum(), argnums=1)).trace(*abstract)


def test_non_array_and_bad_call():
    with pytest.raises(TypeError, match=r"linear: x must be an array, got list"):
        linear([[1.0, 2.0]], _f64(2, 3), _f64(3))
    with pytest.raises(TypeError, match=r"linear: .*signature linear\(x, w, b\)"):
        linear(_f64(2, 3), _f64(3, 5))
