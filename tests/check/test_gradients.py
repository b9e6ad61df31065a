"""The gradient checker must be able to fail: planted bugs are caught, mismatches raise."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from funcbp import check
from funcbp.ops import REGISTRY, linear, relu, sigmoid, softmax
from funcbp.ops.linear import linear_bwd
from tests.helpers import op_seeds

SEEDS = op_seeds()  # a shared pool: see tests.helpers.op_seeds


# -- planted bugs ----------------------------------------------------------------------------
def _linear_dw_times_2(res, dy):
    dx, dw, db = linear_bwd(res, dy)
    return dx, 2 * dw, db


def _linear_dw_transposed(res, dy):
    """dW = (Xᵀ dY)ᵀ: the right shape only for square W, and wrong there."""
    dx, dw, db = linear_bwd(res, dy)
    return dx, dw.T, db


def _sample_square_linear(key, dtype):
    (x, w, b), static = linear.sample(key, dtype)
    n = w.shape[0]
    kw, kb = jax.random.split(jax.random.fold_in(key, 1))
    return (x, jax.random.normal(kw, (n, n), dtype), jax.random.normal(kb, (n,), dtype)), static


def _softmax_without_subtracted_term(res, g, axis=-1):
    (y,) = res
    return (y * g,)  # forgot − y ⟨g, y⟩


def _relu_wrong_side(res, g, **static):
    """The gradient passed where x <= 0 instead of x > 0 (whatever relu kept for its mask)."""
    (right,) = relu.bwd(res, g, **static)
    return (g - right,)


def _sigmoid_off_by_1e6(res, g):
    (s,) = res
    return (g * s * (1 - s) * (1 + 1e-6),)  # a relative error of 1e-6, nothing more


BROKEN = {
    "linear dW x2": (linear.with_bwd(_linear_dw_times_2, name="linear_dw_x2"), ("[1]",)),
    "linear dW transposed": (
        dataclasses.replace(
            linear.with_bwd(_linear_dw_transposed, name="linear_dw_t"),
            sample=_sample_square_linear,
        ),
        ("[1]",),
    ),
    "softmax no subtraction": (
        softmax.with_bwd(_softmax_without_subtracted_term, name="softmax_bad"),
        ("[0]",),
    ),
    "relu wrong side": (relu.with_bwd(_relu_wrong_side, name="relu_bad"), ("[0]",)),
}


@pytest.mark.parametrize("bug", sorted(BROKEN))
@settings(max_examples=max(2, settings.default.max_examples // 2))
@given(seed=SEEDS)
def test_planted_bug_is_caught(bug, seed):
    """Against autodiff (both dtypes), against finite differences, and on the explicit path."""
    op, bad_leaves = BROKEN[bug]
    key = jax.random.key(seed)
    if bug == "linear dW transposed":  # the draw check_op makes; a 1×1 W is its own transpose
        (_, w, _), _ = op.sample(jax.random.split(key)[0], jnp.float64)
        assume(w.shape != (1, 1))
    for a, b, dtype in [
        ("hand", "autodiff", "float64"),
        ("hand", "autodiff", "float32"),
        ("hand", "fd", "float64"),
        ("explicit", "autodiff", "float64"),
    ]:
        report = check.check_op(op, key, dtype, a, b)
        assert not report.ok, f"{bug}: {report}"
        assert "FAIL" in str(report)
        failing = tuple(leaf.path for leaf in report.leaves if not leaf.ok)
        assert failing == bad_leaves, (bug, report.leaves)
    # The same draw passes with the real backward.
    assert check.check_op(REGISTRY[op.name.split("_")[0]], key, "float64").ok


def test_small_relative_error_caught_in_float64_only(key):
    """A 1e-6 relative error fails the float64 bound (1e-10) and hides in float32's (1e-5)."""
    bad = sigmoid.with_bwd(_sigmoid_off_by_1e6, name="sigmoid_bad")
    r64 = check.check_op(bad, key, "float64")
    assert not r64.ok and 5e-7 < r64.worst_rel < 2e-6, str(r64)
    assert check.check_op(bad, key, "float32").ok


