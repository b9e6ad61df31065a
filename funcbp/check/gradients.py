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

import concurrent.futures
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
    "many_gradients",
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
        [_sample.host(gen.standard_normal(jnp.shape(o)), jnp.result_type(o)) for o in leaves]
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
    of each ``args[k]``, k in ``argnums``. Every element of every such arg is one basis vector
    e_i of their concatenation, so all 2n perturbed evaluations run as one vmap (one trace of
    ``f``); the other args get + 0, which leaves them exact."""
    xs = [jnp.asarray(args[k]) for k in argnums]
    if not xs:
        return ()
    sizes = [x.size for x in xs]
    n = sum(sizes)
    basis = jnp.eye(n, dtype=jnp.result_type(*xs)) * eps
    cuts = np.cumsum(sizes)[:-1].tolist()

    def shifted(d):
        a = list(args)
        for k, x, part in zip(argnums, xs, jnp.split(d, cuts), strict=True):
            a[k] = x + part.reshape(x.shape).astype(x.dtype)
        return f(*a)

    values = jax.vmap(shifted)(jnp.concatenate([basis, -basis]))
    flat = (values[:n] - values[n:]) / (2 * eps)
    return tuple(
        g.reshape(x.shape).astype(x.dtype) for x, g in zip(xs, jnp.split(flat, cuts), strict=True)
    )


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


def _tolerance(op: Op, dtype, a: str, b: str) -> float:
    """The bound for ``a`` vs ``b`` in ``dtype`` (raises where none is defined); float64 and
    finite differences need x64."""
    dtype = jnp.dtype(dtype)
    table = FD_TOLERANCE if "fd" in (a, b) else TOLERANCE
    if dtype.name not in table:
        raise ValueError(
            f"check_op {op.name}: no tolerance for {a} vs {b} in {dtype.name} "
            f"(have {sorted(table)}; finite differences need float64)"
        )
    if dtype == jnp.float64 or "fd" in (a, b):
        require_x64()
    return table[dtype.name]


def _draw(op: Op, key, dtype) -> tuple[tuple, dict, Any]:
    """``(arrays, static, cotangent)``: the op's random inputs (its ``sample``) and a random
    cotangent for its output."""
    k_sample, k_cot = jax.random.split(key)
    arrays, static = op.sample(k_sample, jnp.dtype(dtype))
    arrays = tuple(arrays)
    out = jax.eval_shape(lambda *x: op.autodiff(*x, **static), *arrays)
    return arrays, static, random_cotangent(k_cot, out)


def _report(op: Op, dtype, a: str, b: str, tol: float, draw, ga, gb) -> Report:
    arrays, static, _ = draw
    report = compare(ga, gb, tol=tol, name=op.name, a_name=a, b_name=b)
    return dataclasses.replace(
        report, dtype=jnp.dtype(dtype).name, detail=_describe(arrays, static)
    )


def check_op(op: Op, key, dtype=jnp.float64, a="hand", b="autodiff") -> Report:
    """Draw random inputs for ``op`` (its ``sample``) and a random cotangent; compare ``a``
    against ``b``. Tolerance: `FD_TOLERANCE` when either side is ``"fd"``, else `TOLERANCE`."""
    tol = _tolerance(op, dtype, a, b)  # before any work: an impossible pair fails at once
    draw = _draw(op, key, dtype)
    arrays, static, cot = draw
    ga = op_gradients(op, arrays, static, cot, a)
    gb = op_gradients(op, arrays, static, cot, b)
    return _report(op, dtype, a, b, tol, draw, ga, gb)


def _spread(grads: Sequence, argnums: tuple[int, ...], n: int) -> tuple:
    """Gradients of ``argnums`` -> one entry per argument, ``None`` where not differentiated."""
    return tuple(grads[argnums.index(i)] if i in argnums else None for i in range(n))


@functools.lru_cache(maxsize=256)
def _jitted_many(op: Op, specs: tuple) -> Callable:
    """One jitted program for many draws of one op: ``specs`` holds, per draw, its static
    arguments, the argnums to differentiate and the sources wanted. Compiling one program per op
    instead of one per (draw, source) pays XLA's fixed cost per program once."""
    fns = [
        [_gradient_fn(op, source, dict(static), argnums) for source in sources]
        for static, argnums, sources in specs
    ]

    def run(payloads):
        return tuple(
            tuple(fn(arrays, cot) for fn in row)
            for row, (arrays, cot) in zip(fns, payloads, strict=True)
        )

    return jax.jit(run)


