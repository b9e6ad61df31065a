"""conv2d: hand VJP (transposed conv for dX, correlation for dW) vs jax.grad and finite differences.

Shapes, strides and paddings are drawn by hypothesis; the uneven cases (where the last window
leaves rows/cols of the padded input unused, r = (H + pads − KH) mod stride > 0) are also pinned
explicitly, since that remainder is the classic place for a transposed-convolution bug.

The op runs one of two formulations (im2col GEMMs or `lax.conv_general_dilated`, see
`funcbp.ops.conv`), picked by a size rule; at the small shapes drawn here the rule picks the
GEMMs, so every gradient test also runs with the formulation forced (`_forced`), each of Y, dX,
dW from either side.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcbp import check
from funcbp.check import mutate
from funcbp.ops import _sample
from funcbp.ops import conv as C
from funcbp.ops._op import Op
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


METHODS = ["gemm", "lax"]
MIXED = [("gemm", "lax", "gemm"), ("lax", "gemm", "lax"), ("lax", "lax", "gemm")]


@functools.cache
def _forced(method):
    """conv2d with fwd and bwd pinned to one formulation (``method`` as in `conv2d_fwd`);
    not registered. ``None``: the op itself (the size rule)."""
    if method is None:
        return conv2d
    return Op(
        "conv2d",
        C.conv2d_reference,
        functools.partial(conv2d_fwd, method=method),
        functools.partial(conv2d_bwd, method=method),
        C._sample_conv2d,
        3,
        C._validate,
    )


def _compare(arrays, static, cot, a, b, tol, method=None):
    op = _forced(method)
    ga = check.op_gradients(op, arrays, static, cot, a)
    gb = check.op_gradients(op, arrays, static, cot, b)
    report = check.compare(ga, gb, tol=tol, name=f"conv2d[{method}]", a_name=a, b_name=b)
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
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@FEW
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1))
def test_hand_matches_autodiff(cfg, seed, dtype, method):
    shape_x, shape_w, stride, padding = cfg
    gen = np.random.default_rng(seed)
    arrays = _inputs(gen, shape_x, shape_w, dtype)
    static = {"stride": stride, "padding": padding}
    cot = _cotangent(gen, arrays, static)
    _compare(arrays, static, cot, "hand", "autodiff", TOL[dtype], method)


@FEW
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1), method=st.sampled_from([None, *MIXED]))
def test_rule_and_mixed_plans_match_autodiff(cfg, seed, method):
    """The op itself (its size rule) and each of Y, dX, dW taken from either formulation."""
    shape_x, shape_w, stride, padding = cfg
    gen = np.random.default_rng(seed)
    arrays = _inputs(gen, shape_x, shape_w, jnp.float64)
    static = {"stride": stride, "padding": padding}
    cot = _cotangent(gen, arrays, static)
    _compare(arrays, static, cot, "hand", "autodiff", TOL["float64"], method)


@pytest.mark.parametrize("method", METHODS)
@FEW
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1))
def test_hand_matches_finite_differences(cfg, seed, method):
    shape_x, shape_w, stride, padding = cfg
    gen = np.random.default_rng(seed)
    arrays = _inputs(gen, shape_x, shape_w, jnp.float64)
    static = {"stride": stride, "padding": padding}
    cot = _cotangent(gen, arrays, static)
    _compare(arrays, static, cot, "hand", "fd", check.FD_TOLERANCE["float64"], method)


@pytest.mark.parametrize("method", METHODS)
@FEW
@given(cfg=configs(), seed=st.integers(0, 2**31 - 1))
def test_forward_of_each_formulation_matches_reference(cfg, seed, method):
    """The custom-VJP forward (what a differentiated call returns) equals the reference."""
    shape_x, shape_w, stride, padding = cfg
    gen = np.random.default_rng(seed)
    arrays = _inputs(gen, shape_x, shape_w, jnp.float64)
    y, res = jax.jit(functools.partial(conv2d_fwd, stride=stride, padding=padding, method=method))(
        *arrays
    )
    want = C.conv2d_reference(*arrays, stride=stride, padding=padding)
    assert y.shape == want.shape and y.dtype == want.dtype
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    assert len(res) == 2  # keeps X and W only, whichever formulation
    np.testing.assert_array_equal(res[0], arrays[0])
    np.testing.assert_array_equal(res[1], arrays[1])


@pytest.mark.parametrize("method", METHODS)
def test_second_order_through_each_bwd(method, gen):
    """Reverse-over-reverse: the HVP of ⟨conv2d(x, w, b), u⟩ through the hand bwd equals the
    reference's (conv2d is bilinear in (x, w): the cross terms are nonzero)."""
    arrays = _inputs(gen, (2, 6, 5, 2), (3, 2, 2, 3), jnp.float64)
    static = {"stride": (2, 1), "padding": ((1, 0), (2, 1))}
    u = _cotangent(gen, arrays, static)
    v = tuple(_normal(gen, a.shape, a.dtype) for a in arrays)
    op = _forced(method)

    def hvp(fn):
        loss = lambda *a: jnp.vdot(fn(*a, **static), u)
        inner = lambda *a: sum(
            jnp.vdot(g, t) for g, t in zip(jax.grad(loss, (0, 1, 2))(*a), v, strict=True)
        )
        return jax.jit(jax.grad(inner, (0, 1, 2)))(*arrays)

    got, want = hvp(op), hvp(C.conv2d_reference)
    report = check.compare(got, want, tol=1e-10, name=f"conv2d[{method}] hvp")
    assert report.ok, str(report)
    assert float(jnp.linalg.norm(want[0])) > 0 and float(jnp.linalg.norm(want[1])) > 0


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


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", UNEVEN, ids=lambda c: f"{c[0]}k{c[1]}s{c[2]}p{c[3]}")
def test_uneven_strides(case, method, gen):
    (h, w), (kh, kw), stride, padding = case
    arrays = _inputs(gen, (2, h, w, 2), (kh, kw, 2, 3), jnp.float64)
    static = {"stride": stride, "padding": padding}
    cot = _cotangent(gen, arrays, static)
    _compare(arrays, static, cot, "hand", "autodiff", TOL["float64"], method)
    _compare(arrays, static, cot, "hand", "fd", check.FD_TOLERANCE["float64"], method)


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
@pytest.mark.parametrize("method", [None, *METHODS])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bwd_shapes_dtypes_and_bias(dtype, method, gen):
    x, w, b = _inputs(gen, (2, 7, 6, 3), (3, 2, 3, 4), dtype)
    fwd = jax.jit(conv2d_fwd, static_argnames=("stride", "padding", "method"))
    bwd = jax.jit(conv2d_bwd, static_argnames=("stride", "padding", "method"))
    y, res = fwd(x, w, b, stride=(2, 3), padding="VALID", method=method)
    assert y.shape == (2, 3, 2, 4) and y.dtype == jnp.dtype(dtype)
    assert [r.shape for r in res] == [x.shape, w.shape]  # keeps X and W only
    dy = _normal(gen, y.shape, dtype)
    dx, dw, db = bwd(res, dy, stride=(2, 3), padding="VALID", method=method)
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


