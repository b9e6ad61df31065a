"""Mutation testing of the forward-mode check: break every op's hand JVP, prove it is flagged.

The forward-mode twin of `funcbp.check.mutate`. For every registered op it derives broken variants
(*mutants*) of its hand ``jvp`` automatically — each wraps the true rule — and shows that the
check `funcbp.check.jvp.check_jvp` (hand JVP through ``op.forward_mode`` vs `jax.jvp` of the
reference, float64, `funcbp.check.jvp.JVP_TOLERANCE`) flags them. Each mutant is an `Op` built
by ``op.with_jvp``.

The rule is linear in the tangents, ``J t = Σ_i J_i t_i``, so a planted bug in the term of one
input is the true rule fed a transformed tangent (``t_i`` is the tangent of float argument i):

============  ========================================================  ======================
family        the planted bug                                            applies to
============  ========================================================  ======================
sign          the term of ``t_i`` with a flipped sign (``t_i → −t_i``)   every float argument
scale2        the term of ``t_i`` doubled (``t_i → 2 t_i``)              every float argument
zero          the term of ``t_i`` forgotten (``t_i → 0``)                every float argument
swap          ``t_i, t_j → t_j, t_i``                                    float args of one shape
copy          ``t_i → t_j`` (another input's tangent used)               float args of one shape
transpose     ``t_i → t_iᵀ`` (last two axes)                             last two axes equal
first_only    ``t_i`` masked to index 0 of its leading axis (a missing   leading axis of size ≥ 2
              broadcast: one row's tangent stands for all)
primal        the tangent formula evaluated at a wrong primal: argument  every float argument
              i scaled by 1.1 (the forward-mode analogue of a wrong
              stored residual); the output itself stays right
out           a wrong primal output (1.1 · out) with the right tangent   every op
============  ========================================================  ======================

Integer arguments (labels, ids) and PRNG keys have no tangent and get no mutant. Mutants are
linear in the tangents, so they are valid `jax.custom_jvp` rules.

Some mutants are EQUIVALENT: they compute the true JVP, so no checker can (or should) flag them.
They are detected, not excused: a mutant that the check lets through is retried on fresh samples,
then compared with the true rule directly (``op.jvp`` called without autodiff); it counts as
equivalent only if ``(out, J t)`` equals the true one on every sample tried, and the reason is
stated (the tangent does not depend on an argument's value — the op is affine in it with a
constant slope: a bias, β, a table lookup, dropout's x, average pooling's x — or uses it only
through its sign pattern or order: relu, leaky_relu, max-pool's arg-max).

Each result also records whether the transpose identity alone, ⟨J t, c⟩ vs ⟨t, Jᵀ c⟩ between
the mutant rule and the TRUE hand VJP (no autodiff, no reference), flags the mutant: it catches
every wrong tangent but, by design, no wrong primal output (``out``).
"""

from __future__ import annotations

import dataclasses
import inspect
import zlib
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp

from funcbp.check import jvp as check_jvp
from funcbp.check.gradients import compare
from funcbp.check.mutate import MutantResult, OpMutation
from funcbp.ops import REGISTRY, Op

__all__ = [
    "FAMILIES",
    "JvpMutant",
    "JvpMutantResult",
    "counts",
    "format_table",
    "make_mutants",
    "mutate_op",
    "mutate_registry",
]

FAMILIES = ("sign", "scale2", "zero", "swap", "copy", "transpose", "first_only", "primal", "out")

PRIMAL_SCALE = 1.1


@dataclasses.dataclass(frozen=True)
class JvpMutant:
    """A broken copy of an op: ``op`` is ``original.with_jvp(bad_jvp, name=name)``."""

    name: str  # e.g. "linear:sign(w)"
    family: str
    description: str
    op: Op
    args: tuple[int, ...] = ()  # the array arguments whose tangent or primal it touches


@dataclasses.dataclass(frozen=True)
class JvpMutantResult(MutantResult):
    """`funcbp.mutate.MutantResult` plus: did the transpose identity alone flag it?"""

    by_transpose: bool = False


