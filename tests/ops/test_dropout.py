"""dropout: mask reuse in the backward, rate 0, high rates, keys, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcbp import check
from funcbp.ops import REGISTRY
from funcbp.ops._sample import away_from_zero
from funcbp.ops.dropout import dropout, dropout_fwd

seeds = st.integers(0, 2**31 - 1)
FEW = settings(max_examples=max(2, settings.default.max_examples // 2))
OP = REGISTRY["dropout"]


@FEW
@given(seed=seeds)
def test_hand_matches_autodiff_and_fd(seed):
    """Sampler draws shapes, rates (0 included) and typed or raw keys; given the key dropout is
    linear in x, so central differences of the reference are exact up to rounding."""
    key = jax.random.key(seed)
    for dtype, b in (("float64", "autodiff"), ("float32", "autodiff"), ("float64", "fd")):
        report = check.check_op(OP, key, dtype, "hand", b)
        assert report.ok, str(report)


def _grad(x, key, rate, u, jit):
    fn = jax.grad(lambda x: jnp.vdot(dropout(x, key, rate=rate), u))
    return (jax.jit(fn) if jit else fn)(x)


@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    rate=st.sampled_from([0.1, 0.5, 0.75]),
    seed=seeds,
    jit=st.booleans(),
)
def test_backward_reuses_the_forward_mask(shape, rate, seed, jit):
    """The gradient is 0 exactly where the output is 0, and g / (1 − rate) elsewhere; the
    output is x / (1 − rate) where kept (x has no zeros, so a zero output means dropped)."""
    kx, kd, ku = jax.random.split(jax.random.key(seed), 3)
    x = away_from_zero(kx, tuple(shape), jnp.float64)
    u = jax.random.normal(ku, x.shape)
    y = np.asarray((jax.jit(dropout, static_argnums=2) if jit else dropout)(x, kd, rate))
    dx = np.asarray(_grad(x, kd, rate, u, jit))
    dropped = y == 0
    np.testing.assert_array_equal(dx == 0, dropped)
    np.testing.assert_allclose(y[~dropped], np.asarray(x)[~dropped] / (1 - rate), rtol=1e-15)
    np.testing.assert_allclose(dx[~dropped], np.asarray(u)[~dropped] / (1 - rate), rtol=1e-15)


def test_rate_zero_is_the_identity(key):
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (3, 4), jnp.float32)
    u = jax.random.normal(k2, (3, 4), jnp.float32)
    np.testing.assert_array_equal(dropout(x, k2, 0.0), x)
    np.testing.assert_array_equal(jax.jit(lambda x: dropout(x, k2, rate=0))(x), x)
    np.testing.assert_array_equal(_grad(x, k2, 0.0, u, jit=True), u)
    _, residuals = dropout_fwd(x, k2, 0.0)
    assert residuals == (k2,)


def test_high_rate_preserves_the_mean(key):
    """rate 0.95: a 5% keep fraction, scaled by 20, keeps E[y] = E[x]. With n = 200 000 the
    relative standard deviation of the mean is about √(0.95 / (0.05 n)) ≈ 1%; allow 5σ."""
    rate, n = 0.95, 200_000
    k1, k2 = jax.random.split(key)
    x = 1.0 + jax.random.uniform(k1, (n,), jnp.float32)  # mean 1.5, all positive
    y = jax.jit(lambda x, k: dropout(x, k, rate))(x, k2)
    kept = float(jnp.mean(y != 0))
    assert abs(kept - 0.05) < 5 * np.sqrt(0.05 * 0.95 / n)
    assert abs(float(jnp.mean(y)) / float(jnp.mean(x)) - 1) < 0.05
    # its gradient keeps the same mean: E[dx] = u for a constant cotangent u = 1
    dx = jax.grad(lambda x: jnp.sum(dropout(x, k2, rate)))(x)
    np.testing.assert_array_equal(np.asarray(dx) != 0, np.asarray(y) != 0)
    assert abs(float(jnp.mean(dx)) - 1) < 0.05


def test_typed_and_raw_keys_agree(key):
    """A typed key and its raw uint32 data draw the same mask; different keys differ."""
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (64,))
    u = jax.random.normal(k3, (64,))
    typed = dropout(x, k2, rate=0.5)
    raw = dropout(x, jax.random.key_data(k2), rate=0.5)
    legacy = jax.random.PRNGKey(7)
    np.testing.assert_array_equal(typed, raw)
    np.testing.assert_array_equal(dropout(x, legacy, 0.5), dropout(x, jax.random.key(7), 0.5))
    assert not np.array_equal(typed, dropout(x, k3, rate=0.5))
    np.testing.assert_array_equal(
        _grad(x, k2, 0.5, u, jit=False), _grad(x, jax.random.key_data(k2), 0.5, u, jit=True)
    )
    # the key is not differentiated: op_gradients hands back None for it
    grads = check.op_gradients(OP, (x, k2), {"rate": 0.5}, u, "hand")
    assert grads[1] is None and grads[0].shape == x.shape


def test_residuals_hold_only_the_key(key):
    """The backward redraws the mask from the key: nothing of the size of x is stored."""
    x = jnp.ones((50, 40))
    _, residuals = dropout_fwd(x, key, 0.3)
    assert len(residuals) == 1 and residuals[0] is key


def test_vmap_with_per_example_keys(key):
    """Per-example keys under vmap: each row gets its own mask, gradients follow it."""
    k1, k2 = jax.random.split(key)
    x = away_from_zero(k1, (4, 16), jnp.float64)
    keys = jax.random.split(k2, 4)
    y = jax.vmap(lambda x, k: dropout(x, k, 0.5))(x, keys)
    for i in range(4):
        np.testing.assert_array_equal(y[i], dropout(x[i], keys[i], 0.5))
    dx = jax.grad(lambda x: jnp.sum(jax.vmap(lambda x, k: dropout(x, k, 0.5))(x, keys) ** 2))(x)
    np.testing.assert_allclose(dx, 2 * y / 0.5, rtol=1e-15)


@pytest.mark.parametrize(
    "rate, error, match",
    [
        (1.0, ValueError, r"dropout: rate \(the drop probability\) must lie in \[0, 1\), got 1.0"),
        (-0.1, ValueError, r"must lie in \[0, 1\), got -0.1"),
        (1.5, ValueError, r"must lie in \[0, 1\), got 1.5"),
        (float("nan"), ValueError, r"must lie in \[0, 1\), got nan"),
        (True, TypeError, "dropout: rate .* must be a Python float, static, got bool"),
        (np.float64(0.5), None, None),  # a NumPy scalar is a float: accepted
        ("0.5", TypeError, "must be a Python float, static, got str"),
    ],
)
def test_bad_rates(rate, error, match, key):
    x = jnp.ones((3,))
    if error is None:
        assert dropout(x, key, rate).shape == (3,)
        return
    with pytest.raises(error, match=match):
        dropout(x, key, rate)
    with pytest.raises(error, match=match):
        jax.jit(lambda x: dropout(x, key, rate=rate))(x)


def test_traced_rate_is_rejected(key):
    with pytest.raises(TypeError, match="rate .* must be a Python float, static, got"):
        jax.jit(lambda x, r: dropout(x, key, r))(jnp.ones(3), 0.5)


def test_bad_keys_and_inputs(key):
    x = jnp.ones((2, 3))
    with pytest.raises(TypeError, match=r"dropout: key must be a PRNG key .* dtype float"):
        dropout(x, jnp.zeros(2), 0.5)
    with pytest.raises(ValueError, match=r"dropout: key must be a single PRNG key .* \(2,\)"):
        dropout(x, jax.random.split(key), 0.5)
    with pytest.raises(ValueError, match=r"raw uint32 key data must have shape \(2,\), got \(3,\)"):
        dropout(x, jnp.zeros(3, jnp.uint32), 0.5)
    with pytest.raises(TypeError, match="dropout: x must be a floating-point array"):
        dropout(jnp.ones(3, jnp.int32), key, 0.5)
    with pytest.raises(TypeError, match=r"dropout: missing a required argument: 'rate'"):
        dropout(x, key)
