"""Mutation testing of the gradient checker: break every op's backward on purpose, prove it fails.

A checker that never fails proves nothing. For every registered op this module derives broken
variants (*mutants*) of its hand ``bwd`` automatically — each wraps the true ``bwd`` — and shows
that `funcbp.check` flags them. Each mutant is an `Op` built by ``op.with_bwd``.

Mutant families (``d·`` is the true cotangent of one array argument, ``g`` the output cotangent):

============  ========================================================  ======================
family        the planted bug                                            applies to
============  ========================================================  ======================
sign          ``d·`` → ``−d·`` (a flipped sign)                          every float argument
scale2        ``d·`` → ``2 d·`` (a doubled term)                         every float argument
zero          ``d·`` → ``0`` (a forgotten gradient)                      every float argument
swap          ``da, db`` → ``db, da``                                    float args of one shape
copy          ``da`` → ``db`` (another argument's cotangent returned)    float args of one shape
transpose     ``d·`` → ``d·`` with its last two axes swapped             last two axes equal
first_only    ``d·`` from ``g`` masked to the first element of the       outputs with a leading
              leading (batch) axis: for a parameter (``w``, ``b``,       axis of size ≥ 2
              ``gamma``, an embedding table) this is "skip the batch
              sum" (only sample 0's contribution); for a batched
              input it drops every other example's gradient
residual      ``bwd`` evaluated with one float residual leaf scaled by   every float residual
              1.1: a wrong stored value, or a term computed from it      leaf of non-zero size
============  ========================================================  ======================

Integer arguments (labels, ids) and PRNG keys have no cotangent (``None``) and get no mutant;
tuple outputs (``lstm_cell``'s ``(h, c)``) are masked leaf by leaf. Residual mutants need a float
residual: dropout keeps only its key, max_pool2d an int8 arg-max index and a zero-size shape
token, so those two get cotangent mutants only; losses (scalar output) get no ``first_only``.

Some mutants are EQUIVALENT: they compute the true VJP, so no checker can (or should) flag them.
They are detected, not excused: a mutant that the checker lets through is retried on fresh
samples, then compared with the true backward directly (explicit ``fwd`` + ``bwd``, no autodiff);
it counts as equivalent only if its cotangents equal the true ones on every sample tried, and the
reason is stated (a zero cotangent, a symmetric cotangent, a residual used only through its sign or
shape — ReLU keeping ``y`` (``residual="output"``) tests ``y > 0``, so ``1.1 y`` gives the same
mask; the embedding keeps its table only for its shape, which is told apart by replacing the
residual with noise).
A survivor that is *not* equivalent is a hole in the checker.

Killing a mutant runs exactly `funcbp.check.check_op`'s comparison — the op's sampler and a random
cotangent from the same key, ``"hand"`` (`jax.grad` through the mutant's `jax.custom_vjp`) vs
``"autodiff"``, `funcbp.check.compare` with `funcbp.check.TOLERANCE` — but un-jitted by default
(hundreds of mutants, one compile each, would take minutes; op-by-op dispatch reuses one compile
per primitive and shape). ``jit=True`` calls `funcbp.check.check_op` itself.
"""

from __future__ import annotations

import dataclasses
import inspect
import zlib
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp

from funcbp.check import gradients as check
from funcbp.ops import REGISTRY, Op

__all__ = [
    "FAMILIES",
    "Mutant",
    "MutantResult",
    "OpMutation",
    "draw",
    "make_mutants",
    "mutate_op",
    "mutate_registry",
]

FAMILIES = ("sign", "scale2", "zero", "swap", "copy", "transpose", "first_only", "residual")

RESIDUAL_SCALE = 1.1


@dataclasses.dataclass(frozen=True)
class Mutant:
    """A broken copy of an op: ``op`` is ``original.with_bwd(bad_bwd, name=name)``."""

    name: str  # e.g. "linear:sign(w)"
    family: str
    description: str
    op: Op
    args: tuple[int, ...] = ()  # the array arguments whose cotangents it touches
    residual: int | None = None  # the residual leaf it perturbs (family "residual")


# -- inputs ----------------------------------------------------------------------------------
def draw(op: Op, key, dtype=jnp.float64):
    """``(arrays, static, cotangent)`` exactly as `funcbp.check.check_op` draws them for ``key``."""
    k_sample, k_cot = jax.random.split(key)
    arrays, static = op.sample(k_sample, jnp.dtype(dtype))
    arrays = tuple(arrays)
    out = jax.eval_shape(lambda *a: op.autodiff(*a, **static), *arrays)
    return arrays, static, check.random_cotangent(k_cot, out)