# -- compare and relative_error --------------------------------------------------------------
def test_compare_mismatched_structures_raise():
    a = (jnp.ones(3), jnp.ones(2))
    with pytest.raises(ValueError, match=r"compare t: gradient trees differ in structure"):
        check.compare(a, (jnp.ones(3),), tol=1e-10, name="t")
    with pytest.raises(ValueError, match=r"gradient trees differ in structure"):
        check.compare((jnp.ones(3), None), a, tol=1e-10)
    with pytest.raises(ValueError, match=r"gradient trees differ in structure"):
        check.compare({"w": jnp.ones(3)}, {"v": jnp.ones(3)}, tol=1e-10)
    with pytest.raises(ValueError, match=r"compare t: leaf \[1\] has shape \(2,\) vs \(3,\)"):
        check.compare(a, (jnp.ones(3), jnp.ones(3)), tol=1e-10, name="t")


def test_compare_reports_per_leaf(key):
    b = {"w": jax.random.normal(key, (3, 2)), "b": jnp.arange(1.0, 3.0)}
    a = {"w": b["w"] * (1 + 1e-3), "b": b["b"]}
    report = check.compare(a, b, tol=1e-6, name="p", a_name="hand", b_name="ref")
    by_path = {leaf.path: leaf for leaf in report.leaves}
    assert set(by_path) == {"['w']", "['b']"}
    assert by_path["['b']"].ok and by_path["['b']"].rel == 0.0
    assert not by_path["['w']"].ok
    np.testing.assert_allclose(by_path["['w']"].rel, 1e-3, rtol=1e-9)
    np.testing.assert_allclose(
        by_path["['w']"].max_abs, 1e-3 * float(jnp.max(jnp.abs(b["w"]))), rtol=1e-9
    )
    assert not report.ok and report.worst_rel == by_path["['w']"].rel
    assert "p [float64] hand vs ref" in str(report) and "FAIL" in str(report)
    # None leaves (integer arguments) on both sides are fine: nothing to compare.
    assert check.compare((jnp.ones(2), None), (jnp.ones(2), None), tol=0.0).ok


def test_compare_nan_fails():
    assert not check.compare((jnp.array([1.0, jnp.nan]),), (jnp.ones(2),), tol=1.0).ok


@given(seed=SEEDS, shape=st.lists(st.integers(1, 4), max_size=3).map(tuple))
def test_relative_error(seed, shape):
    a = np.random.default_rng(seed).standard_normal(shape)
    assert check.relative_error(a, a) == 0.0
    assert check.relative_error(jnp.asarray(a), a.copy()) == 0.0
    if np.linalg.norm(a) > 0:
        np.testing.assert_allclose(check.relative_error(1.5 * a, a), 0.5, rtol=1e-12)
    # Against an all-zero reference it is the absolute error ‖a‖.
    np.testing.assert_allclose(check.relative_error(a, np.zeros(shape)), np.linalg.norm(a))


# -- sources ---------------------------------------------------------------------------------
def test_finite_difference_grad_of_known_function(key):
    x = jax.random.normal(key, (3, 2), jnp.float64)
    y = jnp.arange(1.0, 5.0)
    f = lambda x, y: jnp.sum(x**3) * jnp.sum(jnp.sin(y))
    dx, dy = check.finite_difference_grad(f, (x, y), (0, 1))
    np.testing.assert_allclose(dx, 3 * x**2 * jnp.sum(jnp.sin(y)), rtol=1e-8)
    np.testing.assert_allclose(dy, jnp.sum(x**3) * jnp.cos(y), rtol=1e-8)


def test_op_gradients_sources_and_integer_args(key):
    op = REGISTRY["softmax_cross_entropy"]
    logits = jax.random.normal(key, (4, 3), jnp.float64)
    labels = jnp.array([0, 2, 1, 2], jnp.int32)
    cot = jnp.asarray(0.7, jnp.float64)
    got = {
        s: check.op_gradients(op, (logits, labels), {}, cot, s)
        for s in ("hand", "explicit", "autodiff", "fd")
    }
    for s, g in got.items():
        assert g[1] is None, s
        assert g[0].shape == logits.shape, s
    want = 0.7 * (jax.nn.softmax(logits) - jax.nn.one_hot(labels, 3)) / 4
    for s in ("hand", "explicit", "autodiff"):
        np.testing.assert_allclose(got[s][0], want, rtol=1e-12)
    np.testing.assert_allclose(got["fd"][0], want, rtol=1e-7)
    eager = check.op_gradients(op, (logits, labels), {}, cot, "hand", jit=False)
    np.testing.assert_allclose(eager[0], want, rtol=1e-12)
    with pytest.raises(ValueError, match=r"op_gradients: source must be one of"):
        check.op_gradients(op, (logits, labels), {}, cot, "numeric")


