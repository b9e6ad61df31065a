"""Properties every registered op must have, checked for every op in `funcbp.ops.REGISTRY`.

Each test is parametrised over the registry's names, so an op added anywhere is checked here with
no change to this file. Inputs come from the op's own sampler (random shapes, random values) with a
seed drawn by hypothesis; cotangents are random normal (never ones), with the output's structure
(tuple outputs such as ``lstm_cell``'s ``(h, c)`` get one cotangent per leaf). Only inexact array
arguments are differentiated: integer labels/ids and PRNG keys are passed through unchanged.

Cost: every example draws new shapes, so every jitted function compiles afresh; compiles are the
whole cost. The core checks (float64 hand vs autodiff, explicit == hand, dtypes) use the
profile's ``max_examples``; the rest use `FEW`, half of it, scaled from the loaded profile so
``FUNCBP_HYPOTHESIS=deep`` still runs them deep (an explicit ``settings(max_examples=3)`` would
pin them at 3 under every profile). Host-side NumPy does the bookkeeping (stacking, dot
products) so that nothing compiles outside the functions under test.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcbp import check
from funcbp.ops import REGISTRY
from tests.helpers import op_seeds

NAMES = sorted(REGISTRY)
SECOND_ORDER = [n for n in NAMES if REGISTRY[n].second_order]
SMOOTH = [n for n in NAMES if REGISTRY[n].smooth]
FOUNDATION = {
    "linear",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "gelu",
    "softmax",
    "log_softmax",
    "mse",
    "softmax_cross_entropy",
    "binary_cross_entropy_with_logits",
}

SEEDS = op_seeds()  # a shared pool: see tests.helpers.op_seeds
FEW = settings(max_examples=max(2, settings.default.max_examples // 2))
"""For the expensive properties: half the loaded profile's examples, at least 2 (100 deep)."""

JVP_ERROR = "can't apply forward-mode autodiff (jvp) to a custom_vjp function"
HVP_TOL = 1e-8
HVP_ATOL = 1e-12
VMAP_TOL = {"float64": 1e-10, "float32": 1e-5}
EXACT_TOL = 1e-12
JIT_TOL = 1e-10
"""jit vs eager: XLA fuses (e.g. tanh) differently from op-by-op, so an ulp of a saturated
value can show as ~1e-12 relative in 1 − t²; the float64 bound still catches any real bug."""


# -- helpers ---------------------------------------------------------------------------------
def _draw(op, seed, dtype=jnp.float64):
    """``(arrays, static, cotangent)``: the op's random inputs and a random output cotangent."""
    k_sample, k_cot = jax.random.split(jax.random.key(seed))
    arrays, static = op.sample(k_sample, jnp.dtype(dtype))
    arrays = tuple(arrays)
    out = jax.eval_shape(lambda *a: op.autodiff(*a, **static), *arrays)
    return arrays, static, check.random_cotangent(k_cot, out)


def _float_idx(arrays) -> tuple[int, ...]:
    return tuple(i for i, a in enumerate(arrays) if check._is_float(a))


def _vdot(out, cot):
    """⟨out, cot⟩ summed over the leaves of (possibly tuple) outputs."""
    pairs = zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(cot), strict=True)
    return sum(jnp.vdot(o, u) for o, u in pairs)


def _host_vdot(a, b) -> float:
    """⟨a, b⟩ over the leaves, in float64 NumPy (no device work, no compile)."""
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return float(
        sum(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in pairs)
    )


def _loss(fn, arrays, static, idx):
    """``L(floats, cot) = ⟨fn(arrays with floats at idx), cot⟩``; its gradient is the VJP."""

    def loss(floats, cot, others=arrays):
        full = list(others)
        for i, f in zip(idx, floats, strict=True):
            full[i] = f
        return _vdot(fn(*full, **static), cot)

    return loss


def _assert_close(a, b, tol, what):
    report = check.compare(a, b, tol=tol, name=what)
    assert report.ok, str(report)


# -- 1. hand VJP vs jax.grad of the reference -----------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@given(seed=SEEDS)
def test_hand_matches_autodiff_float64(name, seed):
    _hand_matches_autodiff(name, "float64", seed)


@pytest.mark.parametrize("name", NAMES)
@FEW
@given(seed=SEEDS)
def test_hand_matches_autodiff_float32(name, seed):
    _hand_matches_autodiff(name, "float32", seed)


def _hand_matches_autodiff(name, dtype, seed):
    report = check.check_op(REGISTRY[name], jax.random.key(seed), dtype, "hand", "autodiff")
    assert report.tol == check.TOLERANCE[dtype]
    assert report.ok, str(report)


# -- 2. hand VJP vs central finite differences (float64) -------------------------------------
@pytest.mark.parametrize("name", SMOOTH)
@FEW
@given(seed=SEEDS)
def test_hand_matches_finite_differences(name, seed):
    report = check.check_op(REGISTRY[name], jax.random.key(seed), jnp.float64, "hand", "fd")
    assert report.tol == check.FD_TOLERANCE["float64"]
    assert report.ok, str(report)


