"""Gradient checking: compare hand VJPs, autodiff and finite differences, leaf by leaf.

Three (four) gradient sources for an op ``f`` with random cotangent ``u`` and the scalar
``L(args) = ⟨f(args), u⟩`` (so ``∇L`` is exactly the VJP ``Jᵀu``):

* ``"hand"``      `jax.grad` through the op's `jax.custom_vjp` (its hand ``bwd``);
* ``"explicit"``  the op's ``fwd`` then ``bwd`` called directly: no JAX autodiff at all;
* ``"autodiff"``  `jax.grad` of the plain reference: the ground truth;
* ``"fd"``        central finite differences of the reference, element by element (float64).

`compare` reports per leaf the max abs error and the relative error ‖a−b‖/‖b‖ against a
tolerance per dtype (`TOLERANCE`; finite differences have their own, `FD_TOLERANCE`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.ops import REGISTRY, Op, _sample

__all__ = [
    "FD_TOLERANCE",
    "TOLERANCE",
    "LeafError",
    "Report",
    "check_op",
    "check_registry",
    "summarise",
    "compare",
    "finite_difference_grad",
    "op_gradients",
    "random_cotangent",
    "relative_error",
    "require_x64",
]

TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
"""Relative-error bound hand vs autodiff (and hand vs explicit) per dtype."""

FD_TOLERANCE = {"float64": 1e-6}
"""Relative-error bound vs central differences (step `FD_EPS`): truncation ~eps², rounding
~1e-16/eps, both far below this for O(1) inputs."""

FD_EPS = 1e-6

SOURCES = ("hand", "explicit", "autodiff", "fd")


def require_x64() -> None:
    """Raise if float64 is unavailable (``jax.config.update("jax_enable_x64", True)`` first)."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            "funcbp.check: float64 checks need jax_enable_x64; call "
            'jax.config.update("jax_enable_x64", True) before creating arrays'
        )


def relative_error(a, b) -> float:
    """‖a − b‖ / ‖b‖ in float64 NumPy (‖a − b‖ itself when ‖b‖ = 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = float(np.linalg.norm((a - b).ravel()))
    den = float(np.linalg.norm(b.ravel()))
    return num / den if den > 0 else num


@dataclasses.dataclass(frozen=True)
class LeafError:
    """One leaf of a gradient tree compared: where, how far apart, and the verdict.

    ``rel`` is ‖a − b‖ / ‖b‖ for the leaf. A leaf whose reference gradient is *negligible* —
    ‖b‖ ≤ tol · ‖B‖ with ‖B‖ the norm of the whole reference tree (e.g. a conv bias followed
    by batch norm, whose true gradient is exactly 0, so both sides are rounding noise) — has no
    meaningful relative error; it is judged by ‖a − b‖ / ‖B‖ instead (``err``).
    """

    path: str
    shape: tuple[int, ...]
    max_abs: float
    rel: float
    tol: float
    abs_norm: float = 0.0  # ‖a − b‖
    ref_norm: float = 0.0  # ‖b‖ of this leaf
    tree_norm: float = 0.0  # ‖B‖ of the whole reference tree

    @property
    def negligible(self) -> bool:
        return self.ref_norm <= self.tol * self.tree_norm

    @property
    def err(self) -> float:
        """The error the verdict uses: relative, or relative to the tree for negligible leaves."""
        if self.negligible and self.tree_norm > 0:
            return self.abs_norm / self.tree_norm
        return self.rel

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.err) and self.err <= self.tol)


@dataclasses.dataclass(frozen=True)
class Report:
    """The comparison of gradient source ``a`` against ``b`` for one op or model."""

    name: str
    dtype: str
    a: str
    b: str
    leaves: tuple[LeafError, ...]
    detail: str = ""

    @property
    def ok(self) -> bool:
        return all(leaf.ok for leaf in self.leaves)

    @property
    def worst_rel(self) -> float:
        """The largest error over leaves (`LeafError.err`: relative, or tree-relative for leaves
        whose reference gradient is negligible)."""
        return max((leaf.err for leaf in self.leaves), default=0.0)

    @property
    def worst_abs(self) -> float:
        return max((leaf.max_abs for leaf in self.leaves), default=0.0)

    @property
    def tol(self) -> float:
        return max((leaf.tol for leaf in self.leaves), default=0.0)

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        return (
            f"{self.name} [{self.dtype}] {self.a} vs {self.b}: rel {self.worst_rel:.2e} "
            f"abs {self.worst_abs:.2e} tol {self.tol:.0e} {verdict} {self.detail}"
        ).rstrip()


def compare(a, b, *, tol: float, name: str = "", a_name="a", b_name="b", dtype="") -> Report:
    """Compare two gradient pytrees of the same structure leaf by leaf.

    ``None`` leaves (no gradient, e.g. integer labels) must be ``None`` on both sides.
    """
    a_leaves, a_def = jax.tree_util.tree_flatten_with_path(a)
    b_leaves, b_def = jax.tree_util.tree_flatten_with_path(b)
    if a_def != b_def:
        raise ValueError(f"compare {name}: gradient trees differ in structure: {a_def} vs {b_def}")
    tree_norm = float(np.sqrt(sum(np.sum(np.asarray(y, np.float64) ** 2) for _, y in b_leaves)))
    leaves = []
    for (path, x), (_, y) in zip(a_leaves, b_leaves, strict=True):
        if np.shape(x) != np.shape(y):
            raise ValueError(
                f"compare {name}: leaf {jax.tree_util.keystr(path)} has shape {np.shape(x)} vs "
                f"{np.shape(y)}"
            )
        diff = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
        leaves.append(
            LeafError(
                path=jax.tree_util.keystr(path) or "·",
                shape=tuple(np.shape(x)),
                max_abs=float(diff.max()) if diff.size else 0.0,
                rel=relative_error(x, y),
                tol=tol,
                abs_norm=float(np.linalg.norm(diff.ravel())),
                ref_norm=float(np.linalg.norm(np.asarray(y, np.float64).ravel())),
                tree_norm=tree_norm,
            )
        )
    dtype = dtype or (str(np.asarray(b_leaves[0][1]).dtype) if b_leaves else "")
    return Report(name, dtype, a_name, b_name, tuple(leaves))


# -- gradients of an op ----------------------------------------------------------------------
def _is_float(x) -> bool:
    """Differentiable argument? (float arrays yes; integer labels/ids and PRNG keys no)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = jnp.result_type(x)
    return jnp.issubdtype(dtype, jnp.inexact)