# -- the size rule and the formulation choice ------------------------------------------------
RULE = [
    # x shape, w shape, dtype, expected: the measured cases of the module docstring
    ((128, 8, 8, 1), (3, 3, 1, 32), "float32", True),  # the CNN's first conv: C ≤ 8
    ((128, 8, 8, 32), (3, 3, 32, 64), "float32", True),  # its second: P 9 MiB, O ≥ 32
    ((128, 8, 8, 32), (3, 3, 32, 64), "float64", False),  # the same in float64: P 18 MiB
    ((512, 8, 8, 32), (3, 3, 32, 64), "float32", False),  # P 36 MiB
    ((128, 8, 8, 16), (3, 3, 16, 16), "float32", False),  # O < 32
    ((32, 8, 8, 128), (3, 3, 128, 128), "float32", False),  # C > 64
    ((64, 8, 8, 64), (3, 3, 64, 128), "float32", True),  # P 9 MiB, C ≤ 64, O ≥ 32
    ((128, 8, 8, 16), (5, 5, 16, 64), "float32", False),  # 25 taps
    ((32, 32, 32, 3), (5, 5, 3, 32), "float32", True),  # few channels: any taps (P 9.4 MiB)
    ((64, 32, 32, 3), (5, 5, 3, 32), "float32", False),  # ... up to P 16 MiB (here 18.8)
    ((4096, 32, 32, 64), (1, 1, 64, 64), "float32", True),  # 1×1: a GEMM, whatever the size
]


@pytest.mark.parametrize("shape_x, shape_w, dtype, want", RULE)
def test_size_rule(shape_x, shape_w, dtype, want):
    out_hw = shape_x[1:3]  # stride 1, "SAME"
    assert C.use_gemm(shape_x, shape_w, out_hw, jnp.dtype(dtype).itemsize) is want
    x = jax.ShapeDtypeStruct(shape_x, dtype)
    w = jax.ShapeDtypeStruct(shape_w, dtype)
    assert C._plan(None, x, w, out_hw) == (("gemm" if want else "lax"),) * 3


def test_gemm_step_builds_im2col_once_per_layer(gen):
    """A jitted gradient builds P = im2col(X) once: the backward's P (dW = Pᵀ dY) is merged
    with the forward's (the reason P is not kept as a residual); the lax path builds none."""
    x, w, b = _inputs(gen, (4, 6, 6, 2), (3, 3, 2, 4), jnp.float32)
    u = _normal(gen, (4, 6, 6, 4), jnp.float32)

    def concatenates(op):
        loss = lambda x, w, b: jnp.vdot(op(x, w, b), u)
        text = jax.jit(jax.grad(loss, (0, 1, 2))).lower(x, w, b).compile().as_text()
        return sum(" concatenate(" in line for line in text.splitlines())

    assert concatenates(_forced("gemm")) == 1
    assert concatenates(conv2d) == 1  # the rule picks the GEMMs here
    assert concatenates(_forced("lax")) == 0


@pytest.mark.parametrize("method", METHODS)
def test_mutants_of_each_formulation_are_killed(method, key):
    """`funcbp.mutate`'s broken backwards of each formulation are all flagged (the registry's
    mutation test sees only the one the rule picks at its sampled shapes)."""
    result = mutate.mutate_op(_forced(method), key)
    assert result.made >= 9, result.made
    assert not result.survivors, [(s.name, s.error) for s in result.survivors]
    assert result.killed == result.made, [r for r in result.results if not r.killed]


@pytest.mark.parametrize("method", ["GEMM", "im2col", ("lax", "gemm"), ("lax",) * 4])
def test_unknown_method_raises(method, gen):
    x, w, b = _inputs(gen, (1, 4, 4, 1), (3, 3, 1, 2), jnp.float32)
    with pytest.raises(ValueError, match=r"conv2d: method must be 'gemm', 'lax', a triple"):
        conv2d_fwd(x, w, b, method=method)
    with pytest.raises(ValueError, match=r"conv2d: method must be"):
        conv2d_bwd((x, w), jnp.zeros((1, 4, 4, 2)), method=method)


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
