"""conv2d: hand VJP (transposed conv for dX, correlation for dW) vs jax.grad and finite differences.

Shapes, strides and paddings are drawn by hypothesis; the uneven cases (where the last window
leaves rows/cols of the padded input unused, r = (H + pads − KH) mod stride > 0) are also pinned
explicitly, since that remainder is the classic place for a transposed-convolution bug.
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
from funcbp.ops.conv import conv2d, conv2d_bwd, conv2d_fwd

TOL = check.TOLERANCE
FEW = settings(max_examples=max(2, settings.default.max_examples // 2))
"""Half the profile's examples: the registry-wide tests already run conv2d's own sampler."""


def _normal(gen, shape, dtype):
    """Random normal values drawn with NumPy: `jax.random` would compile for every new shape."""
    return jnp.asarray(gen.standard_normal(shape), dtype)


def _inputs(gen, shape_x, shape_w, dtype):
    return tuple(_normal(gen, s, dtype) for s in (shape_x, shape_w, shape_w[-1:]))


def _cotangent(gen, arrays, static):
    """A random normal cotangent for the output (never ones)."""
    out = jax.eval_shape(lambda *a: conv2d.autodiff(*a, **static), *arrays)
    return _normal(gen, out.shape, out.dtype)


@pytest.fixture
def gen(key):
    """A NumPy generator seeded by the test's key."""
    return _sample.rng(key)


def _compare(arrays, static, cot, a, b, tol):
    ga = check.op_gradients(conv2d, arrays, static, cot, a)
    gb = check.op_gradients(conv2d, arrays, static, cot, b)
    report = check.compare(ga, gb, tol=tol, name="conv2d", a_name=a, b_name=b)
    assert report.ok, f"{report} {[x.shape for x in arrays]} {static}"
    return report


def _remainder(size, lo, hi, k, s):
    return (size + lo + hi - k) % s


