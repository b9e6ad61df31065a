"""Forward-mode checks: every op's hand JVP, proven against autodiff and against its hand VJP.

Three checks per op, on the op's own random inputs (its sampler), random tangents ``t`` (one per
float argument) and a random output cotangent ``c`` (never ones):

* ``"reference"``  the hand JVP (`jax.jvp` through ``op.forward_mode``, the `jax.custom_jvp`
  function) vs `jax.jvp` of the plain reference: primal output and output tangent, leaf by leaf
  (`JVP_TOLERANCE`);
* ``"transpose"``  the two hand rules are each other's transpose: ⟨J t, c⟩ from ``op.jvp`` equals
  ⟨t, Jᵀ c⟩ from ``op.fwd`` + ``op.bwd``, called directly (no JAX autodiff at all), relative to
  the magnitudes Σ ‖J t‖‖c‖ + Σ ‖t‖‖Jᵀ c‖ of the terms (`TRANSPOSE_TOLERANCE`);
* ``"jacobian"``   ``jacfwd(op.forward_mode) == jacrev(op)``: the whole Jacobian built column by
  column from the hand JVP and row by row from the hand VJP (`JACOBIAN_TOLERANCE`);

and, optionally, ``"hessian"``: `jax.hessian` (forward over reverse) of the scalar pairing
⟨op(x), u⟩ through ``op.forward_mode`` vs the reference's Hessian (float64 only). The reference
side is forward over forward, ``jacfwd(jacfwd(·))``: the same matrix with no transpose of any
reference primitive, because JAX's transpose of `lax.conv_general_dilated` in the kernel makes
XLA CPU (jax 0.10.2) abort for some strided shapes (see `funcbp.ops.conv.conv2d_jvp`).

Rows are `funcbp.check.Report`s, so they print like the gradient checks' rows. Each check is one
jitted call (both sides in one compile): with random shapes, compiles are the cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.check.gradients import LeafError, Report, compare, random_cotangent, require_x64
from funcbp.ops import REGISTRY, Op

__all__ = [
    "CHECKS",
    "HESSIAN_TOLERANCE",
    "JACOBIAN_TOLERANCE",
    "JVP_TOLERANCE",
    "TRANSPOSE_TOLERANCE",
    "check_hessian",
    "check_jacobian",
    "check_jvp",
    "check_jvp_registry",
    "check_transpose",
    "draw",
    "explicit_jvp",
    "float_positions",
    "hessians",
    "jvp_outputs",
    "transpose_identity",
]

JVP_TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
"""Relative error bound, hand JVP vs `jax.jvp` of the reference, per dtype."""

TRANSPOSE_TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
"""|⟨J t, c⟩ − ⟨t, Jᵀ c⟩| / (Σ ‖J t‖‖c‖ + Σ ‖t‖‖Jᵀ c‖), per dtype."""

JACOBIAN_TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
"""Relative error bound per Jacobian block, jacfwd(forward_mode) vs jacrev(op)."""

HESSIAN_TOLERANCE = {"float64": 1e-10}
"""Relative error bound per Hessian block, through forward_mode vs the reference (float64)."""

CHECKS = ("reference", "transpose", "jacobian")
SOURCES = ("hand", "explicit", "autodiff")


# -- inputs ----------------------------------------------------------------------------------
def _is_float(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def float_positions(arrays: Sequence) -> tuple[int, ...]:
    """Positions of the differentiable (inexact) arrays; labels, ids and keys are not."""
    return tuple(i for i, a in enumerate(arrays) if _is_float(a))


def draw(op: Op, key, dtype=jnp.float64):
    """``(arrays, static, tangents, cotangent)``: the op's random inputs, a random tangent per
    float argument (a tuple in the order of `float_positions`) and a random output cotangent."""
    k_sample, k_tan, k_cot = jax.random.split(key, 3)
    arrays, static = op.sample(k_sample, jnp.dtype(dtype))
    arrays = tuple(arrays)
    floats = tuple(arrays[i] for i in float_positions(arrays))
    out = jax.eval_shape(lambda *a: op.autodiff(*a, **static), *arrays)
    return arrays, static, random_cotangent(k_tan, floats), random_cotangent(k_cot, out)


def _restrict(fn: Callable, arrays: Sequence, static: dict) -> Callable:
    """``f(*floats) = fn(arrays with the float ones replaced, **static)``."""
    idx = float_positions(arrays)

    def f(*floats):
        full = list(arrays)
        for i, x in zip(idx, floats, strict=True):
            full[i] = x
        return fn(*full, **static)

    return f


def _full_tangents(arrays: Sequence, tangents: Sequence) -> tuple:
    """One tangent per array, as `jax.custom_jvp` hands them to a rule: the float ones given,
    `float0` zeros for integer arrays and PRNG keys."""
    found = dict(zip(float_positions(arrays), tangents, strict=True))
    return tuple(
        found[i] if i in found else np.zeros(np.shape(a), jax.dtypes.float0)
        for i, a in enumerate(arrays)
    )


# -- the three sources of J t ----------------------------------------------------------------
def explicit_jvp(op: Op, arrays: Sequence, static: dict, tangents: Sequence):
    """``op.jvp`` called directly (no JAX autodiff): ``(out, J t)``. ``tangents``: float args."""
    return op.jvp(tuple(arrays), _full_tangents(arrays, tangents), **static)


def jvp_outputs(op: Op, arrays, static, tangents, source: str, *, jit: bool = True):
    """``(out, J t)`` at ``arrays`` for tangents ``t`` of the float arguments, from ``source``:
    ``"hand"`` (`jax.jvp` of ``op.forward_mode``), ``"explicit"`` (``op.jvp`` called directly)
    or ``"autodiff"`` (`jax.jvp` of the reference)."""
    if source not in SOURCES:
        raise ValueError(f"jvp_outputs: source must be one of {SOURCES}, got {source!r}")
    wrap = jax.jit if jit else (lambda f: f)
    if source == "explicit":
        if op.validate is not None:
            op.validate(*arrays, **static)
        return wrap(lambda a, t: explicit_jvp(op, a, static, t))(tuple(arrays), tuple(tangents))
    fn = op.forward_mode if source == "hand" else op.autodiff
    return wrap(lambda a, t: _jvp(fn, a, static, t))(tuple(arrays), tuple(tangents))


def _jvp(fn: Callable, arrays, static, tangents):
    """`jax.jvp` of ``fn`` in its float arguments (the others held fixed): ``(out, J t)``."""
    floats = tuple(arrays[i] for i in float_positions(arrays))
    return jax.jvp(_restrict(fn, arrays, static), floats, tuple(tangents))


def _vjp(op: Op, arrays, static, cotangent) -> tuple:
    """The hand VJP of the float arguments, ``op.fwd`` then ``op.bwd`` called directly."""
    _, residuals = op.fwd(*arrays, **static)
    grads = tuple(op.bwd(residuals, cotangent, **static))
    return tuple(grads[i] for i in float_positions(arrays))


def _host_pairs(a, b) -> tuple[float, float]:
    """``(Σ ⟨a_i, b_i⟩, Σ ‖a_i‖‖b_i‖)`` over the leaves, in float64 NumPy."""
    total, scale = 0.0, 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
        total += float(np.dot(x, y))
        scale += float(np.linalg.norm(x) * np.linalg.norm(y))
    return total, scale


def transpose_identity(op: Op, arrays, static, tangents, cotangent, *, jit: bool = True):
    """``(⟨J t, c⟩, ⟨t, Jᵀ c⟩, scale)`` from the two hand rules called directly; ``scale`` is
    Σ ‖J t‖‖c‖ + Σ ‖t‖‖Jᵀ c‖, the size of the terms (Cauchy-Schwarz bounds each sum by it)."""
    wrap = jax.jit if jit else (lambda f: f)

    def both(a, t, c):
        return explicit_jvp(op, a, static, t)[1], _vjp(op, a, static, c)

    jt, vjp = wrap(both)(tuple(arrays), tuple(tangents), cotangent)
    lhs, s1 = _host_pairs(jt, cotangent)
    rhs, s2 = _host_pairs(tangents, vjp)
    return lhs, rhs, s1 + s2


# -- reports ---------------------------------------------------------------------------------
def _describe(arrays, static) -> str:
    shapes = " ".join(f"{tuple(np.shape(a))}" for a in arrays)
    kw = " ".join(f"{k}={v}" for k, v in static.items())
    return f"{shapes} {kw}".strip()


def _row(report: Report, dtype, arrays, static) -> Report:
    """``report`` labelled with the dtype name and the sampled shapes and static config."""
    detail = _describe(arrays, static)
    return dataclasses.replace(report, dtype=jnp.dtype(dtype).name, detail=detail)


def _tolerance(table: dict, what: str, op: Op, dtype) -> float:
    dtype = jnp.dtype(dtype)
    if dtype.name not in table:
        raise ValueError(f"{what} {op.name}: no tolerance for {dtype.name} (have {sorted(table)})")
    if dtype == jnp.float64:
        require_x64()
    return table[dtype.name]


def check_jvp(op: Op, key, dtype=jnp.float64) -> Report:
    """Hand JVP (`jax.jvp` of ``op.forward_mode``) vs `jax.jvp` of the reference: ``(out, J t)``
    compared leaf by leaf (`JVP_TOLERANCE`). One jitted call computes both."""
    tol = _tolerance(JVP_TOLERANCE, "check_jvp", op, dtype)
    arrays, static, tangents, _ = draw(op, key, dtype)

    @jax.jit
    def both(a, t):
        return _jvp(op.forward_mode, a, static, t), _jvp(op.autodiff, a, static, t)

    hand, ref = both(arrays, tangents)
    report = compare(hand, ref, tol=tol, name=op.name, a_name="hand jvp", b_name="autodiff jvp")
    return _row(report, dtype, arrays, static)


def check_transpose(op: Op, key, dtype=jnp.float64) -> Report:
    """⟨J t, c⟩ (hand JVP) vs ⟨t, Jᵀ c⟩ (hand VJP), relative to the terms' size: one row."""
    tol = _tolerance(TRANSPOSE_TOLERANCE, "check_transpose", op, dtype)
    arrays, static, tangents, cot = draw(op, key, dtype)
    lhs, rhs, scale = transpose_identity(op, arrays, static, tangents, cot)
    diff = abs(lhs - rhs)
    leaf = LeafError(
        path="⟨J t, c⟩ − ⟨t, Jᵀ c⟩",
        shape=(),
        max_abs=diff,
        rel=diff / scale if scale > 0 else diff,
        tol=tol,
        abs_norm=diff,
        ref_norm=scale,
        tree_norm=scale,
    )
    name = jnp.dtype(dtype).name
    return Report(op.name, name, "⟨jvp t, c⟩", "⟨t, vjp c⟩", (leaf,), _describe(arrays, static))