# -- 3. explicit fwd + bwd (no autodiff at all) == hand ---------------------------------------
@pytest.mark.parametrize("name", NAMES)
@given(seed=SEEDS)
def test_explicit_equals_hand(name, seed):
    op = REGISTRY[name]
    arrays, static, cot = _draw(op, seed)
    explicit = check.op_gradients(op, arrays, static, cot, "explicit")
    hand = check.op_gradients(op, arrays, static, cot, "hand")
    _assert_close(explicit, hand, EXACT_TOL, f"{name} explicit vs hand")


# -- 4. jit -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@FEW
@given(seed=SEEDS)
def test_jit_equals_eager(name, seed):
    op = REGISTRY[name]
    arrays, static, cot = _draw(op, seed)
    fwd = lambda *a: op(*a, **static)
    _assert_close(jax.jit(fwd)(*arrays), fwd(*arrays), JIT_TOL, f"{name} forward jit vs eager")
    jitted = check.op_gradients(op, arrays, static, cot, "hand", jit=True)
    eager = check.op_gradients(op, arrays, static, cot, "hand", jit=False)
    _assert_close(jitted, eager, JIT_TOL, f"{name} grads jit vs eager")


# -- 5. vmap: per-example gradients ----------------------------------------------------------
def _members(arrays, idx, gen, n):
    """``n`` examples of the same shapes: the sample itself and ``n − 1`` perturbed copies.

    The copies scale every float entry by an independent factor in [0.9, 1.1]: fresh values that
    keep each entry's sign, so samplers' guarantees (away from kinks, positive variances, ...)
    still hold. Integer and key arguments are kept as they are. Drawn on the host (no compiles).
    """
    out = [arrays]
    for _ in range(n - 1):
        out.append(
            tuple(
                jnp.asarray(np.asarray(a) * (1 + gen.uniform(-0.1, 0.1, a.shape)), a.dtype)
                if i in idx
                else a
                for i, a in enumerate(arrays)
            )
        )
    return out


def _stack(*leaves):
    if jnp.issubdtype(leaves[0].dtype, jax.dtypes.prng_key):
        return jnp.stack(leaves)
    return jnp.asarray(np.stack([np.asarray(v) for v in leaves]), leaves[0].dtype)


@pytest.mark.parametrize("name", NAMES)
@FEW
@given(seed=SEEDS, n=st.integers(2, 3))
def test_vmap_per_example_grads(name, seed, n):
    op = REGISTRY[name]
    arrays, static, _ = _draw(op, seed)
    idx = _float_idx(arrays)
    members = _members(arrays, idx, np.random.default_rng(seed), n)
    out = jax.eval_shape(lambda *a: op(*a, **static), *arrays)
    cots = [check.random_cotangent(jax.random.key(seed + 1 + m), out) for m in range(n)]

    def per_example(example, cot):
        floats = tuple(example[i] for i in idx)
        loss = _loss(op, example, static, idx)
        return op(*example, **static), jax.grad(loss)(floats, cot)

    stacked = jax.tree_util.tree_map(_stack, *zip(members, cots, strict=True))
    batched = jax.jit(jax.vmap(per_example))(*stacked)
    one = jax.jit(per_example)
    for m in range(n):
        want_out, want_grads = one(members[m], cots[m])
        got_out, got_grads = jax.tree_util.tree_map(lambda v, m=m: np.asarray(v)[m], batched)
        tol = VMAP_TOL["float64"]
        _assert_close(got_out, want_out, tol, f"{name} vmap forward member {m}")
        _assert_close(got_grads, want_grads, tol, f"{name} vmap grads member {m}")


# -- 6. reverse-over-reverse: Hessian-vector products -----------------------------------------
def _hvp(fn, arrays, static, cot, v, idx):
    """∇ₓ ⟨∇ₓ L(x), v⟩ with L = ⟨fn(x), cot⟩: grad of grad through ``fn``'s own rules."""
    loss = _loss(fn, arrays, static, idx)

    def directional(floats):
        return _vdot(jax.grad(loss)(floats, cot), v)

    return jax.jit(jax.grad(directional))(tuple(arrays[i] for i in idx))