# -- mutant builders -------------------------------------------------------------------------
def _arg_names(op: Op) -> tuple[str, ...]:
    return tuple(inspect.signature(op.reference).parameters)[: op.n_arrays]


def _mutant(op: Op, name, family, description, args, bad_jvp) -> JvpMutant:
    full = f"{op.name}:{name}"
    return JvpMutant(full, family, description, op.with_jvp(bad_jvp, name=full), tuple(args))


def _on_tangents(op: Op, name, family, description, args, transform) -> JvpMutant:
    """The true rule fed ``transform(list of tangents)``: a bug in the terms of those inputs."""

    def bad_jvp(primals, tangents, **static):
        return op.jvp(primals, tuple(transform(list(tangents))), **static)

    return _mutant(op, name, family, description, args, bad_jvp)


def _set(items, i, value):
    items = list(items)
    items[i] = value
    return items


def _first_only(t):
    return jnp.zeros_like(t).at[0].set(t[0])


def _tangent_mutants(op: Op, arrays, names, floats) -> list[JvpMutant]:
    """sign, scale2, zero, swap, copy, transpose, first_only: wrong terms of the tangent."""
    out = []
    for i in floats:
        n = names[i]
        out += [
            _on_tangents(op, f"sign({n})", "sign", f"term of d{n} negated", (i,),
                         lambda t, i=i: _set(t, i, -t[i])),
            _on_tangents(op, f"scale2({n})", "scale2", f"term of d{n} doubled", (i,),
                         lambda t, i=i: _set(t, i, t[i] + t[i])),
            _on_tangents(op, f"zero({n})", "zero", f"term of d{n} forgotten", (i,),
                         lambda t, i=i: _set(t, i, jnp.zeros_like(t[i]))),
        ]  # fmt: skip
    kind = lambda i: (tuple(jnp.shape(arrays[i])), jnp.result_type(arrays[i]))
    for a, i in enumerate(floats):
        for j in floats[a + 1 :]:
            if kind(i) != kind(j):
                continue
            ni, nj = names[i], names[j]
            out += [
                _on_tangents(op, f"swap({ni},{nj})", "swap", f"d{ni} ↔ d{nj}", (i, j),
                             lambda t, i=i, j=j: _set(_set(t, i, t[j]), j, t[i])),
                _on_tangents(op, f"copy({nj}→{ni})", "copy", f"d{ni} → d{nj}", (i, j),
                             lambda t, i=i, j=j: _set(t, i, t[j])),
                _on_tangents(op, f"copy({ni}→{nj})", "copy", f"d{nj} → d{ni}", (i, j),
                             lambda t, i=i, j=j: _set(t, j, t[i])),
            ]  # fmt: skip
    for i in floats:
        s, n = jnp.shape(arrays[i]), names[i]
        if len(s) >= 2 and s[-1] == s[-2] > 1:
            out.append(
                _on_tangents(op, f"transpose({n})", "transpose", f"d{n} → d{n}ᵀ (last two axes)",
                             (i,), lambda t, i=i: _set(t, i, jnp.swapaxes(t[i], -1, -2)))
            )  # fmt: skip
        if len(s) >= 1 and s[0] >= 2:
            out.append(
                _on_tangents(op, f"first_only({n})", "first_only",
                             f"d{n} masked to its first row (a missing broadcast)", (i,),
                             lambda t, i=i: _set(t, i, _first_only(t[i])))
            )  # fmt: skip
    return out


def _primal_mutant(op: Op, i: int, n: str) -> JvpMutant:
    """The tangent evaluated at a wrong value of primal ``i`` (× `PRIMAL_SCALE`)."""

    def bad_jvp(primals, tangents, **static):
        out, _ = op.jvp(primals, tangents, **static)
        wrong = _set(primals, i, primals[i] * jnp.asarray(PRIMAL_SCALE, primals[i].dtype))
        _, tangent = op.jvp(tuple(wrong), tangents, **static)
        return out, tangent

    desc = f"tangent computed from {PRIMAL_SCALE}·{n} (a wrong primal value)"
    return _mutant(op, f"primal({n})", "primal", desc, (i,), bad_jvp)


