"""max_pool2d and avg_pool2d: hand VJPs vs jax.grad, finite differences and a loop reference.

The loop reference (`_loop_grad`) walks every window in plain NumPy and hands out the cotangent by
the documented rules (max: all of it to the first maximum in row-major window order; avg: an
equal share to every element): it is independent of both JAX paths and, unlike `jax.grad` of the
reference, is specified on ties, so the tie rule is tested against it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcbp import check
from funcbp.ops import _sample
from funcbp.ops.pool import (
    _max_argmax,
    avg_pool2d,
    avg_pool2d_fwd,
    max_pool2d,
    max_pool2d_fwd,
)

TOL = check.TOLERANCE
FEW = settings(max_examples=max(2, settings.default.max_examples // 2))
"""Half the profile's examples: the registry-wide tests already run the ops' own samplers."""
OPS = {"max_pool2d": max_pool2d, "avg_pool2d": avg_pool2d}


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _distinct(gen, shape, dtype):
    """Tie-free values: a random permutation of an evenly spaced grid in (−2, 2). NumPy draws
    everything random here: `jax.random` would compile for every new shape."""
    size = int(np.prod(shape))
    grid = (np.arange(size) + 0.5) / size * 4.0 - 2.0
    return jnp.asarray(gen.permutation(grid).reshape(shape), dtype)


def _loop_grad(name, x, g, window, stride):
    """dX by walking the windows one by one (NumPy, float64): the documented rules, spelled out."""
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    (wh, ww), (sh, sw) = _pair(window), _pair(stride)
    n, ho, wo, c = g.shape
    dx = np.zeros_like(x)
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                for ch in range(c):
                    patch = x[b, sh * i : sh * i + wh, sw * j : sw * j + ww, ch]
                    if name == "avg_pool2d":
                        dx[b, sh * i : sh * i + wh, sw * j : sw * j + ww, ch] += g[b, i, j, ch] / (
                            wh * ww
                        )
                    else:
                        # first maximum in row-major order: argmax of the flattened patch
                        p, q = divmod(int(np.argmax(patch.ravel())), ww)
                        dx[b, sh * i + p, sw * j + q, ch] += g[b, i, j, ch]
    return dx


def _grads(name, x, static, cot, source, jit=True):
    (dx,) = check.op_gradients(OPS[name], (x,), static, cot, source, jit=jit)
    return dx


def _cotangent(gen, name, x, static):
    """A random normal cotangent for the output (never ones)."""
    out = jax.eval_shape(lambda a: OPS[name].autodiff(a, **static), x)
    return jnp.asarray(gen.standard_normal(out.shape), out.dtype)


@pytest.fixture
def gen(key):
    """A NumPy generator seeded by the test's key."""
    return _sample.rng(key)


@st.composite
def configs(draw):
    """(x shape, window, stride): odd and even sizes, overlapping and gapped windows."""
    window = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h, w = draw(st.integers(window[0], window[0] + 5)), draw(st.integers(window[1], window[1] + 5))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    # Also the int forms of window / stride, when both dims agree.
    window = window[0] if window[0] == window[1] and draw(st.booleans()) else window
    stride = stride[0] if stride[0] == stride[1] and draw(st.booleans()) else stride
    return (n, h, w, c), window, stride


# -- hand vs autodiff / finite differences (tie-free inputs) ----------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OPS))
@FEW
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1))
def test_hand_matches_autodiff(name, dtype, cfg, seed):
    shape, window, stride = cfg
    gen = np.random.default_rng(seed)
    x = _distinct(gen, shape, dtype)
    static = {"window": window, "stride": stride}
    cot = _cotangent(gen, name, x, static)
    hand = _grads(name, x, static, cot, "hand")
    report = check.compare(hand, _grads(name, x, static, cot, "autodiff"), tol=TOL[dtype])
    assert report.ok, f"{name} {report} {shape} {static}"


@pytest.mark.parametrize("name", sorted(OPS))
@FEW
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1))
def test_hand_matches_finite_differences_and_loops(name, cfg, seed):
    shape, window, stride = cfg
    gen = np.random.default_rng(seed)
    x = _distinct(gen, shape, jnp.float64)
    static = {"window": window, "stride": stride}
    cot = _cotangent(gen, name, x, static)
    hand = _grads(name, x, static, cot, "hand")
    fd = _grads(name, x, static, cot, "fd")
    assert check.compare(hand, fd, tol=check.FD_TOLERANCE["float64"]).ok, (shape, static)
    loops = _loop_grad(name, x, cot, window, stride)
    assert check.compare(hand, loops, tol=TOL["float64"]).ok, (shape, static)


