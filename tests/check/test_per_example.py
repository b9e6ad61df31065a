"""Per-example gradients (the basis of DP-SGD): ``jax.vmap(jax.grad(loss))`` over single examples,
through the HAND path, equals a Python loop of single-example `jax.grad` of the references.

Also the explicit engine (`funcbp.backprop`, no autodiff) under `jax.vmap`, and the identity
mean(per-example grads) = full-batch grad of the mean loss (for models without batch coupling).
The CNN has batch norm: on one example it normalises over that example's H×W positions, the
same in the vmapped and looped computations; dropout gets one key per example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcbp import backprop, check, nn, ops
from funcbp.training import make_loss_fn

ONE = settings(max_examples=max(1, settings.default.max_examples // 3))
TOL = {"float64": 1e-10, "float32": 1e-5}


def _single_loss(model, gradients, state):
    loss_fn = make_loss_fn(model, ops.softmax_cross_entropy, source=gradients)

    def loss(params, x, y, key):
        # one example as a batch of one
        return loss_fn(params, state, x[None], y[None], key, True)[0]

    return loss


def _problem(model, shape, n, seed, dtype):
    k_init, k_x, k_y, k_p = jax.random.split(jax.random.key(seed), 4)
    _, params, state = model.init(k_init, shape, dtype)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(k_p, len(leaves))
    params = tree.unflatten(
        [
            p + 0.1 * jax.random.normal(k, p.shape, p.dtype)
            for p, k in zip(leaves, keys, strict=True)
        ]
    )
    x = jax.random.normal(k_x, (n, *shape), dtype)
    y = jax.random.randint(k_y, (n,), 0, 3).astype(jnp.int32)
    return params, state, x, y


def _assert_per_example(batched, looped, tol, what):
    for i, want in enumerate(looped):
        got = jax.tree.map(lambda g, i=i: g[i], batched)
        report = check.compare(got, want, tol=tol, name=f"{what} example {i}")
        assert report.ok, str(report)


def _per_example(model, params, state, x, y, keys, dtype):
    hand = _single_loss(model, "hand", state)
    ref = jax.jit(jax.grad(_single_loss(model, "autodiff", state)))
    batched = jax.jit(jax.vmap(jax.grad(hand), in_axes=(None, 0, 0, 0)))(params, x, y, keys)
    looped = [ref(params, x[i], y[i], None if keys is None else keys[i]) for i in range(len(x))]
    return batched, looped


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@ONE
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 5),
    activation=st.sampled_from(["relu", "tanh", "gelu"]),
)
def test_mlp_per_example(dtype, seed, n, activation):
    model = nn.mlp([6, 5, 3], activation=activation)
    params, state, x, y = _problem(model, (4,), n, seed, jnp.dtype(dtype))
    batched, looped = _per_example(model, params, state, x, y, None, dtype)
    _assert_per_example(batched, looped, TOL[dtype], f"mlp[{activation}]")
    # no batch coupling in an MLP: the mean of per-example grads is the batch gradient
    full = jax.grad(lambda p: make_loss_fn(model, source="autodiff")(p, state, x, y)[0])(params)
    mean = jax.tree.map(lambda g: g.mean(axis=0), batched)
    assert check.compare(mean, full, tol=10 * TOL[dtype]).ok


def test_mlp_per_example_explicit_engine():
    """The explicit reverse pass (no autodiff at all) vmaps too."""
    model = nn.mlp([7, 3], activation="tanh")
    params, state, x, y = _problem(model, (4,), 4, 3, jnp.float64)

    def one(p, xi, yi):
        return backprop.loss_and_grad(
            model, ops.softmax_cross_entropy, p, state, xi[None], yi[None]
        )[1]

    batched = jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))(params, x, y)
    ref = jax.jit(jax.grad(_single_loss(model, "autodiff", state)))
    looped = [ref(params, x[i], y[i], None) for i in range(len(x))]
    _assert_per_example(batched, looped, TOL["float64"], "mlp explicit")


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_cnn_per_example(dropout):
    model = nn.cnn(3, channels=(3, 4), hidden=8, dropout=dropout)
    params, state, x, y = _problem(model, (8, 8, 1), 3, 11, jnp.float64)
    keys = jax.random.split(jax.random.key(12), len(x)) if dropout else None
    batched, looped = _per_example(model, params, state, x, y, keys, "float64")
    _assert_per_example(batched, looped, TOL["float64"], f"cnn dropout={dropout}")
    # different examples really have different gradients (the vmap did not broadcast one)
    w = np.asarray(batched[0]["w"])
    assert np.linalg.norm(w[0] - w[1]) > 1e-3 * np.linalg.norm(w[0])


def test_per_example_clipping_norms():
    """DP-SGD's per-example clipping needs per-example norms: equal on both paths."""
    model = nn.mlp([5, 3], activation="gelu")
    params, state, x, y = _problem(model, (4,), 6, 5, jnp.float64)
    batched, looped = _per_example(model, params, state, x, y, None, "float64")
    sq = jax.tree.map(lambda g: jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1), batched)
    norms = np.sqrt(sum(jax.tree.leaves(sq)))
    want = [np.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(t))) for t in looped]
    np.testing.assert_allclose(norms, want, rtol=1e-12)