def random_cotangent(key, out):
    """A random normal cotangent with the structure, shapes and dtypes of ``out`` (never ones).

    ``out`` may hold arrays or `jax.ShapeDtypeStruct` leaves (from `jax.eval_shape`). For a
    concrete key the values are drawn on the host by NumPy (seeded by the key): `jax.random`
    would compile a program for every new shape, which dominated the cost of checking ops at
    random shapes. Under tracing (a traced key) `jax.random` is used instead.
    """
    leaves, treedef = jax.tree_util.tree_flatten(out)
    if isinstance(key, jax.core.Tracer):
        keys = jax.random.split(key, len(leaves))
        return treedef.unflatten(
            [
                jax.random.normal(k, jnp.shape(o), jnp.result_type(o))
                for k, o in zip(keys, leaves, strict=True)
            ]
        )
    gen = _sample.rng(key)
    return treedef.unflatten(
        [
            jnp.asarray(np.asarray(gen.standard_normal(jnp.shape(o)), jnp.result_type(o)))
            for o in leaves
        ]
    )


def _pairing(fn: Callable, static: dict) -> Callable:
    """``L(*arrays, u) = ⟨fn(*arrays, **static), u⟩``: its gradient is the VJP ``Jᵀ u``. The
    cotangent is an argument, not a constant: one compiled program serves every cotangent."""

    def loss(*arrays_and_cotangent):
        *arrays, cotangent = arrays_and_cotangent
        out = fn(*arrays, **static)
        leaves = jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(cotangent)
        pairs = zip(*leaves, strict=True)
        return sum(jnp.vdot(o, u) for o, u in pairs)

    return loss


def finite_difference_grad(f: Callable, args: Sequence, argnums: Sequence[int], eps=FD_EPS):
    """Central differences (f(x + εe_i) − f(x − εe_i)) / 2ε of scalar ``f`` for each element
    of each ``args[k]``, k in ``argnums``; all perturbations of one arg run as one vmap."""
    grads = []
    for k in argnums:
        x = jnp.asarray(args[k])
        n = x.size
        basis = (jnp.eye(n, dtype=x.dtype) * eps).reshape((n, *x.shape))

        def shifted(d, k=k):
            a = list(args)
            a[k] = args[k] + d
            return f(*a)

        values = jax.vmap(shifted)(jnp.concatenate([basis, -basis]))
        grads.append(((values[:n] - values[n:]) / (2 * eps)).reshape(x.shape))
    return tuple(grads)


def _gradient_fn(op: Op, source: str, static: dict, argnums: tuple[int, ...]) -> Callable:
    """``(arrays, cotangent) -> gradients of argnums`` for one source (un-jitted)."""
    if source == "explicit":

        def explicit(arrays, cotangent):
            _, residuals = op.fwd(*arrays, **static)
            grads = tuple(op.bwd(residuals, cotangent, **static))
            return tuple(grads[i] for i in argnums)

        return explicit
    if source == "fd":
        loss = _pairing(op.reference, static)
        return lambda arrays, cot: finite_difference_grad(loss, (*arrays, cot), argnums)
    loss = _pairing(op.hand if source == "hand" else op.autodiff, static)
    grad = jax.grad(loss, argnums=argnums)
    return lambda arrays, cot: grad(*arrays, cot)