def _arg_names(op: Op) -> tuple[str, ...]:
    return tuple(inspect.signature(op.reference).parameters)[: op.n_arrays]


def _is_float_leaf(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.inexact) and x.size > 0


# -- mutant builders -------------------------------------------------------------------------
def _on_grads(
    op: Op, name: str, family: str, description: str, args, transform, residual=None
) -> Mutant:
    """A mutant whose bwd is ``transform(true cotangents, residuals, g, static)``."""

    def bad_bwd(residuals, g, **static):
        grads = list(op.bwd(residuals, g, **static))
        return tuple(transform(grads, residuals, g, static))

    full = f"{op.name}:{name}"
    return Mutant(full, family, description, op.with_bwd(bad_bwd, name=full), tuple(args), residual)


def _set(grads, i, value):
    grads = list(grads)
    grads[i] = value
    return grads


def _first_only(g):
    """``g`` with every leaf zeroed except index 0 of its leading axis."""
    return jax.tree.map(lambda leaf: jnp.zeros_like(leaf).at[0].set(leaf[0]), g)


def _single(op: Op, names, floats) -> list[Mutant]:
    """sign, scale2 and zero of every float argument's cotangent."""
    out = []
    for i in floats:
        n = names[i]
        out += [
            _on_grads(op, f"sign({n})", "sign", f"d{n} → −d{n}", (i,),
                      lambda gr, r, g, s, i=i: _set(gr, i, -gr[i])),
            _on_grads(op, f"scale2({n})", "scale2", f"d{n} → 2·d{n}", (i,),
                      lambda gr, r, g, s, i=i: _set(gr, i, gr[i] + gr[i])),
            _on_grads(op, f"zero({n})", "zero", f"d{n} → 0", (i,),
                      lambda gr, r, g, s, i=i: _set(gr, i, jnp.zeros_like(gr[i]))),
        ]  # fmt: skip
    return out


def _pairs(op: Op, names, floats, arrays) -> list[Mutant]:
    """swap and copy between float arguments of one shape and dtype."""
    shape = lambda i: (tuple(jnp.shape(arrays[i])), jnp.result_type(arrays[i]))
    out = []
    for a_pos, i in enumerate(floats):
        for j in floats[a_pos + 1 :]:
            if shape(i) != shape(j):
                continue
            ni, nj = names[i], names[j]
            out += [
                _on_grads(op, f"swap({ni},{nj})", "swap", f"d{ni} ↔ d{nj}", (i, j),
                          lambda gr, r, g, s, i=i, j=j: _set(_set(gr, i, gr[j]), j, gr[i])),
                _on_grads(op, f"copy({nj}→{ni})", "copy", f"d{ni} → d{nj}", (i, j),
                          lambda gr, r, g, s, i=i, j=j: _set(gr, i, gr[j])),
                _on_grads(op, f"copy({ni}→{nj})", "copy", f"d{nj} → d{ni}", (i, j),
                          lambda gr, r, g, s, i=i, j=j: _set(gr, j, gr[i])),
            ]  # fmt: skip
    return out


def _transposes(op: Op, names, floats, arrays) -> list[Mutant]:
    """A cotangent with its last two (equal) axes swapped."""
    out = []
    for i in floats:
        s = jnp.shape(arrays[i])
        if len(s) >= 2 and s[-1] == s[-2] and s[-1] > 1:
            n = names[i]
            out.append(
                _on_grads(op, f"transpose({n})", "transpose", f"d{n} → d{n}ᵀ (last two axes)",
                          (i,), lambda gr, r, g, s, i=i: _set(gr, i, jnp.swapaxes(gr[i], -1, -2)))
            )  # fmt: skip
    return out


