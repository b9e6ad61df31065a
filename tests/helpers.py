"""Small shared test helpers: synthetic datasets and random model params."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np


def toy_classification(seed=0, n_train=96, n_test=40, features=6, classes=3, dtype=np.float32):
    """Linearly separable-ish Gaussian blobs: a tiny dataset (train/test) with int32 labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, (classes, features))

    def draw(n):
        y = rng.integers(0, classes, n).astype(np.int32)
        x = (centers[y] + rng.normal(0, 1.0, (n, features))).astype(dtype)
        return x, y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return types.SimpleNamespace(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        n_classes=classes,
        name="toy",
    )


def perturb(params, key, scale=0.1):
    """Params plus random noise (so no bias is exactly zero in gradient tests)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    return treedef.unflatten(
        [
            p + scale * jax.random.normal(k, p.shape, p.dtype)
            for p, k in zip(leaves, keys[: len(leaves)], strict=True)
        ]
    )


def tree_max_abs_diff(a, b) -> float:
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b))
    return float(max(diffs)) if diffs else 0.0


def op_seeds():
    """Seeds for an op's sampler in property tests.

    The default profile draws from a small shared pool (0, 1, 2): every registry-wide test of
    an op then checks the same random samples, so a program one test compiles (the hand
    gradient of ``op`` at a sampled shape) is loaded by the others from the persistent
    compilation cache instead of compiled again. Each sample still has its own random shapes
    (rank, sizes, batch dims). ``FUNCBP_HYPOTHESIS=deep`` draws any seed.
    """
    import os

    from hypothesis import strategies as st

    if os.environ.get("FUNCBP_HYPOTHESIS", "default") == "deep":
        return st.integers(0, 2**31 - 1)
    return st.sampled_from(SEED_POOL)


SEED_POOL = (0, 1, 2)


def precision_rule_errors(op, arrays, dtype, *, key, static=None):
    """(hand error, autodiff error) of ``op`` in ``dtype`` against float64, the FlashAttention
    rule's two numbers: the inputs (float ones) and a random cotangent are rounded to ``dtype``
    once and used by all three paths; each error is the worst relative error over the output
    and every float input's gradient (`funcbp.check.relative_error`). The rule: hand <= 2x
    autodiff."""
    from funcbp import check

    static = static or {}
    low = [a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in arrays]
    high = [a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in low]
    idx = [i for i, a in enumerate(low) if jnp.issubdtype(a.dtype, jnp.floating)]
    out = jax.eval_shape(lambda *a: op.autodiff(*a, **static), *low)
    u = check.random_cotangent(key, out).astype(dtype)

    def both(fn, xs, u):
        def run(*floats):
            full = list(xs)
            for i, f in zip(idx, floats, strict=True):
                full[i] = f
            return fn(*full, **static)

        y, vjp = jax.vjp(run, *(xs[i] for i in idx))
        return (y, *vjp(u.astype(y.dtype)))

    truth = jax.jit(lambda *xs: both(op.autodiff, xs, u))(*high)
    err = lambda got: max(check.relative_error(g, t) for g, t in zip(got, truth, strict=True))
    hand = jax.jit(lambda *xs: both(op, xs, u))(*low)
    auto = jax.jit(lambda *xs: both(op.autodiff, xs, u))(*low)
    return err(hand), err(auto)