# -- overlapping windows, uneven strides ------------------------------------------------------
CASES = [
    # (H, W), window, stride
    ((7, 7), 3, 1),  # every interior element in 9 windows
    ((7, 6), (3, 2), (2, 1)),  # overlap in H (3 > 2) and W (2 > 1)
    ((7, 7), 2, 2),  # tiling, 7 − 2 = 5 not divisible: last row/col not pooled
    ((8, 7), 3, 2),  # overlap of one row/col, remainders 1 and 0
    ((5, 9), (2, 3), 3),  # gaps in H (stride 3 > window 2), tiling in W
]


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_overlapping_and_uneven_windows(name, case, gen):
    (h, w), window, stride = case
    x = _distinct(gen, (2, h, w, 2), jnp.float64)
    static = {"window": window, "stride": stride}
    cot = _cotangent(gen, name, x, static)
    hand = _grads(name, x, static, cot, "hand")
    assert check.compare(hand, _grads(name, x, static, cot, "autodiff"), tol=TOL["float64"]).ok
    assert check.compare(hand, _loop_grad(name, x, cot, window, stride), tol=TOL["float64"]).ok


def test_rows_and_cols_after_the_last_window_get_zero(gen):
    x = _distinct(gen, (1, 7, 8, 3), jnp.float64)
    static = {"window": 2, "stride": (2, 3)}  # rows 0..5 pooled (row 6 not); cols 0,1,3,4,6,7
    for name in OPS:
        dx = np.asarray(_grads(name, x, static, _cotangent(gen, name, x, static), "hand"))
        np.testing.assert_array_equal(dx[:, 6], 0.0)
        np.testing.assert_array_equal(dx[:, :, [2, 5]], 0.0)


# -- the max-pool tie rule ----------------------------------------------------------------------
def test_tie_rule_first_max_in_row_major_order_hand_built():
    # One channel; window 2, stride 1: four overlapping 2x2 windows.
    x = jnp.array([[1.0, 3.0, 3.0], [3.0, 0.0, 2.0], [3.0, 1.0, 3.0]]).reshape(1, 3, 3, 1)
    g = jnp.array([[10.0, 20.0], [30.0, 40.0]]).reshape(1, 2, 2, 1)
    # window (0,0) = [[1,3],[3,0]]: first max at (0,1) <- 10
    # window (0,1) = [[3,3],[0,2]]: first max at (0,1) <- 20   (not (0,2))
    # window (1,0) = [[3,0],[3,1]]: first max at (1,0) <- 30   (not (2,0))
    # window (1,1) = [[0,2],[1,3]]: max at (2,2) <- 40
    want = np.array([[0.0, 30.0, 0.0], [30.0, 0.0, 0.0], [0.0, 0.0, 40.0]])
    for jit in (True, False):
        dx = _grads("max_pool2d", x, {"window": 2, "stride": 1}, g, "hand", jit=jit)
        np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], want)
        dx = _grads("max_pool2d", x, {"window": 2, "stride": 1}, g, "explicit", jit=jit)
        np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], want)