def check_jacobian(op: Op, key, dtype=jnp.float64) -> Report:
    """``jax.jacfwd(op.forward_mode)`` vs ``jax.jacrev(op)`` w.r.t. every float argument: the
    Jacobian from the hand JVP against the one from the hand VJP (`JACOBIAN_TOLERANCE`)."""
    tol = _tolerance(JACOBIAN_TOLERANCE, "check_jacobian", op, dtype)
    arrays, static, tangents, _ = draw(op, key, dtype)
    argnums = tuple(range(len(tangents)))

    @jax.jit
    def both(a):
        floats = tuple(a[i] for i in float_positions(a))
        fwd = jax.jacfwd(_restrict(op.forward_mode, a, static), argnums=argnums)(*floats)
        rev = jax.jacrev(_restrict(op, a, static), argnums=argnums)(*floats)
        return fwd, rev

    fwd, rev = both(arrays)
    report = compare(fwd, rev, tol=tol, name=op.name, a_name="jacfwd(jvp)", b_name="jacrev(vjp)")
    return _row(report, dtype, arrays, static)


def hessians(op: Op, arrays, static, cotangent):
    """The Hessian of ``⟨op(x), u⟩`` w.r.t. the float arguments (one jitted call):
    ``(hand, autodiff)`` = (`jax.hessian` through ``op.forward_mode``, i.e. jacfwd over the
    transposed hand JVP; ``jacfwd(jacfwd(·))`` of the reference, forward mode only)."""
    argnums = tuple(range(len(float_positions(arrays))))

    def pairing(fn, a):
        f = _restrict(fn, a, static)
        return lambda *floats: sum(
            jnp.vdot(o, u)
            for o, u in zip(jax.tree.leaves(f(*floats)), jax.tree.leaves(cotangent), strict=True)
        )

    @jax.jit
    def both(a):
        floats = tuple(a[i] for i in float_positions(a))
        hand = jax.hessian(pairing(op.forward_mode, a), argnums=argnums)(*floats)
        ref = jax.jacfwd(jax.jacfwd(pairing(op.autodiff, a), argnums), argnums)(*floats)
        return hand, ref

    return both(tuple(arrays))