def _first_onlys(op: Op, names, floats, arrays, static) -> list[Mutant]:
    """The cotangent from ``g`` masked to the first example of the leading axis."""
    out_leaves = jax.tree.leaves(jax.eval_shape(lambda *a: op.autodiff(*a, **static), *arrays))
    if not out_leaves or not all(len(o.shape) >= 1 and o.shape[0] >= 2 for o in out_leaves):
        return []
    lead, out = out_leaves[0].shape[0], []
    for i in floats:
        n, s = names[i], jnp.shape(arrays[i])
        batched = len(s) == len(out_leaves[0].shape) and len(s) >= 1 and s[0] == lead
        what = (
            "drops every other example's gradient"
            if batched
            else "skips the batch sum: only sample 0's contribution"
        )
        out.append(
            _on_grads(op, f"first_only({n})", "first_only", f"d{n} {what}", (i,),
                      lambda gr, r, g, st, i=i: _set(gr, i, op.bwd(r, _first_only(g), **st)[i]))
        )  # fmt: skip
    return out


def _residuals(op: Op, arrays, static) -> list[Mutant]:
    """``bwd`` run with one float residual leaf scaled by `RESIDUAL_SCALE`."""
    _, residuals = jax.eval_shape(lambda *a: op.fwd(*a, **static), *arrays)
    out = []
    for j, leaf in enumerate(jax.tree.leaves(residuals)):
        if not _is_float_leaf(leaf):
            continue
        desc = f"bwd with residual[{j}] {tuple(leaf.shape)} scaled by {RESIDUAL_SCALE}"

        def transform(gr, r, g, st, j=j):
            flat, tree = jax.tree.flatten(r)
            flat[j] = flat[j] * jnp.asarray(RESIDUAL_SCALE, flat[j].dtype)
            return list(op.bwd(tree.unflatten(flat), g, **st))

        out.append(_on_grads(op, f"residual[{j}]", "residual", desc, (), transform, j))
    return out


def make_mutants(op: Op, arrays: Sequence, static: dict) -> list[Mutant]:
    """Every mutant of ``op`` that applies at inputs ``arrays`` (shapes decide applicability),
    family by family (`FAMILIES`)."""
    names = _arg_names(op)
    floats = [i for i, a in enumerate(arrays) if check._is_float(a)]
    return [
        *_single(op, names, floats),
        *_pairs(op, names, floats, arrays),
        *_transposes(op, names, floats, arrays),
        *_first_onlys(op, names, floats, arrays, static),
        *_residuals(op, arrays, static),
    ]


# -- running ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MutantResult:
    """The verdict on one mutant: killed by the checker, or equivalent (with the reason)."""

    name: str
    family: str
    description: str
    killed: bool
    error: float  # the checker's worst error hand(mutant) vs autodiff (killing sample, or last)
    tries: int  # samples drawn before it was killed (or all of them)
    equivalent: bool = False
    reason: str = ""

    @property
    def status(self) -> str:
        if self.killed:
            return "killed"
        return "equivalent" if self.equivalent else "SURVIVED"


@dataclasses.dataclass(frozen=True)
class OpMutation:
    """All mutants of one op."""

    op: str
    results: tuple[MutantResult, ...]

    @property
    def made(self) -> int:
        return len(self.results)

    @property
    def killed(self) -> int:
        return sum(r.killed for r in self.results)

    @property
    def equivalent(self) -> tuple[MutantResult, ...]:
        return tuple(r for r in self.results if not r.killed and r.equivalent)

    @property
    def survivors(self) -> tuple[MutantResult, ...]:
        """Mutants the checker let through although they are NOT equivalent (should be none)."""
        return tuple(r for r in self.results if not r.killed and not r.equivalent)

    @property
    def ok(self) -> bool:
        return not self.survivors


def _reason(mutant: Mutant, true_grads, names, op: Op, arrays, static, cot) -> str:
    """Why an undetectable mutant computes the true VJP, in words (checked numerically)."""
    norm = lambda i: float(jnp.linalg.norm(jnp.ravel(true_grads[i])))
    if mutant.family in ("sign", "scale2", "zero"):
        (i,) = mutant.args
        return f"the true d{names[i]} is 0 here (‖d{names[i]}‖ = {norm(i):.1e})"
    if mutant.family in ("swap", "copy"):
        i, j = mutant.args
        return f"d{names[i]} = d{names[j]} here"
    if mutant.family == "transpose":
        return f"d{names[mutant.args[0]]} is symmetric here"
    if mutant.family == "first_only":
        return f"only the first batch element contributes to d{names[mutant.args[0]]}"
    # residual: is the leaf used at all? Replace it by noise and see whether bwd notices.
    j = mutant.residual
    _, residuals = op.fwd(*arrays, **static)
    flat, tree = jax.tree.flatten(residuals)
    flat[j] = jax.random.normal(jax.random.key(j), flat[j].shape, flat[j].dtype)
    noisy = op.bwd(tree.unflatten(flat), cot, **static)
    if _grads_equal(tuple(noisy), tuple(true_grads)):
        return f"residual[{j}] is kept for its shape/dtype only: its values never enter bwd"
    return (
        f"bwd is invariant to scaling residual[{j}]: it uses only its sign pattern "
        "(e.g. relu's y > 0)"
    )