def test_tie_rule_whole_window_equal():
    """All four equal: the top-left element (first in row-major order) gets everything."""
    x = jnp.full((1, 2, 4, 1), 0.5)
    g = jnp.array([1.5, -2.0]).reshape(1, 1, 2, 1)
    dx = _grads("max_pool2d", x, {"window": 2, "stride": 2}, g, "hand")
    want = np.array([[1.5, 0.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], want)


@given(cfg=configs(), seed=st.integers(0, 2**31 - 1))
@FEW
def test_tie_rule_on_random_tie_heavy_inputs(cfg, seed):
    """Values in {0, 1, 2}: most windows have ties; hand == the loop reference's rule."""
    shape, window, stride = cfg
    gen = np.random.default_rng(seed)
    x = jnp.asarray(gen.integers(0, 3, shape), jnp.float64)
    static = {"window": window, "stride": stride}
    cot = _cotangent(gen, "max_pool2d", x, static)
    hand = _grads("max_pool2d", x, static, cot, "hand")
    np.testing.assert_allclose(hand, _loop_grad("max_pool2d", x, cot, window, stride), 1e-12)
    # Whatever the tie rule, each window's cotangent is routed once: the totals agree.
    np.testing.assert_allclose(np.sum(hand), np.sum(np.asarray(cot)), rtol=1e-12, atol=1e-12)


@given(seed=st.integers(0, 2**31 - 1))
@FEW
def test_one_pass_max_and_argmax_are_jnps(seed):
    """The forward's one variadic reduction == jnp.max and jnp.argmax, with ties, NaN and -inf,
    and its JVP is the tangent at the first arg-max."""
    gen = np.random.default_rng(seed)
    p = gen.integers(-2, 3, (6, 5)).astype(np.float64)
    p[gen.integers(6), gen.integers(5)] = np.nan
    p[gen.integers(6)] = -np.inf
    y, idx = jax.jit(_max_argmax)(jnp.asarray(p))
    np.testing.assert_array_equal(y, jnp.max(p, -1))
    np.testing.assert_array_equal(idx, jnp.argmax(p, -1))
    t = gen.standard_normal(p.shape)
    _, (dy, _) = jax.jvp(_max_argmax, (jnp.asarray(p),), (jnp.asarray(t),))
    np.testing.assert_array_equal(dy, t[np.arange(6), np.asarray(idx)])


# -- residuals, jit ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_residuals_are_small(dtype, gen):
    x = _distinct(gen, (2, 7, 6, 3), dtype)
    y, (idx, token) = max_pool2d_fwd(x, window=2, stride=2)
    assert y.shape == (2, 3, 3, 3) and y.dtype == jnp.dtype(dtype)
    assert idx.shape == y.shape and idx.dtype == jnp.int8  # window index of the max
    assert token.shape == (7, 6, 0) and token.size == 0  # only carries (H, W)
    np.testing.assert_array_equal(y, max_pool2d.autodiff(x, window=2, stride=2))
    y, (token,) = avg_pool2d_fwd(x, window=(3, 2), stride=1)
    assert token.size == 0 and y.shape == (2, 5, 5, 3)


@pytest.mark.parametrize("name", sorted(OPS))
def test_jit_equals_eager(name, gen):
    x = _distinct(gen, (2, 7, 5, 2), jnp.float64)
    static = {"window": (3, 2), "stride": (2, 1)}
    cot = _cotangent(gen, name, x, static)
    op = OPS[name]
    eager = op(x, **static)
    np.testing.assert_allclose(jax.jit(lambda a: op(a, **static))(x), eager, 1e-13)
    np.testing.assert_allclose(eager, op.autodiff(x, **static), 1e-13)
    jitted = _grads(name, x, static, cot, "hand", jit=True)
    np.testing.assert_allclose(jitted, _grads(name, x, static, cot, "hand", jit=False), 1e-13)


def test_lists_are_accepted(gen):
    x = _distinct(gen, (1, 5, 6, 1), jnp.float64)
    for op in OPS.values():
        np.testing.assert_array_equal(op(x, [2, 3], [1, 2]), op(x, window=(2, 3), stride=(1, 2)))


# -- bad input --------------------------------------------------------------------------------
BAD = [
    (lambda x: ((x[0],), {}), ValueError, r"{op}: x must have 4 dims .*\(N, H, W, C\)"),
    (lambda x: ((x.astype(jnp.int32),), {}), TypeError, r"{op}: x must be a floating-point"),
    (lambda x: ((x,), {"window": 0}), ValueError, r"{op}: window must be >= 1, got 0"),
    (lambda x: ((x,), {"stride": (1, 0)}), ValueError, r"{op}: stride must be >= 1"),
    (lambda x: ((x,), {"window": 2.0}), TypeError, r"{op}: window must be an int or a pair"),
    (lambda x: ((x,), {"window": True}), TypeError, r"{op}: window must be an int or a pair"),
    (lambda x: ((x,), {"stride": (1, 2, 3)}), TypeError, r"{op}: stride must be an int or a p"),
    (
        lambda x: ((x,), {"window": (2, 6)}),
        ValueError,
        r"{op}: window \(2, 6\) is larger than the input's spatial size \(4, 5\)",
    ),
]


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("make, error, match", BAD)
def test_bad_input_raises(name, make, error, match):
    arrays, static = make(jnp.ones((2, 4, 5, 3)))
    with pytest.raises(error, match=match.format(op=name)):
        OPS[name](*arrays, **static)
    with pytest.raises(error, match=match.format(op=name)):
        jax.jit(lambda *a: OPS[name](*a, **static))(*arrays)