def check_hessian(op: Op, key, dtype=jnp.float64) -> Report:
    """`jax.hessian` of ⟨op(x), u⟩ through ``op.forward_mode`` vs the reference's Hessian."""
    tol = _tolerance(HESSIAN_TOLERANCE, "check_hessian", op, dtype)
    arrays, static, _, cot = draw(op, key, dtype)
    hand, ref = hessians(op, arrays, static, cot)
    report = compare(hand, ref, tol=tol, name=op.name, a_name="hessian(jvp)", b_name="autodiff")
    return _row(report, dtype, arrays, static)


_CHECKERS = {
    "reference": (check_jvp, JVP_TOLERANCE),
    "transpose": (check_transpose, TRANSPOSE_TOLERANCE),
    "jacobian": (check_jacobian, JACOBIAN_TOLERANCE),
    "hessian": (check_hessian, HESSIAN_TOLERANCE),
}


def check_jvp_registry(
    dtypes: Iterable = ("float32", "float64"),
    seeds: Iterable[int] = range(3),
    ops: Iterable[Op] | None = None,
    checks: Iterable[str] = CHECKS,
) -> list[Report]:
    """Every op × dtype × check (``"reference"``, ``"transpose"``, ``"jacobian"``, optionally
    ``"hessian"``), worst over ``seeds``; a check with no tolerance for a dtype is skipped."""
    seeds, dtypes, checks = list(seeds), list(dtypes), list(checks)
    if not seeds:
        raise ValueError("check_jvp_registry: seeds must not be empty (one random draw at least)")
    unknown = [c for c in checks if c not in _CHECKERS]
    if unknown:
        raise ValueError(f"check_jvp_registry: unknown checks {unknown}; known {list(_CHECKERS)}")
    reports = []
    for op in ops if ops is not None else REGISTRY.values():
        for dtype in dtypes:
            for name in checks:
                checker, table = _CHECKERS[name]
                if jnp.dtype(dtype).name not in table:
                    continue
                runs = [checker(op, jax.random.key(s), dtype) for s in seeds]
                reports.append(max(runs, key=lambda r: (not r.ok, r.worst_rel)))
    return reports