@st.composite
def configs(draw):
    """(x shape, w shape, stride, padding): small, odd and even sizes, every padding form."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(
        st.one_of(
            st.sampled_from(["SAME", "VALID"]),
            st.integers(0, 3),
            st.tuples(st.integers(0, 3), st.integers(0, 3)),
            st.tuples(
                st.tuples(st.integers(0, 4), st.integers(0, 4)),
                st.tuples(st.integers(0, 4), st.integers(0, 4)),
            ),
        )
    )
    h, w = draw(st.integers(kh, kh + 5)), draw(st.integers(kw, kw + 5))
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (n, h, w, c), (kh, kw, c, o), stride, padding


# -- hand vs autodiff / finite differences ---------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@FEW
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1))
def test_hand_matches_autodiff(cfg, seed, dtype):
    shape_x, shape_w, stride, padding = cfg
    gen = np.random.default_rng(seed)
    arrays = _inputs(gen, shape_x, shape_w, dtype)
    static = {"stride": stride, "padding": padding}
    _compare(arrays, static, _cotangent(gen, arrays, static), "hand", "autodiff", TOL[dtype])


@FEW
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1))
def test_hand_matches_finite_differences(cfg, seed):
    shape_x, shape_w, stride, padding = cfg
    gen = np.random.default_rng(seed)
    arrays = _inputs(gen, shape_x, shape_w, jnp.float64)
    static = {"stride": stride, "padding": padding}
    cot = _cotangent(gen, arrays, static)
    _compare(arrays, static, cot, "hand", "fd", check.FD_TOLERANCE["float64"])


# -- strides that do not divide evenly -------------------------------------------------------
UNEVEN = [
    # (H, W), (KH, KW), stride, padding
    ((7, 7), (3, 3), 2, "SAME"),  # SAME pads (1, 1): 7 + 2 − 3 = 6, r = 0 ... and W alike
    ((7, 6), (3, 3), 2, "VALID"),  # 7 − 3 = 4 (r 0), 6 − 3 = 3 (r 1)
    ((7, 7), (3, 2), 2, ((2, 0), (0, 1))),  # 7 + 2 − 3 = 6 (r 0); 7 + 1 − 2 = 6 (r 0)
    ((7, 7), (3, 3), 2, ((0, 1), (1, 0))),  # 5 (r 1), 5 (r 1)
    ((8, 7), (3, 2), 3, ((1, 0), (0, 2))),  # 6 (r 0), 7 (r 1)
    ((7, 9), (2, 3), (3, 2), ((0, 0), (2, 1))),  # 5 (r 2), 9 (r 1)
    ((8, 8), (3, 3), (3, 2), "SAME"),  # H: pads (0, 1) -> 6 (r 0); W: pads (0, 1) -> 6 (r 0)
    ((6, 5), (2, 2), 3, "VALID"),  # 4 (r 1), 3 (r 0)
    ((5, 5), (2, 3), 2, ((4, 3), (5, 0))),  # padding beyond KH − 1: negative dX pads; r 0 / 1
    ((4, 5), (3, 3), 3, ((3, 2), (0, 4))),  # 6 (r 0), 6 (r 0); large hi padding
]


@pytest.mark.parametrize("case", UNEVEN, ids=lambda c: f"{c[0]}k{c[1]}s{c[2]}p{c[3]}")
def test_uneven_strides(case, gen):
    (h, w), (kh, kw), stride, padding = case
    arrays = _inputs(gen, (2, h, w, 2), (kh, kw, 2, 3), jnp.float64)
    static = {"stride": stride, "padding": padding}
    cot = _cotangent(gen, arrays, static)
    _compare(arrays, static, cot, "hand", "autodiff", TOL["float64"])
    _compare(arrays, static, cot, "hand", "fd", check.FD_TOLERANCE["float64"])


def test_uneven_cases_really_leave_a_remainder():
    """The table above exercises r > 0 (the +r padding of dX, the −r of dW) in both dims."""
    hit = set()
    for (h, w), (kh, kw), stride, padding in UNEVEN:
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        if padding == "VALID":
            pads = ((0, 0), (0, 0))
        elif padding == "SAME":
            pads = tuple(
                tuple(p) for p in jax.lax.padtype_to_pads((h, w), (kh, kw), (sh, sw), "SAME")
            )
        else:
            pads = padding
        if _remainder(h, *pads[0], kh, sh):
            hit.add("H")
        if _remainder(w, *pads[1], kw, sw):
            hit.add("W")
    assert hit == {"H", "W"}


# -- explicit bwd pieces: shapes, dtypes, bias sum ------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bwd_shapes_dtypes_and_bias(dtype, gen):
    x, w, b = _inputs(gen, (2, 7, 6, 3), (3, 2, 3, 4), dtype)
    fwd = jax.jit(conv2d_fwd, static_argnames=("stride", "padding"))
    bwd = jax.jit(conv2d_bwd, static_argnames=("stride", "padding"))
    y, res = fwd(x, w, b, stride=(2, 3), padding="VALID")
    assert y.shape == (2, 3, 2, 4) and y.dtype == jnp.dtype(dtype)
    assert [r.shape for r in res] == [x.shape, w.shape]  # keeps X and W only
    dy = _normal(gen, y.shape, dtype)
    dx, dw, db = bwd(res, dy, stride=(2, 3), padding="VALID")
    for g, a in ((dx, x), (dw, w), (db, b)):
        assert g.shape == a.shape and g.dtype == a.dtype
    np.testing.assert_allclose(db, np.asarray(dy, np.float64).sum(axis=(0, 1, 2)), rtol=1e-6)
    # Cols never read by a window get exactly zero gradient: windows start at cols 0 and 3
    # (width 2), so col 2 (a gap) and col 5 (the remainder, (6 − 2) mod 3 = 1) are never read.
    np.testing.assert_array_equal(np.asarray(dx[:, :, 2::3, :]), 0.0)
    assert np.all(np.asarray(dx[:, :, [0, 1, 3, 4], :]) != 0.0)


# -- jit vs eager; static lists --------------------------------------------------------------
def test_jit_equals_eager(gen):
    arrays = _inputs(gen, (2, 7, 6, 2), (3, 3, 2, 2), jnp.float64)
    static = {"stride": (2, 3), "padding": ((1, 0), (2, 1))}
    cot = _cotangent(gen, arrays, static)
    eager = conv2d(*arrays, **static)
    np.testing.assert_allclose(jax.jit(lambda *a: conv2d(*a, **static))(*arrays), eager, 1e-13)
    np.testing.assert_allclose(eager, conv2d.autodiff(*arrays, **static), 1e-13)
    gj = check.op_gradients(conv2d, arrays, static, cot, "hand", jit=True)
    ge = check.op_gradients(conv2d, arrays, static, cot, "hand", jit=False)
    assert check.compare(gj, ge, tol=1e-13).ok


def test_lists_and_symmetric_pairs_are_accepted(gen):
    x, w, b = _inputs(gen, (1, 6, 7, 2), (3, 2, 2, 2), jnp.float64)
    want = conv2d(x, w, b, stride=(2, 1), padding=((1, 1), (2, 2)))
    np.testing.assert_allclose(conv2d(x, w, b, stride=[2, 1], padding=[[1, 1], [2, 2]]), want)
    np.testing.assert_allclose(conv2d(x, w, b, stride=(2, 1), padding=(1, 2)), want)
    np.testing.assert_allclose(conv2d(x, w, b, (2, 1), [1, 2]), want)
    same = conv2d(x, w, b, stride=1, padding=1)
    np.testing.assert_allclose(same, conv2d(x, w, b, 1, ((1, 1), (1, 1))))


# -- bad input --------------------------------------------------------------------------------
def _ok():
    x = jnp.ones((2, 5, 5, 3))
    w = jnp.ones((3, 3, 3, 4))
    b = jnp.ones((4,))
    return x, w, b


BAD = [
    (lambda x, w, b: ((x[0], w, b), {}), ValueError, r"conv2d: x must have 4 dims.*\(5, 5, 3\)"),
    (lambda x, w, b: ((x, w[0], b), {}), ValueError, r"conv2d: w must have 4 dims"),
    (lambda x, w, b: ((x, w, b[None]), {}), ValueError, r"conv2d: b must have 1 dims"),
    (
        lambda x, w, b: ((x[..., :2], w, b), {}),
        ValueError,
        r"conv2d: x has 2 channels but w expects 3",
    ),
    (lambda x, w, b: ((x, w, b[:3]), {}), ValueError, r"conv2d: b has 3 entries but w has 4"),
    (
        lambda x, w, b: ((x.astype(jnp.float32), w, b), {}),
        TypeError,
        r"conv2d: arrays must share one dtype",
    ),
    (
        lambda x, w, b: ((x.astype(jnp.int32), w, b), {}),
        TypeError,
        r"conv2d: x must be a floating-point array",
    ),
    (lambda x, w, b: ((x, w, b), {"stride": 0}), ValueError, r"conv2d: stride must be >= 1"),
    (lambda x, w, b: ((x, w, b), {"stride": (1, -2)}), ValueError, r"conv2d: stride must be"),
    (lambda x, w, b: ((x, w, b), {"stride": 1.5}), TypeError, r"conv2d: stride must be an int"),
    (lambda x, w, b: ((x, w, b), {"stride": (1, 2, 3)}), TypeError, r"conv2d: stride must be"),
    (lambda x, w, b: ((x, w, b), {"padding": "FULL"}), ValueError, r"conv2d: padding must be 'S"),
    (lambda x, w, b: ((x, w, b), {"padding": -1}), ValueError, r"conv2d: padding must be >= 0"),
    (
        lambda x, w, b: ((x, w, b), {"padding": ((0, 1), (2, -1))}),
        ValueError,
        r"conv2d: padding must be >= 0",
    ),
    (lambda x, w, b: ((x, w, b), {"padding": 1.0}), TypeError, r"conv2d: padding must be"),
    (lambda x, w, b: ((x, w, b), {"padding": (1, 2, 3)}), TypeError, r"conv2d: padding must be"),
    (
        lambda x, w, b: ((x, w, b), {"padding": ((1, 2, 3), (0, 0))}),
        TypeError,
        r"conv2d: padding \(per spatial dim\) must be",
    ),
    (
        lambda x, w, b: ((x[:, :2], w, b), {"padding": "VALID"}),
        ValueError,
        r"conv2d: kernel H size 3 is larger than the padded input \(2 \+ 0 \+ 0 = 2\)",
    ),
    (
        lambda x, w, b: ((x[:, :, :1], w, b), {"padding": ((0, 0), (1, 0))}),
        ValueError,
        r"conv2d: kernel W size 3 is larger than the padded input \(1 \+ 1 \+ 0 = 2\)",
    ),
]


@pytest.mark.parametrize("make, error, match", BAD)
def test_bad_input_raises(make, error, match):
    arrays, static = make(*_ok())
    with pytest.raises(error, match=match):
        conv2d(*arrays, **static)
    with pytest.raises(error, match=match):  # also when traced under jit
        jax.jit(lambda *a: conv2d(*a, **static))(*arrays)


def test_small_input_is_fine_with_padding():
    """The same too-small input is valid once padding makes room for the kernel."""
    x, w, b = _ok()
    y = conv2d(x[:, :2], w, b, padding="SAME")
    assert y.shape == (2, 2, 5, 4)


def test_unknown_keyword_names_the_op():
    with pytest.raises(TypeError, match=r"conv2d: .*strides"):
        conv2d(*_ok(), strides=2)