@pytest.mark.parametrize("name", SECOND_ORDER)
@FEW
@given(seed=SEEDS)
def test_reverse_over_reverse(name, seed):
    op = REGISTRY[name]
    arrays, static, cot = _draw(op, seed)
    idx = _float_idx(arrays)
    v = check.random_cotangent(jax.random.key(seed ^ 0xC0FFEE), tuple(arrays[i] for i in idx))
    hand = _hvp(op, arrays, static, cot, v, idx)
    ref = _hvp(op.autodiff, arrays, static, cot, v, idx)
    for k, (a, b) in enumerate(zip(hand, ref, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype
        err = float(np.linalg.norm(np.ravel(np.asarray(a) - np.asarray(b))))
        scale = float(np.linalg.norm(np.ravel(b)))
        # Relative where the HVP is non-zero; absolute where it vanishes (relu, x in linear).
        assert err <= HVP_TOL * scale + HVP_ATOL, (
            f"{name}: HVP of float arg {idx[k]} differs: |hand - ref| {err:.3e}, |ref| {scale:.3e}"
        )


# -- 7. forward mode: refused on the hand path, and the reference's JVP agrees with the VJP --
@pytest.mark.parametrize("name", NAMES)
@FEW
@given(seed=SEEDS)
def test_forward_mode(name, seed):
    op = REGISTRY[name]
    arrays, static, cot = _draw(op, seed)
    idx = _float_idx(arrays)
    floats = tuple(arrays[i] for i in idx)
    tangents = check.random_cotangent(jax.random.key(seed ^ 0x7A6), floats)

    def call(fn):
        def f(*fl):
            full = list(arrays)
            for i, x in zip(idx, fl, strict=True):
                full[i] = x
            return fn(*full, **static)

        return f

    with pytest.raises(TypeError, match=re.escape(JVP_ERROR)):
        jax.jvp(call(op), floats, tangents)

    @jax.jit
    def both(floats, tangents, cot):
        _, jt = jax.jvp(call(op.autodiff), floats, tangents)
        return jt, jax.grad(_loss(op, arrays, static, idx))(floats, cot)

    jt, vjp = both(floats, tangents, cot)
    # Dot-product test: ⟨u, J t⟩ (forward mode of the reference) == ⟨Jᵀ u, t⟩ (hand VJP).
    lhs = _host_vdot(jt, cot)
    rhs = _host_vdot(vjp, tangents)
    pairs = [*zip(jax.tree_util.tree_leaves(jt), jax.tree_util.tree_leaves(cot), strict=True)]
    pairs += [*zip(vjp, tangents, strict=True)]
    scale = sum(float(np.linalg.norm(np.ravel(a)) * np.linalg.norm(np.ravel(b))) for a, b in pairs)
    assert abs(lhs - rhs) <= 1e-10 * scale, (name, lhs, rhs, scale)


# -- 8. samplers: random shapes, no all-zero arrays, deterministic ----------------------------
def test_registry_holds_the_foundation():
    assert FOUNDATION <= set(REGISTRY), sorted(FOUNDATION - set(REGISTRY))
    for name, op in REGISTRY.items():
        assert op.name == name


@pytest.mark.parametrize("name", NAMES)
@FEW
@given(seed=st.integers(0, 2**31 - 9))
def test_sampler_draws_random_shapes(name, seed):
    op = REGISTRY[name]
    shapes = set()
    for s in range(seed, seed + 8):
        arrays, static = op.sample(jax.random.key(s), jnp.float64)
        assert len(arrays) == op.n_arrays
        shapes.add(tuple(tuple(np.shape(a)) for a in arrays))
        for i in _float_idx(arrays):
            a = np.asarray(arrays[i])
            assert a.dtype == np.float64
            assert np.all(np.isfinite(a)), f"{name}: sample {s} arg {i} not finite"
            assert np.any(a != 0), f"{name}: sample {s} arg {i} is all zeros {a.shape}"
        again, static2 = op.sample(jax.random.key(s), jnp.float64)
        assert static2 == static
        for a, b in zip(arrays, again, strict=True):
            if check._is_float(a) or jnp.issubdtype(a.dtype, jnp.integer):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(shapes) > 1, f"{name}: 8 seeds gave one fixed shape {shapes}"


# -- 9. dtypes: no silent promotion in outputs or cotangents ---------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
@given(seed=SEEDS)
def test_dtypes_are_preserved(name, dtype, seed):
    op = REGISTRY[name]
    arrays, static, cot = _draw(op, seed, dtype)
    idx = _float_idx(arrays)
    assert idx, f"{name}: sampler drew no float argument"
    for i in idx:
        assert arrays[i].dtype == jnp.dtype(dtype), f"{name}: sampler arg {i} is {arrays[i].dtype}"
    for fn in (op, op.autodiff):
        out = jax.eval_shape(lambda *a, fn=fn: fn(*a, **static), *arrays)
        for leaf in jax.tree_util.tree_leaves(out):
            assert leaf.dtype == jnp.dtype(dtype), f"{name}: output {leaf.dtype} for {dtype} input"

    def explicit(*a):
        _, residuals = op.fwd(*a, **static)
        return tuple(op.bwd(residuals, cot, **static))

    def hand(*a):
        grads = jax.grad(_loss(op, a, static, idx))(tuple(a[i] for i in idx), cot)
        found = dict(zip(idx, grads, strict=True))
        return tuple(found.get(i) for i in range(len(a)))

    # Shapes and dtypes only: traced (bwd included) by eval_shape, nothing is compiled.
    for source, grads in [
        ("explicit", jax.eval_shape(explicit, *arrays)),
        ("hand", jax.eval_shape(hand, *arrays)),
    ]:
        assert len(grads) == len(arrays), f"{name} {source}: {len(grads)} cotangents"
        for i, (a, g) in enumerate(zip(arrays, grads, strict=True)):
            if i not in idx:
                assert g is None, f"{name} {source}: non-float arg {i} got a cotangent"
                continue
            assert g.shape == a.shape and g.dtype == a.dtype, (
                f"{name} {source}: cotangent {i} is {g.shape} {g.dtype}, primal {a.shape} {a.dtype}"
            )
