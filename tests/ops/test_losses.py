"""Losses: mse, softmax_cross_entropy (integer, one-hot and soft labels), BCE with logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from funcbp import check
from funcbp.ops import binary_cross_entropy_with_logits as bce
from funcbp.ops import mse, softmax_cross_entropy

SEEDS = st.integers(0, 2**31 - 1)
TOL = check.TOLERANCE["float64"]


def _logits_labels(seed, lead, n_classes, scale=2.0):
    """Random logits and integer labels, drawn on the host (no compile per shape)."""
    gen = np.random.default_rng(seed)
    logits = jnp.asarray(scale * gen.standard_normal((*lead, n_classes)))
    labels = jnp.asarray(gen.integers(0, n_classes, size=lead), jnp.int32)
    return logits, labels


def _nll(logits, labels):
    """Independent integer-label cross-entropy: jax.nn.log_softmax and a one-hot sum."""
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1))


LEAD = st.one_of(
    st.tuples(st.integers(1, 6)),  # (N,)
    st.tuples(st.integers(1, 3), st.integers(1, 4)),  # (B, T)
)


# -- softmax_cross_entropy -------------------------------------------------------------------
@jax.jit
def _sce_everything(logits, labels):
    loss, dz = jax.value_and_grad(softmax_cross_entropy)(logits, labels)
    n = labels.size
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return (
        loss,
        _nll(logits, labels),
        dz,
        jax.grad(softmax_cross_entropy.autodiff)(logits, labels),
        jax.grad(_nll)(logits, labels),
        (jax.nn.softmax(logits) - onehot) / n,  # (p − onehot) / N, written out
    )


@given(seed=SEEDS, lead=LEAD, n_classes=st.integers(2, 6))
def test_sce_integer_labels(seed, lead, n_classes):
    """Integer labels (N,) or (B, T) with logits (..., C): value and gradient."""
    logits, labels = _logits_labels(seed, lead, n_classes)
    loss, nll, dz, dz_ref, dz_nll, dz_formula = _sce_everything(logits, labels)
    np.testing.assert_allclose(loss, nll, rtol=1e-13)
    assert check.relative_error(dz, dz_ref) <= TOL
    assert check.relative_error(dz, dz_nll) <= TOL
    np.testing.assert_allclose(dz, dz_formula, rtol=1e-12, atol=1e-15)


@given(seed=SEEDS, lead=LEAD, n_classes=st.integers(2, 6))
def test_sce_one_hot_equals_integer_labels(seed, lead, n_classes):
    logits, labels = _logits_labels(seed, lead, n_classes)
    onehot = jax.nn.one_hot(labels, n_classes, dtype=logits.dtype)

    @jax.jit
    def both(logits, labels, onehot):
        by_ids = jax.value_and_grad(softmax_cross_entropy)(logits, labels)
        by_onehot = jax.value_and_grad(softmax_cross_entropy, argnums=(0, 1))(logits, onehot)
        return by_ids, by_onehot, jax.nn.log_softmax(logits)

    (l_int, dz_int), (l_hot, (dz_hot, dq)), logp = both(logits, labels, onehot)
    np.testing.assert_allclose(l_hot, l_int, rtol=1e-13)
    assert check.relative_error(dz_hot, dz_int) <= 1e-13
    # d/dq of −Σ q log p / N is −log p / N, whatever q is.
    n = int(np.prod(lead))
    np.testing.assert_allclose(dq, -logp / n, rtol=1e-12)


@given(seed=SEEDS, lead=LEAD, n_classes=st.integers(2, 6))
def test_sce_soft_labels_differentiable_in_both(seed, lead, n_classes):
    logits, _ = _logits_labels(seed, lead, n_classes)
    z = np.random.default_rng(seed ^ 1).standard_normal(logits.shape)
    q = jnp.asarray(np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True))  # soft labels
    g = 1.7  # a non-unit upstream cotangent

    def grads(fn):
        return jax.grad(lambda z, q: g * fn(z, q), argnums=(0, 1))(logits, q)

    hand, ref = jax.jit(
        lambda: (grads(softmax_cross_entropy), grads(softmax_cross_entropy.autodiff))
    )()
    report = check.compare(hand, ref, tol=TOL, name="sce")
    assert report.ok, str(report)
    fd = jax.jit(
        lambda z, q: check.finite_difference_grad(
            lambda z, q: g * softmax_cross_entropy.autodiff(z, q), (z, q), (0, 1)
        )
    )(logits, q)
    assert check.compare(hand, fd, tol=check.FD_TOLERANCE["float64"]).ok


@pytest.mark.parametrize("bad", [-1, 3, 100])
def test_sce_out_of_range_labels(bad):
    logits, _ = _logits_labels(0, (4,), 3)
    labels = jnp.array([0, bad, 2, 1], jnp.int32)
    with pytest.raises(
        ValueError,
        match=r"softmax_cross_entropy: labels must lie in \[0, 3\) for 3 classes, got values in",
    ):
        softmax_cross_entropy(logits, labels)
    # Under jit the values are unknown at trace time: the loss is NaN (the NaN guard's job) ...
    loss = jax.jit(softmax_cross_entropy)(logits, labels)
    assert bool(jnp.isnan(loss))
    assert bool(jnp.isnan(jax.jit(softmax_cross_entropy.autodiff)(logits, labels)))
    # ... and the hand gradient agrees with autodiff's (the bad row contributes nothing).
    hand = jax.jit(jax.grad(softmax_cross_entropy))(logits, labels)
    ref = jax.jit(jax.grad(softmax_cross_entropy.autodiff))(logits, labels)
    np.testing.assert_allclose(hand, ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(hand[1], 0.0)


def test_sce_grad_with_integer_labels_has_no_float0_trouble():
    logits, labels = _logits_labels(5, (2, 3), 4)
    # Labels as a (non-differentiated) argument, closed over, and under vmap.
    dz = jax.grad(softmax_cross_entropy)(logits, labels)
    dz2 = jax.grad(lambda z: softmax_cross_entropy(z, labels))(logits)
    np.testing.assert_array_equal(dz, dz2)
    assert dz.dtype == logits.dtype and dz.shape == logits.shape
    per_row = jax.vmap(jax.grad(softmax_cross_entropy))(logits, labels)
    ref = jax.vmap(jax.grad(softmax_cross_entropy.autodiff))(logits, labels)
    np.testing.assert_allclose(per_row, ref, rtol=1e-12, atol=1e-15)
    # Asking for the labels' gradient gives float0 zeros, as for any integer input.
    _, dl = jax.grad(softmax_cross_entropy, argnums=(0, 1), allow_int=True)(logits, labels)
    assert dl.dtype == jax.dtypes.float0 and dl.shape == labels.shape


def test_sce_bad_labels():
    logits = jnp.ones((4, 3))
    with pytest.raises(ValueError, match=r"float labels \(one-hot or soft\) must have the logits'"):
        softmax_cross_entropy(logits, jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"float labels .* got \(4,\); integer class ids need"):
        softmax_cross_entropy(logits, jnp.ones((4,)))
    with pytest.raises(ValueError, match=r"integer labels must have shape \(4,\) .* got \(4, 3\)"):
        softmax_cross_entropy(logits, jnp.ones((4, 3), jnp.int32))
    with pytest.raises(TypeError, match=r"logits must be a floating-point array"):
        softmax_cross_entropy(jnp.ones((4, 3), jnp.int32), jnp.zeros((4,), jnp.int32))
    with pytest.raises(TypeError, match=r"arrays must share one dtype, got logits float64, labels"):
        softmax_cross_entropy(logits, jnp.ones((4, 3), jnp.float32))
    with pytest.raises(ValueError, match=r"float labels"):
        jax.jit(softmax_cross_entropy).trace(
            jax.ShapeDtypeStruct((4, 3), jnp.float64), jax.ShapeDtypeStruct((3, 4), jnp.float64)
        )


def test_sce_huge_logits_finite():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]])
    labels = jnp.array([1, 0], jnp.int32)
    loss, dz = jax.value_and_grad(softmax_cross_entropy)(logits, labels)
    assert bool(jnp.isfinite(loss)) and bool(jnp.all(jnp.isfinite(dz)))
    np.testing.assert_allclose(loss, (2e4 + 2e4 + np.log(2)) / 2, rtol=1e-12)
    np.testing.assert_allclose(dz, jax.grad(softmax_cross_entropy.autodiff)(logits, labels))


# -- binary_cross_entropy_with_logits ----------------------------------------------------
@given(seed=SEEDS, shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple))
def test_bce_matches_naive_formula(seed, shape):
    gen = np.random.default_rng(seed)
    z = jnp.asarray(3 * gen.standard_normal(shape))
    t = jnp.asarray(gen.uniform(size=shape))

    def naive(z, t):
        s = jax.nn.sigmoid(z)
        return jnp.mean(-t * jnp.log(s) - (1 - t) * jnp.log(1 - s))

    @jax.jit
    def everything(z, t):
        return (
            bce(z, t),
            naive(z, t),
            jax.grad(bce, argnums=(0, 1))(z, t),
            jax.grad(naive, argnums=(0, 1))(z, t),
            jax.grad(bce.autodiff, argnums=(0, 1))(z, t),
        )

    loss, loss_naive, hand, ref_naive, ref_auto = everything(z, t)
    np.testing.assert_allclose(loss, loss_naive, rtol=1e-12)
    for ref in (ref_naive, ref_auto):
        report = check.compare(hand, ref, tol=1e-10, name="bce")
        assert report.ok, str(report)


def test_bce_logits_pm100_finite():
    z = jnp.array([-100.0, -30.0, 30.0, 100.0, 100.0, -100.0])
    t = jnp.array([0.0, 1.0, 0.0, 1.0, 0.3, 0.8])
    loss, (dz, dt) = jax.value_and_grad(bce, argnums=(0, 1))(z, t)
    assert bool(jnp.isfinite(loss))
    assert bool(jnp.all(jnp.isfinite(dz))) and bool(jnp.all(jnp.isfinite(dt)))
    # Per element: max(z,0) − z t + log1p(e^{−|z|}), computed in closed form here.
    per = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    np.testing.assert_allclose(loss, per.mean(), rtol=1e-13)
    rz, rt = jax.grad(bce.autodiff, argnums=(0, 1))(z, t)
    np.testing.assert_allclose(dz, rz, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(dt, rt, rtol=1e-12)
    np.testing.assert_allclose(dz, (np.asarray(jax.nn.sigmoid(z)) - t) / 6, rtol=1e-12)


def test_bce_bad_inputs():
    with pytest.raises(ValueError, match=r"binary_cross_entropy_with_logits: targets must have"):
        bce(jnp.ones((3,)), jnp.ones((4,)))
    with pytest.raises(TypeError, match=r"targets must be a floating-point array"):
        bce(jnp.ones((3,)), jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match=r"logits must not be empty"):
        bce(jnp.ones((0,)), jnp.ones((0,)))


# -- mse -------------------------------------------------------------------------------------
@given(seed=SEEDS, shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple))
def test_mse_value_and_grads(seed, shape):
    gen = np.random.default_rng(seed)
    p = jnp.asarray(gen.standard_normal(shape))
    t = jnp.asarray(gen.standard_normal(shape))
    np.testing.assert_allclose(mse(p, t), np.mean((np.asarray(p) - np.asarray(t)) ** 2))
    dp, dt = jax.jit(jax.grad(lambda p, t: 0.3 * mse(p, t), argnums=(0, 1)))(p, t)
    n = max(int(np.prod(shape)), 1)
    np.testing.assert_allclose(dp, 0.3 * 2 * (p - t) / n, rtol=1e-12)
    np.testing.assert_allclose(dt, -dp, rtol=1e-15)


@pytest.mark.parametrize(
    ("pred", "target"), [((3,), (4,)), ((2, 3), (3, 2)), ((2, 3), (2, 3, 1)), ((3,), ())]
)
def test_mse_shape_mismatch(pred, target):
    with pytest.raises(ValueError, match=r"mse: target must have shape .* \(the shape of pred\)"):
        mse(jnp.ones(pred), jnp.ones(target))
    with pytest.raises(ValueError, match=r"mse: target must have shape"):
        jax.jit(mse).trace(
            jax.ShapeDtypeStruct(pred, jnp.float64), jax.ShapeDtypeStruct(target, jnp.float64)
        )


def test_mse_bad_dtypes():
    with pytest.raises(TypeError, match=r"mse: arrays must share one dtype"):
        mse(jnp.ones(3), jnp.ones(3, jnp.float32))
    with pytest.raises(TypeError, match=r"mse: pred must be a floating-point array"):
        mse(jnp.ones(3, jnp.int32), jnp.ones(3))


# -- every loss: empty input -------------------------------------------------------------------
_EMPTY = [
    (mse, (0, 3), (0, 3), jnp.float64),
    (bce, (0, 3), (0, 3), jnp.float64),
    (softmax_cross_entropy, (0, 3), (0,), jnp.int32),  # empty batch, integer labels
    (softmax_cross_entropy, (0, 3), (0, 3), jnp.float64),  # empty batch, soft labels
    (softmax_cross_entropy, (2, 0, 3), (2, 0), jnp.int32),  # empty (B, T) positions
    (softmax_cross_entropy, (4, 0), (4,), jnp.int32),  # no classes
]


@pytest.mark.parametrize(("loss", "first", "second", "dtype"), _EMPTY)
def test_every_loss_rejects_empty_input(loss, first, second, dtype):
    """A mean over nothing is NaN: every loss raises instead, eagerly and under jit."""
    a, b = jnp.zeros(first), jnp.zeros(second, dtype)
    with pytest.raises(ValueError, match=rf"{loss.name}: .*must not be empty.*got shape"):
        loss(a, b)
    with pytest.raises(ValueError, match=rf"{loss.name}: .*must not be empty"):
        jax.jit(loss.autodiff).trace(a, b)