@functools.lru_cache(maxsize=1024)
def _jitted(op: Op, source: str, static: tuple, argnums: tuple[int, ...]) -> Callable:
    """The jitted `_gradient_fn`, built once per (op, source, static, argnums): checks of one op
    at many seeds reuse its traces and executables wherever shapes coincide."""
    return jax.jit(_gradient_fn(op, source, dict(static), argnums))


def op_gradients(op: Op, arrays: Sequence, static: dict, cotangent, source: str, *, jit=True):
    """The VJP ``Jᵀu`` of ``op`` at ``arrays`` for cotangent ``u``, from one ``source``.

    Returns one entry per array: the gradient for inexact arrays, ``None`` for integer ones.
    """
    if source not in SOURCES:
        raise ValueError(f"op_gradients: source must be one of {SOURCES}, got {source!r}")
    arrays = tuple(arrays)
    argnums = tuple(i for i, a in enumerate(arrays) if _is_float(a))
    if source == "explicit" and op.validate is not None:
        op.validate(*arrays, **static)
    if source == "fd":
        require_x64()
    if jit:
        fn = _jitted(op, source, tuple(sorted(static.items())), argnums)
    else:
        fn = _gradient_fn(op, source, static, argnums)
    found = iter(fn(arrays, cotangent))
    return tuple(next(found) if i in argnums else None for i in range(len(arrays)))


def _describe(arrays, static) -> str:
    shapes = " ".join(f"{tuple(np.shape(a))}" for a in arrays)
    kw = " ".join(f"{k}={v}" for k, v in static.items())
    return f"{shapes} {kw}".strip()


def check_op(op: Op, key, dtype=jnp.float64, a="hand", b="autodiff") -> Report:
    """Draw random inputs for ``op`` (its ``sample``) and a random cotangent; compare ``a``
    against ``b``. Tolerance: `FD_TOLERANCE` when either side is ``"fd"``, else `TOLERANCE`."""
    dtype = jnp.dtype(dtype)
    table = FD_TOLERANCE if "fd" in (a, b) else TOLERANCE
    if dtype.name not in table:
        raise ValueError(
            f"check_op {op.name}: no tolerance for {a} vs {b} in {dtype.name} "
            f"(have {sorted(table)}; finite differences need float64)"
        )
    if dtype == jnp.float64 or "fd" in (a, b):
        require_x64()
    k_sample, k_cot = jax.random.split(key)
    arrays, static = op.sample(k_sample, dtype)
    arrays = tuple(arrays)
    out = jax.eval_shape(lambda *x: op.autodiff(*x, **static), *arrays)
    cot = random_cotangent(k_cot, out)
    ga = op_gradients(op, arrays, static, cot, a)
    gb = op_gradients(op, arrays, static, cot, b)
    report = compare(ga, gb, tol=table[dtype.name], name=op.name, a_name=a, b_name=b)
    return dataclasses.replace(report, dtype=dtype.name, detail=_describe(arrays, static))


def check_registry(
    dtypes: Iterable = ("float32", "float64"),
    seeds: Iterable[int] = range(3),
    ops: Iterable[Op] | None = None,
    pairs: Iterable[tuple[str, str]] = (("hand", "autodiff"), ("hand", "fd")),
) -> list[Report]:
    """Every op × dtype × pair, worst over ``seeds`` (random shapes and values each).

    Finite differences are only meaningful in float64; pairs with ``"fd"`` skip float32.
    """
    seeds, dtypes, pairs = list(seeds), list(dtypes), list(pairs)  # iterated once per op
    if not seeds:
        raise ValueError("check_registry: seeds must not be empty (one random draw at least)")
    reports = []
    for op in ops if ops is not None else REGISTRY.values():
        for dtype in dtypes:
            for a, b in pairs:
                if "fd" in (a, b) and jnp.dtype(dtype) != jnp.float64:
                    continue
                runs = [check_op(op, jax.random.key(s), dtype, a, b) for s in seeds]
                worst = max(runs, key=lambda r: (not r.ok, r.worst_rel))
                reports.append(worst)
    return reports


def summarise(reports: Sequence[Report]) -> dict[str, Any]:
    """``{name: {"float32": worst_rel, "float64": worst_rel, "fd": worst_rel}}``."""
    out: dict[str, dict[str, float]] = {}
    for r in reports:
        col = "fd" if "fd" in (r.a, r.b) else r.dtype
        out.setdefault(r.name, {})[col] = r.worst_rel
    return out