def test_random_cotangent_matches_structure(key):
    out = (jnp.ones((2, 3), jnp.float32), {"c": jax.ShapeDtypeStruct((4,), jnp.float64)})
    cot = check.random_cotangent(key, out)
    assert jax.tree_util.tree_structure(cot) == jax.tree_util.tree_structure(out)
    assert cot[0].shape == (2, 3) and cot[0].dtype == jnp.float32
    assert cot[1]["c"].shape == (4,) and cot[1]["c"].dtype == jnp.float64
    assert not np.allclose(cot[0], 1.0) and float(jnp.std(cot[0])) > 0
    again = check.random_cotangent(key, out)
    np.testing.assert_array_equal(again[0], cot[0])
    other = check.random_cotangent(jax.random.split(key)[0], out)
    assert not np.array_equal(other[0], cot[0])
    # Also under tracing (a traced key).
    traced = jax.jit(lambda k: check.random_cotangent(k, out))(key)
    assert traced[0].shape == (2, 3) and traced[0].dtype == jnp.float32


def test_check_op_fd_needs_float64(key):
    with pytest.raises(ValueError, match=r"check_op relu: no tolerance for hand vs fd in float32"):
        check.check_op(relu, key, "float32", "hand", "fd")


def test_require_x64_off():
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(RuntimeError, match=r"float64 checks need jax_enable_x64"):
            check.require_x64()
    finally:
        jax.config.update("jax_enable_x64", True)
    check.require_x64()


# -- check_registry --------------------------------------------------------------------------
def test_check_registry_one_report_per_op_dtype_pair():
    ops = [linear, relu, REGISTRY["softmax_cross_entropy"]]
    reports = check.check_registry(seeds=iter([0, 1]), ops=ops)
    rows = [(r.name, r.dtype, r.a, r.b) for r in reports]
    want = [
        (op.name, dtype, "hand", other)
        for op in ops
        for dtype, other in [("float32", "autodiff"), ("float64", "autodiff"), ("float64", "fd")]
    ]
    assert rows == want
    assert all(r.ok for r in reports), [str(r) for r in reports if not r.ok]
    assert all(r.detail for r in reports)  # the worst input's shapes
    summary = check.summarise(reports)
    assert set(summary) == {op.name for op in ops}
    assert all(set(cols) == {"float32", "float64", "fd"} for cols in summary.values())


def test_check_registry_reports_the_failing_draw():
    bad = linear.with_bwd(_linear_dw_times_2, name="linear_dw_x2")
    reports = check.check_registry(
        dtypes=["float64"], seeds=range(2), ops=[bad], pairs=[("hand", "autodiff")]
    )
    assert len(reports) == 1 and not reports[0].ok
    with pytest.raises(ValueError, match=r"seeds must not be empty"):
        check.check_registry(seeds=[], ops=[relu])


def test_many_gradients_match_op_gradients_draw_by_draw():
    op = REGISTRY["softmax_cross_entropy"]
    draws = [check.gradients._draw(op, jax.random.key(s), "float64") for s in (0, 1, 2)]
    sources = [("hand", "fd"), ("explicit", "autodiff"), check.SOURCES]
    got = check.many_gradients(op, draws, sources)
    for (arrays, static, cot), srcs, grads in zip(draws, sources, got, strict=True):
        assert set(grads) == set(srcs)
        for s in srcs:
            want = check.op_gradients(op, arrays, static, cot, s)
            for g, w in zip(grads[s], want, strict=True):
                assert (g is None) == (w is None), s
                if w is not None:
                    np.testing.assert_allclose(g, w, rtol=1e-9 if s == "fd" else 1e-13)
    with pytest.raises(ValueError, match=r"many_gradients: sources must be in .*'numeric'"):
        check.many_gradients(op, draws[:1], [("hand", "numeric")])


def test_check_registry_worst_draw_is_check_ops_worst():
    bad = linear.with_bwd(_linear_dw_times_2, name="linear_dw_x2")
    (report,) = check.check_registry(
        dtypes=["float64"], seeds=range(3), ops=[bad], pairs=[("hand", "autodiff")]
    )
    runs = [check.check_op(bad, jax.random.key(s), "float64") for s in range(3)]
    worst = max(runs, key=lambda r: r.worst_rel)
    assert report.detail == worst.detail
    np.testing.assert_allclose(report.worst_rel, worst.worst_rel, rtol=1e-12)