def _out_mutant(op: Op) -> JvpMutant:
    def bad_jvp(primals, tangents, **static):
        out, tangent = op.jvp(primals, tangents, **static)
        return jax.tree.map(lambda o: o * jnp.asarray(PRIMAL_SCALE, o.dtype), out), tangent

    return _mutant(op, "out", "out", f"primal output × {PRIMAL_SCALE}, tangent right", (), bad_jvp)


def make_mutants(op: Op, arrays: Sequence, static: dict) -> list[JvpMutant]:
    """Every mutant of ``op``'s JVP that applies at inputs ``arrays`` (shapes decide)."""
    del static  # the families depend on the arrays' shapes only
    names, floats = _arg_names(op), check_jvp.float_positions(arrays)
    mutants = _tangent_mutants(op, arrays, names, floats)
    mutants += [_primal_mutant(op, i, names[i]) for i in floats]
    return [*mutants, _out_mutant(op)]


# -- running ---------------------------------------------------------------------------------
def _equal(a, b) -> bool:
    return compare(a, b, tol=check_jvp.JVP_TOLERANCE["float64"], name="equivalence").ok


def _reason(mutant: JvpMutant, names, op: Op, arrays, static, tangents) -> str:
    """Why a mutant that nothing flags computes the true JVP, in words (checked numerically)."""
    if mutant.family in ("sign", "scale2", "zero"):
        return f"the term of d{names[mutant.args[0]]} is 0 here"
    if mutant.family in ("swap", "copy"):
        i, j = mutant.args
        return f"d{names[i]} and d{names[j]} enter alike here"
    if mutant.family == "transpose":
        return f"the term of d{names[mutant.args[0]]} is invariant to transposing it here"
    if mutant.family == "first_only":
        return f"only the first row of d{names[mutant.args[0]]} contributes here"
    if mutant.family == "out":
        return "the output is 0 here"
    (i,) = mutant.args  # primal: is its value used at all? Replace it by noise and see.
    noisy = _set(arrays, i, jax.random.normal(jax.random.key(i), arrays[i].shape, arrays[i].dtype))
    true = check_jvp.explicit_jvp(op, arrays, static, tangents)[1]
    if _equal(check_jvp.explicit_jvp(op, noisy, static, tangents)[1], true):
        return (
            f"the tangent does not depend on the value of {names[i]} (the op is affine in "
            f"{names[i]} with a constant slope)"
        )
    return (
        f"the tangent is invariant to scaling {names[i]} by {PRIMAL_SCALE}: it uses {names[i]} "
        "only through its sign pattern or order (e.g. relu's x > 0, max-pool's arg-max)"
    )


def _transpose_flags(m: JvpMutant, arrays, static, tangents, cot) -> bool:
    """⟨J_mutant t, c⟩ vs ⟨t, Jᵀ c⟩: the mutant's ``op`` keeps the TRUE ``bwd`` (explicit
    rules, eager; no autodiff, no reference)."""
    lhs, rhs, scale = check_jvp.transpose_identity(m.op, arrays, static, tangents, cot, jit=False)
    return abs(lhs - rhs) > check_jvp.TRANSPOSE_TOLERANCE["float64"] * scale


def _verdict(m: JvpMutant, arrays, static, tangents, ref, tol) -> tuple[bool, float]:
    """(killed, error): the check's hand JVP of the mutant vs `jax.jvp` of the reference."""
    got = check_jvp.jvp_outputs(m.op, arrays, static, tangents, "hand", jit=False)
    report = compare(got, ref, tol=tol, name=m.name, a_name="hand jvp", b_name="autodiff jvp")
    return not report.ok, report.worst_rel


