"""Adjoint (dot-product) test, registry-wide: ⟨J v, u⟩ = ⟨v, Jᵀ u⟩.

``J v`` comes from forward mode (`jax.jvp`) of the op's REFERENCE; ``Jᵀ u`` from the HAND VJP,
two ways: `jax.vjp` through the op's `jax.custom_vjp`, and the explicit ``fwd`` + ``bwd`` with no
autodiff at all. ``u`` and ``v`` are random normal (never ones); float64. The two sides are
computed by unrelated code (a JVP of the plain forward vs a hand-written transpose), so agreement
to ~1e-12 is strong evidence that ``bwd`` is the transpose of the true derivative.

Tolerance: |lhs − rhs| ≤ 1e-10 · (|lhs| + scale), scale = Σ ‖J v‖‖u‖ + Σ ‖v‖‖Jᵀ u‖ (the
Cauchy–Schwarz bound on each inner product: rounding in a dot product is relative to it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import funcbp.nn  # noqa: F401  (registers the ops defined next to their layers)
from funcbp import check
from funcbp.check import mutate
from funcbp.ops import REGISTRY
from tests.helpers import op_seeds

NAMES = sorted(REGISTRY)
SEEDS = op_seeds()  # a shared pool: see tests.helpers.op_seeds
ONE = settings(max_examples=max(1, settings.default.max_examples // 6))
"""One random draw per op by default (tests/test_registry.py runs a dot-product test on more);
33 under the deep profile."""
TOL = 1e-10


def _vdot(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return sum(jnp.vdot(x, y) for x, y in pairs)


def _norm_products(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return sum(float(np.linalg.norm(np.ravel(x)) * np.linalg.norm(np.ravel(y))) for x, y in pairs)


def _setup(op, seed):
    arrays, static, u = mutate.draw(op, jax.random.key(seed))
    idx = tuple(i for i, a in enumerate(arrays) if check._is_float(a))
    floats = tuple(arrays[i] for i in idx)
    v = check.random_cotangent(jax.random.key(seed ^ 0xAD7), floats)
    return arrays, static, u, idx, floats, v


def _substitute(arrays, idx, floats):
    full = list(arrays)
    for i, f in zip(idx, floats, strict=True):
        full[i] = f
    return full


def forward_side(op, arrays, static, idx, floats, v):
    """``J v`` by forward mode (`jax.jvp`) of the plain reference."""
    reference = lambda *fl: op.reference(*_substitute(arrays, idx, fl), **static)
    return jax.jvp(reference, floats, v)[1]


def vjp_side(op, arrays, static, u, idx, floats):
    """``Jᵀ u`` by `jax.vjp` through the op's custom_vjp (its hand ``bwd``)."""
    hand = lambda *fl: op(*_substitute(arrays, idx, fl), **static)
    return jax.vjp(hand, *floats)[1](u)


def explicit_side(op, arrays, static, u, idx):
    """``Jᵀ u`` by the op's ``fwd`` then ``bwd``, called directly (no autodiff)."""
    _, residuals = op.fwd(*arrays, **static)
    grads = op.bwd(residuals, u, **static)
    return tuple(grads[i] for i in idx)


def gap(jv, u, v, jtu):
    """``(|⟨Jv, u⟩ − ⟨v, Jᵀu⟩|, |⟨Jv, u⟩| + scale)``."""
    lhs, rhs = float(_vdot(jv, u)), float(_vdot(v, jtu))
    return abs(lhs - rhs), abs(lhs) + _norm_products(jv, u) + _norm_products(v, jtu)


def _all_sides(op, arrays, static, u, idx, floats, v):
    return (
        forward_side(op, arrays, static, idx, floats, v),
        vjp_side(op, arrays, static, u, idx, floats),
        explicit_side(op, arrays, static, u, idx),
    )


@pytest.mark.parametrize("name", NAMES)
@ONE
@given(seed=SEEDS)
def test_dot_product(name, seed):
    op = REGISTRY[name]
    arrays, static, u, idx, floats, v = _setup(op, seed)
    # one compile for all three sides
    sides = jax.jit(lambda fl, vv, uu: _all_sides(op, arrays, static, uu, idx, fl, vv))
    jv, by_vjp, by_explicit = sides(floats, v, u)
    for via, jtu in (("vjp", by_vjp), ("explicit", by_explicit)):
        err, scale = gap(jv, u, v, jtu)
        # scale = 0 only where the derivative vanishes identically (log_softmax over an axis of
        # length 1): then both sides must be exactly 0.
        assert err <= TOL * scale, f"{name} via {via}: |⟨Jv,u⟩ − ⟨v,Jᵀu⟩| = {err:.3e}, {scale=:.3e}"


@pytest.mark.parametrize("name", ["linear", "lstm_cell", "attention", "dropout", "embedding"])
def test_dot_product_unjitted(name):
    if name not in REGISTRY:
        pytest.skip(f"{name} not registered")
    op = REGISTRY[name]
    arrays, static, u, idx, floats, v = _setup(op, 3)
    jv, by_vjp, by_explicit = _all_sides(op, arrays, static, u, idx, floats, v)
    for jtu in (by_vjp, by_explicit):
        err, scale = gap(jv, u, v, jtu)
        assert scale > 0 and err <= TOL * scale, (name, err, scale)


@pytest.mark.parametrize("name", ["linear", "lstm_cell", "layer_norm"])
def test_dot_product_catches_mutants(name):
    """The adjoint test alone flags every mutant of these ops (none is equivalent): one scalar
    identity, yet a wrong transpose, sign, factor, batch sum or residual breaks it."""
    if name not in REGISTRY:
        pytest.skip(f"{name} not registered")
    op = REGISTRY[name]
    arrays, static, u, idx, floats, v = _setup(op, 5)
    jv = forward_side(op, arrays, static, idx, floats, v)
    err, scale = gap(jv, u, v, explicit_side(op, arrays, static, u, idx))
    assert err <= TOL * scale
    mutants = mutate.make_mutants(op, arrays, static)
    assert len(mutants) >= 10
    for m in mutants:
        err, scale = gap(jv, u, v, explicit_side(m.op, arrays, static, u, idx))
        assert err > TOL * scale, f"{m.name} ({m.description}) passes the dot-product test"
