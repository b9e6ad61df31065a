"""Forward mode by hand: properties every registered op's hand JVP must have.

Parametrised over `funcbp.ops.REGISTRY` (an op added anywhere is checked here with no change to
this file, and fails `test_every_registered_op_has_a_jvp` if it comes without a JVP). Inputs come
from the op's own sampler with a seed drawn by hypothesis; tangents and cotangents are random
normal (never ones). Each property is one jitted call (both sides in one compile: with random
shapes, compiles are the whole cost); the expensive ones run `FEW` examples.

`op(...)` itself stays a `jax.custom_vjp` function (forward mode on it raises TypeError, pinned in
`tests/test_registry.py`); forward mode goes through ``op.forward_mode``, the `jax.custom_jvp`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from funcbp.check import compare
from funcbp.check import jvp as check_jvp
from funcbp.ops import REGISTRY, Op
from tests.helpers import op_seeds

NAMES = sorted(REGISTRY)
SEEDS = op_seeds()  # a shared pool: see tests.helpers.op_seeds
FEW = settings(max_examples=max(2, settings.default.max_examples // 2))
EXACT_TOL = 1e-12


def _assert_ok(report):
    assert report.ok, str(report)


# -- the registry: every op has a hand JVP --------------------------------------------------
def test_every_registered_op_has_a_jvp():
    missing = sorted(name for name, op in REGISTRY.items() if op.jvp is None)
    assert not missing, f"ops registered without a hand JVP (Op(..., jvp=...)): {missing}"


def test_an_op_without_jvp_has_no_forward_mode():
    bare = dataclasses.replace(REGISTRY["tanh"], jvp=None, name="tanh_without_jvp")
    with pytest.raises(NotImplementedError, match="tanh_without_jvp: no hand JVP"):
        bare.forward_mode(jnp.ones(3))
    with pytest.raises(NotImplementedError, match="tanh_without_jvp"):
        bare.path("hand", mode="forward")(jnp.ones(3))


# -- 1. hand JVP vs jax.jvp of the reference -------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@given(seed=SEEDS)
def test_jvp_matches_reference_float64(name, seed):
    report = check_jvp.check_jvp(REGISTRY[name], jax.random.key(seed), "float64")
    assert report.tol == check_jvp.JVP_TOLERANCE["float64"] == 1e-12
    _assert_ok(report)


@pytest.mark.parametrize("name", NAMES)
@FEW
@given(seed=SEEDS)
def test_jvp_matches_reference_float32(name, seed):
    report = check_jvp.check_jvp(REGISTRY[name], jax.random.key(seed), "float32")
    assert report.tol == check_jvp.JVP_TOLERANCE["float32"] == 1e-5
    _assert_ok(report)


# -- 2. the two hand rules are each other's transpose ----------------------------------------
@pytest.mark.parametrize("name", NAMES)
@FEW
@given(seed=SEEDS)
def test_transpose_identity(name, seed):
    report = check_jvp.check_transpose(REGISTRY[name], jax.random.key(seed), "float64")
    assert report.tol == 1e-12
    _assert_ok(report)


# -- 3. jacfwd(forward_mode) == jacrev(op) ----------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@FEW
@given(seed=SEEDS)
def test_jacfwd_equals_jacrev(name, seed):
    _assert_ok(check_jvp.check_jacobian(REGISTRY[name], jax.random.key(seed), "float64"))


# -- 4. jax.hessian (forward over reverse) through forward_mode == the reference's Hessian ---
# The reference side is jacfwd(jacfwd(reference)): the same matrix, without JAX's transpose of
# lax.conv_general_dilated in the kernel, which aborts XLA CPU for some strided conv shapes
# (`test_conv2d_reverse_through_forward_mode_where_xla_aborted`).
@pytest.mark.parametrize("name", NAMES)
@FEW
@given(seed=SEEDS)
def test_hessian_through_forward_mode(name, seed):
    _assert_ok(check_jvp.check_hessian(REGISTRY[name], jax.random.key(seed), "float64"))


# -- 5. linearize and reverse mode (JAX transposes the hand rule) ----------------------------
def _pairing(fn, arrays, static, cot):
    f = check_jvp._restrict(fn, arrays, static)

    def loss(*floats):
        leaves = zip(jax.tree.leaves(f(*floats)), jax.tree.leaves(cot), strict=True)
        return sum(jnp.vdot(o, u) for o, u in leaves)

    return loss


@pytest.mark.parametrize("name", NAMES)
@FEW
@given(seed=SEEDS)
def test_linearize_and_grad_through_forward_mode(name, seed):
    op = REGISTRY[name]
    arrays, static, tangents, cot = check_jvp.draw(op, jax.random.key(seed))
    idx = check_jvp.float_positions(arrays)
    argnums = tuple(range(len(idx)))

    @jax.jit
    def run(arrays, tangents, cot):
        floats = tuple(arrays[i] for i in idx)
        out, linear = jax.linearize(check_jvp._restrict(op.forward_mode, arrays, static), *floats)
        explicit = check_jvp.explicit_jvp(op, arrays, static, tangents)
        transposed = jax.grad(_pairing(op.forward_mode, arrays, static, cot), argnums)(*floats)
        hand_vjp = jax.grad(_pairing(op, arrays, static, cot), argnums)(*floats)
        return (out, linear(*tangents)), explicit, transposed, hand_vjp

    linearized, explicit, transposed, hand_vjp = run(arrays, tangents, cot)
    _assert_ok(compare(linearized, explicit, tol=EXACT_TOL, name=f"{name} linearize vs jvp"))
    _assert_ok(compare(transposed, hand_vjp, tol=EXACT_TOL, name=f"{name} grad: JVPᵀ vs VJP"))


def test_conv2d_reverse_through_forward_mode_where_xla_aborted(key):
    """At this shape `jax.grad` of `lax.conv_general_dilated` (the reference) aborts XLA CPU
    (jax 0.10.2: "Window dimensions do not match RHS shape" in the algebraic simplifier). The
    hand JVP uses the im2col GEMM form, so its transpose (reverse mode of ``forward_mode``) and
    `jax.hessian` compile; they must match the hand VJP and the forward-only Hessian."""
    op = REGISTRY["conv2d"]
    k1, k2, k3, k4 = jax.random.split(key, 4)
    x, w = jax.random.normal(k1, (2, 2, 4, 1)), jax.random.normal(k2, (2, 2, 1, 1))
    b, u = jax.random.normal(k3, (1,)), jax.random.normal(k4, (2, 1, 3, 1))
    static = {"stride": (3, 2), "padding": 1}
    pair = lambda fn: lambda *a: jnp.vdot(fn(*a, **static), u)

    @jax.jit
    def run(x, w, b):
        grads = jax.grad(pair(op.forward_mode), (0, 1, 2))(x, w, b)
        hand = jax.grad(pair(op), (0, 1, 2))(x, w, b)
        hessian = jax.hessian(pair(op.forward_mode), (0, 1))(x, w, b)
        ref = jax.jacfwd(jax.jacfwd(pair(op.autodiff), (0, 1)), (0, 1))(x, w, b)
        return grads, hand, hessian, ref

    grads, hand, hessian, ref = run(x, w, b)
    _assert_ok(compare(grads, hand, tol=EXACT_TOL, name="conv2d grad: JVPᵀ vs VJP"))
    _assert_ok(compare(hessian, ref, tol=1e-10, name="conv2d hessian"))


# -- 6. the API: forward_mode, path(mode=), with_jvp ------------------------------------------
def _linear_args(key, dtype=jnp.float64):
    (x, w, b), _ = REGISTRY["linear"].sample(key, jnp.dtype(dtype))
    return x, w, b


def test_forward_mode_is_the_op_forwards(key):
    op = REGISTRY["linear"]
    x, w, b = _linear_args(key)
    np.testing.assert_array_equal(op.forward_mode(x, w, b), op(x, w, b))
    assert op.path("hand", mode="forward") == op.forward_mode
    assert op.path("autodiff", mode="forward") == op.autodiff
    assert op.path("hand") == op.hand and op.path("hand", mode="reverse") == op.hand
    eager = jax.jvp(op.forward_mode, (x, w, b), (x, w, b))
    jitted = jax.jit(lambda *a: jax.jvp(op.forward_mode, a, a))(x, w, b)
    _assert_ok(compare(jitted, eager, tol=EXACT_TOL, name="linear jvp jit vs eager"))


def test_forward_mode_validates_like_the_op(key):
    x, w, b = _linear_args(key)
    bad_w = jnp.ones((w.shape[0] + 1, w.shape[1]), w.dtype)
    with pytest.raises(ValueError, match="linear: x has"):
        REGISTRY["linear"].forward_mode(x, bad_w, b)
    with pytest.raises(TypeError, match="softmax: .*unexpected keyword"):
        REGISTRY["softmax"].forward_mode(x, axes=0)


def test_path_rejects_bad_source_and_mode():
    op = REGISTRY["relu"]
    with pytest.raises(ValueError, match="relu: source must be 'hand', 'autodiff', 'explicit'"):
        op.path("numeric")
    assert op.path("forward") == op.forward_mode
    with pytest.raises(ValueError, match="relu: mode must be 'reverse' or 'forward'"):
        op.path("hand", mode="both")
    with pytest.raises(ValueError, match="relu: remat=True applies to mode='reverse' only"):
        op.path("hand", mode="forward", remat=True)


def test_with_jvp_plants_a_bug_the_check_flags(key):
    op = REGISTRY["sigmoid"]

    def wrong(primals, tangents):  # σ' taken as σ: a classic slip
        out, _ = op.jvp(primals, tangents)
        return out, out * tangents[0]

    bad = op.with_jvp(wrong, name="sigmoid:wrong")
    assert isinstance(bad, Op) and bad.name == "sigmoid:wrong" and bad.bwd is op.bwd
    assert op.jvp is not wrong  # the registered op is untouched
    report = check_jvp.check_jvp(bad, key, "float64")
    assert not report.ok and report.worst_rel > 1e-3, str(report)


def test_vmap_of_forward_mode(key):
    op = REGISTRY["layer_norm"]
    (x, gamma, beta), static = op.sample(key, jnp.float64)
    xs = jnp.stack([x, 2 * x + 1])
    # Not ones: layer norm is shift-invariant, so its JVP along ones is 0 and the comparison
    # would be rounding noise against rounding noise.
    t = jax.random.normal(jax.random.fold_in(key, 1), x.shape, x.dtype)
    ts = jnp.stack([t, -x])

    def jt(x, t):
        return jax.jvp(lambda x: op.forward_mode(x, gamma, beta, **static), (x,), (t,))[1]

    batched = jax.jit(jax.vmap(jt))(xs, ts)
    for m in range(2):
        _assert_ok(compare(batched[m], jt(xs[m], ts[m]), tol=EXACT_TOL, name="vmap jvp"))


# -- 7. the registry report -------------------------------------------------------------------
def test_check_jvp_registry_rows():
    ops = [REGISTRY["softmax"], REGISTRY["mse"]]
    reports = check_jvp.check_jvp_registry(("float32", "float64"), [0], ops)
    # 2 ops × 2 dtypes × 3 checks
    assert len(reports) == 12 and all(r.ok for r in reports), "\n".join(map(str, reports))
    rows = [str(r) for r in reports]
    assert any(r.startswith("softmax [float64] hand jvp vs autodiff jvp: rel") for r in rows)
    assert any("⟨jvp t, c⟩ vs ⟨t, vjp c⟩" in r for r in rows)
    with pytest.raises(ValueError, match="unknown checks"):
        check_jvp.check_jvp_registry(checks=["nope"])
    with pytest.raises(ValueError, match="seeds must not be empty"):
        check_jvp.check_jvp_registry(seeds=[])