def mutate_op(op: Op, key, *, dtype=jnp.float64, tries: int = 3) -> OpMutation:
    """Make every mutant of ``op``'s JVP and run the check (hand vs autodiff JVP) on each.

    Built for the sample ``check_jvp.draw`` gives for ``key``; a mutant the check lets through is
    retried on up to ``tries - 1`` further samples (``jax.random.fold_in(key, t)``, where it
    still applies), then marked equivalent if its ``(out, J t)`` equals the true rule's on every
    sample. Un-jitted: op-by-op dispatch reuses one compile per primitive and shape.
    """
    dtype = jnp.dtype(dtype)
    keys = [key] + [jax.random.fold_in(key, t) for t in range(1, tries)]
    names, tol = _arg_names(op), check_jvp.JVP_TOLERANCE[dtype.name]
    samples: dict[int, tuple] = {}

    def sample(t):
        if t not in samples:
            arrays, static, tangents, cot = check_jvp.draw(op, keys[t], dtype)
            ref = check_jvp.jvp_outputs(op, arrays, static, tangents, "autodiff", jit=False)
            mutants = {m.name: m for m in make_mutants(op, arrays, static)}
            samples[t] = (arrays, static, tangents, cot, ref, mutants)
        return samples[t]

    results = []
    for mutant in sample(0)[5].values():
        killed, error, used, equivalent, reason = False, float("nan"), 0, True, ""
        by_transpose = False
        for t in range(tries):
            arrays, static, tangents, cot, ref, mutants = sample(t)
            if mutant.name not in mutants:
                continue  # not applicable at this sample's shapes
            m, used = mutants[mutant.name], used + 1
            killed, error = _verdict(m, arrays, static, tangents, ref, tol)
            by_transpose = by_transpose or _transpose_flags(m, arrays, static, tangents, cot)
            if killed:
                break
            true = check_jvp.explicit_jvp(op, arrays, static, tangents)
            if _equal(check_jvp.explicit_jvp(m.op, arrays, static, tangents), true):
                reason = reason or _reason(m, names, op, arrays, static, tangents)
            else:
                equivalent = False
        results.append(
            JvpMutantResult(
                mutant.name,
                mutant.family,
                mutant.description,
                killed,
                error,
                used,
                equivalent=not killed and equivalent,
                reason=reason if not killed and equivalent else "",
                by_transpose=by_transpose,
            )
        )
    return OpMutation(op.name, tuple(results))


def mutate_registry(key=None, ops: Iterable[Op] | None = None, *, tries: int = 3):
    """`mutate_op` for every op (default: the whole `REGISTRY`), one key per op name."""
    key = jax.random.key(0) if key is None else key
    out = []
    for op in ops if ops is not None else REGISTRY.values():
        op_key = jax.random.fold_in(key, zlib.crc32(f"jvp:{op.name}".encode()) & 0x7FFFFFFF)
        out.append(mutate_op(op, op_key, tries=tries))
    return out


# -- reporting -------------------------------------------------------------------------------
def counts(results: Sequence[OpMutation]) -> dict[str, int]:
    """Totals: mutants made, killed, equivalent, survived, and flagged by the transpose identity."""
    rows = [r for res in results for r in res.results]
    return {
        "made": len(rows),
        "killed": sum(r.killed for r in rows),
        "equivalent": sum(r.equivalent for r in rows),
        "survived": sum(not r.killed and not r.equivalent for r in rows),
        "by_transpose": sum(getattr(r, "by_transpose", False) for r in rows),
    }


def format_table(results: Sequence[OpMutation]):
    """A rich `Table`: JVP mutants made / killed / equivalent / survived per op, and the total."""
    from rich.table import Table

    table = Table(title="funcbp mutation testing: broken JVPs the forward-mode check must flag")
    for col in ("op", "made", "killed", "equivalent", "survived", "by transpose", "why equivalent"):
        table.add_column(col, justify="left" if col in ("op", "why equivalent") else "right")
    for r in results:
        why = "; ".join(f"{e.name.split(':', 1)[1]}: {e.reason}" for e in r.equivalent)
        c = counts([r])
        table.add_row(
            r.op, *(str(c[k]) for k in ("made", "killed", "equivalent", "survived")),
            str(c["by_transpose"]), why,
        )  # fmt: skip
    c = counts(results)
    table.add_row("[b]total[/b]", *(str(c[k]) for k in list(c)), "")
    return table