def _grads_equal(a, b) -> bool:
    return check.compare(a, b, tol=check.TOLERANCE["float64"], name="equivalence").ok


def _verdict(op: Op, m: Mutant, arrays, static, cot, ref, *, tol, dtype, key, jit):
    """``(killed, error)`` of the checker on mutant ``m`` at one sample."""
    if jit:
        report = check.check_op(m.op, key, dtype, "hand", "autodiff")
    else:
        got = check.op_gradients(m.op, arrays, static, cot, "hand", jit=False)
        report = check.compare(got, ref, tol=tol, name=m.name, a_name="hand",
                               b_name="autodiff", dtype=dtype.name)  # fmt: skip
    return not report.ok, report.worst_rel


def _judge(op: Op, mutant: Mutant, sample, tries: int, names, **kw) -> MutantResult:
    """Kill ``mutant`` on the first sample that shows it; else prove it equivalent (its
    cotangents equal the true ones on every sample where it applies) or leave it a survivor."""
    killed, error, used, equivalent, reason = False, float("nan"), 0, True, ""
    for t in range(tries):
        arrays, static, cot, mutants, ref, key = sample(t)
        if mutant.name not in mutants:
            continue  # not applicable at this sample's shapes
        m = mutants[mutant.name]
        used += 1
        killed, error = _verdict(op, m, arrays, static, cot, ref, key=key, **kw)
        if killed:
            break
        true = check.op_gradients(op, arrays, static, cot, "explicit", jit=False)
        bad = check.op_gradients(m.op, arrays, static, cot, "explicit", jit=False)
        if _grads_equal(bad, true):
            reason = reason or _reason(m, true, names, op, arrays, static, cot)
        else:
            equivalent = False
    equivalent = not killed and equivalent
    return MutantResult(mutant.name, mutant.family, mutant.description, killed, error, used,
                        equivalent=equivalent, reason=reason if equivalent else "")  # fmt: skip


def mutate_op(op: Op, key, *, dtype=jnp.float64, tries: int = 3, jit: bool = False) -> OpMutation:
    """Make every mutant of ``op`` and run the checker (hand vs autodiff) on each.

    The mutants are built for the sample ``check_op`` draws from ``key``. A mutant the checker
    lets through is retried on up to ``tries - 1`` further samples (``jax.random.fold_in(key,
    t)``, where it still applies); if it survives all, it is compared with the true backward
    directly and marked equivalent when its cotangents match on every sample.
    """
    dtype = jnp.dtype(dtype)
    keys = [key] + [jax.random.fold_in(key, t) for t in range(1, tries)]
    samples: dict[int, tuple] = {}

    def sample(t):
        if t not in samples:
            arrays, static, cot = draw(op, keys[t], dtype)
            mutants = {m.name: m for m in make_mutants(op, arrays, static)}
            ref = check.op_gradients(op, arrays, static, cot, "autodiff", jit=jit)
            samples[t] = (arrays, static, cot, mutants, ref, keys[t])
        return samples[t]

    kw = dict(tol=check.TOLERANCE[dtype.name], dtype=dtype, jit=jit)
    names = _arg_names(op)
    results = [_judge(op, m, sample, tries, names, **kw) for m in sample(0)[3].values()]
    return OpMutation(op.name, tuple(results))


def mutate_registry(
    key=None, ops: Iterable[Op] | None = None, *, tries: int = 3, jit: bool = False
) -> list[OpMutation]:
    """`mutate_op` for every op (default: the whole `REGISTRY`), one key per op name."""
    key = jax.random.key(0) if key is None else key
    out = []
    for op in ops if ops is not None else REGISTRY.values():
        op_key = jax.random.fold_in(key, zlib.crc32(op.name.encode()) & 0x7FFFFFFF)
        out.append(mutate_op(op, op_key, tries=tries, jit=jit))
    return out