def _plan(op: Op, draws: Sequence, sources: Sequence[Sequence[str]]) -> tuple[tuple, tuple]:
    """``(specs, payloads)`` for `_jitted_many`: per draw its (static, argnums, sources) and
    its (arrays, cotangent); validates sources and inputs first."""
    specs, payloads = [], []
    for (arrays, static, cot), srcs in zip(draws, sources, strict=True):
        unknown = set(srcs) - set(SOURCES)
        if unknown:
            raise ValueError(f"many_gradients: sources must be in {SOURCES}, got {sorted(unknown)}")
        if "explicit" in srcs and op.validate is not None:
            op.validate(*arrays, **static)
        if "fd" in srcs:
            require_x64()
        argnums = tuple(i for i, a in enumerate(arrays) if _is_float(a))
        specs.append((tuple(sorted(static.items())), argnums, tuple(srcs)))
        payloads.append((tuple(arrays), cot))
    return tuple(specs), tuple(payloads)


def _unpack(specs: tuple, payloads: tuple, found: tuple) -> list[dict]:
    out = []
    for (_, argnums, srcs), (arrays, _), row in zip(specs, payloads, found, strict=True):
        out.append(
            {source: _spread(g, argnums, len(arrays)) for source, g in zip(srcs, row, strict=True)}
        )
    return out


def many_gradients(op: Op, draws: Sequence, sources: Sequence[Sequence[str]]) -> list[dict]:
    """For each ``draw = (arrays, static, cotangent)`` (from `_draw`) and its ``sources``, the
    VJP from each source as `op_gradients` gives it (``None`` for integer arrays) — all computed
    by one compiled program."""
    specs, payloads = _plan(op, draws, sources)
    return _unpack(specs, payloads, _jitted_many(op, specs)(payloads))


def _op_reports(op: Op, wanted: dict, runs: list, grads: list[dict]) -> list[Report]:
    """One report per (dtype, pair): the worst of that dtype's draws."""
    reports = []
    for d, pairs in wanted.items():
        for a, b in pairs:
            tol = _tolerance(op, d, a, b)
            rows = [
                _report(op, d, a, b, tol, draw, g[a], g[b])
                for (dd, draw), g in zip(runs, grads, strict=True)
                if dd == d
            ]
            reports.append(max(rows, key=lambda r: (not r.ok, r.worst_rel)))
    return reports


def check_registry(
    dtypes: Iterable = ("float32", "float64"),
    seeds: Iterable[int] = range(3),
    ops: Iterable[Op] | None = None,
    pairs: Iterable[tuple[str, str]] = (("hand", "autodiff"), ("hand", "fd")),
) -> list[Report]:
    """Every op × dtype × pair, worst over ``seeds`` (random shapes and values each).

    Finite differences are only meaningful in float64; pairs with ``"fd"`` skip float32. Each
    op's draws and sources run as one compiled program (`many_gradients`), compiled on a worker
    thread while the next op is traced (XLA releases the GIL while it compiles); the reports
    are those `check_op` gives draw by draw.
    """
    seeds, dtypes, pairs = list(seeds), [jnp.dtype(d) for d in dtypes], list(pairs)
    if not seeds:
        raise ValueError("check_registry: seeds must not be empty (one random draw at least)")
    wanted = {
        d: [(a, b) for a, b in pairs if "fd" not in (a, b) or d == jnp.float64] for d in dtypes
    }
    pending = []
    with concurrent.futures.ThreadPoolExecutor(1) as compiler:
        for op in ops if ops is not None else REGISTRY.values():
            for d, ab in wanted.items():
                for a, b in ab:
                    _tolerance(op, d, a, b)
            runs = [(d, _draw(op, jax.random.key(s), d)) for d in dtypes for s in seeds]
            srcs = [sorted({x for pair in wanted[d] for x in pair}) for d, _ in runs]
            specs, payloads = _plan(op, [draw for _, draw in runs], srcs)
            lowered = _jitted_many(op, specs).lower(payloads)
            pending.append((op, runs, specs, payloads, compiler.submit(lowered.compile)))
        reports = []
        for op, runs, specs, payloads, compiled in pending:
            grads = _unpack(specs, payloads, compiled.result()(payloads))
            reports += _op_reports(op, wanted, runs, grads)
    return reports


def summarise(reports: Sequence[Report]) -> dict[str, Any]:
    """``{name: {"float32": worst_rel, "float64": worst_rel, "fd": worst_rel}}``."""
    out: dict[str, dict[str, float]] = {}
    for r in reports:
        col = "fd" if "fd" in (r.a, r.b) else r.dtype
        out.setdefault(r.name, {})[col] = r.worst_rel
    return out
