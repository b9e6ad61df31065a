"""The precision report: each op's hand VJP in bfloat16 (or float16) against float64, beside
`jax.grad` of its reference in the same dtype — FlashAttention's test rule.

For an op ``f`` under the mixed-precision policy (`funcbp.ops.Op.cast`: float32 masters, cast
to ``dtype`` inside the op) the inputs x are drawn in float32, the op sees x̃ = round(x) and a
random cotangent ũ drawn in ``dtype``. The truth is the float64 computation at exactly those
values: ``f(x̃)`` and ``J(x̃)ᵀ ũ`` by `jax.grad` of the reference in float64. Against it, per
array (the output and each input's gradient), the relative error ‖a − t‖/‖t‖ of

* ``hand``:     the op's custom VJP in ``dtype`` (its forward and its hand ``bwd``), and
* ``autodiff``: `jax.grad` of the reference run in ``dtype`` (the casts differentiated too),

and the rule ``hand ≤ RULE · autodiff + FLOOR`` (RULE = 2: FlashAttention's tests hold their
kernels to twice the error of the PyTorch reference run in the same precision; FLOOR, far below
bfloat16's resolution, lets both be exact). A hand rule that is merely *different* (another
summation order) passes; one that loses digits autodiff keeps (a difference of nearly equal
numbers formed in half precision, a sum not accumulated in float32) fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.check.gradients import (
    _is_float,
    op_gradients,
    random_cotangent,
    relative_error,
    require_x64,
)
from funcbp.ops import REGISTRY, Op

__all__ = ["FLOOR", "RULE", "STRICT", "PrecisionReport", "PrecisionRow", "check_precision",
           "check_registry_precision"]  # fmt: skip

RULE = 2.0
"""The hand path's error may be at most this multiple of autodiff's (FlashAttention's rule)."""

FLOOR = 1e-6
"""Relative error below which both paths count as exact (bfloat16's resolution is 7.8e-3)."""


@dataclasses.dataclass(frozen=True)
class PrecisionRow:
    """One array of an op (``"out"`` or ``"d<arg>"``): relative errors against float64."""

    name: str
    hand: float
    autodiff: float

    @property
    def ratio(self) -> float:
        """hand / autodiff (autodiff's error floored at `FLOOR`)."""
        return self.hand / max(self.autodiff, FLOOR)

    @property
    def ok(self) -> bool:
        return self.hand <= RULE * self.autodiff + FLOOR


@dataclasses.dataclass(frozen=True)
class PrecisionReport:
    """One op in one dtype: a row per array, the worst ratio, and the verdict."""

    name: str
    dtype: str
    rows: tuple[PrecisionRow, ...]
    detail: str = ""

    @property
    def worst(self) -> PrecisionRow:
        """The row with the largest hand/autodiff ratio."""
        return max(self.rows, key=lambda r: r.ratio)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)


def _names(op: Op, arrays) -> list[str]:
    params = list(op._signature.parameters)[: op.n_arrays]
    return [f"d{p}" for p, a in zip(params, arrays, strict=True) if _is_float(a)]


def _round(arrays, dtype) -> tuple:
    """The float arrays rounded to ``dtype`` and held in float32 (what the op will see)."""
    return tuple(a.astype(dtype).astype(jnp.float32) if _is_float(a) else a for a in arrays)


STRICT = {"xla_allow_excess_precision": False}
"""XLA options of the low-precision runs: every op rounds to its dtype. By default XLA may keep
a fused chain of bfloat16 ops in float32 (on CPU it even runs whole bfloat16 convolutions and
dots in float32), so which path looks more accurate would depend on what XLA happened to fuse,
not on the rules; with this option both paths compute what their jaxprs say."""


def _values(op: Op, source: str, arrays, static, cot, options=None) -> list:
    """The output leaves and the gradients (one per array, ``None`` for integer ones) of
    ``op`` on ``source``'s path, jitted once with XLA ``options``."""

    def run(*a):
        fn = op.hand if source == "hand" else op.autodiff
        outputs = jax.tree.leaves(fn(*a, **static))
        return outputs, op_gradients(op, a, static, cot, source, jit=False)

    outputs, grads = jax.jit(run, compiler_options=options)(*arrays)
    return [*outputs, *grads]


def _draw(op: Op, key, dtype):
    """One random draw: ``(names, truth, hand, autodiff, shapes)``, the arrays' values."""
    k_sample, k_cot = jax.random.split(key)
    arrays, static = op.sample(k_sample, jnp.float32)
    arrays = _round(tuple(arrays), dtype)
    wide = tuple(a.astype(jnp.float64) if _is_float(a) else a for a in arrays)
    low = op.cast(dtype)
    out = jax.eval_shape(lambda *a: low.autodiff(*a, **static), *arrays)
    cot = random_cotangent(k_cot, out)  # drawn in the output's dtype: ``dtype``
    cot_wide = jax.tree.map(lambda u: u.astype(jnp.float64), cot)
    truth = _values(op, "autodiff", wide, static, cot_wide)
    hand = _values(low, "hand", arrays, static, cot, STRICT)
    auto = _values(low, "autodiff", arrays, static, cot, STRICT)
    names = [f"out{i}" if i else "out" for i in range(len(truth) - op.n_arrays)]
    names += _names(op, arrays)
    keep = [i for i, t in enumerate(truth) if t is not None]
    pick = lambda values: [np.asarray(values[i], np.float64).ravel() for i in keep]
    shapes = " ".join(str(tuple(np.shape(a))) for a in arrays)
    return names, pick(truth), pick(hand), pick(auto), shapes


def check_precision(op: Op, key, dtype=jnp.bfloat16, *, draws: int = 4) -> PrecisionReport:
    """Hand and autodiff errors of ``op`` computing in ``dtype`` against float64 (module doc),
    pooled over ``draws`` random draws (inputs in float32 from the op's sampler, a cotangent in
    ``dtype``): per array ‖a − t‖/‖t‖ over all draws together, so that a few ulps on a tiny
    random shape do not decide the verdict. Needs ``jax_enable_x64``."""
    require_x64()
    dtype = jnp.dtype(dtype)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"check_precision: draws must be an int >= 1, got {draws!r}")
    pooled: dict[str, list] = {}  # name -> [truths, hands, autodiffs], one entry per draw
    details = []
    for k in jax.random.split(key, draws):
        names, *values, shapes = _draw(op, k, dtype)
        details.append(shapes)
        for name, *triple in zip(names, *values, strict=True):  # an array may not be float
            for seen, v in zip(pooled.setdefault(name, [[], [], []]), triple, strict=True):
                seen.append(v)  # in every draw (soft or integer labels)
    rows = tuple(
        PrecisionRow(n, relative_error(np.concatenate(h), np.concatenate(t)),
                     relative_error(np.concatenate(a), np.concatenate(t)))
        for n, (t, h, a) in pooled.items()
    )  # fmt: skip
    return PrecisionReport(op.name, dtype.name, rows, detail=" | ".join(details))


def check_registry_precision(
    dtype=jnp.bfloat16, *, seed: int = 0, draws: int = 4, ops: Sequence[Op] | None = None
) -> list[PrecisionReport]:
    """`check_precision` for every registered op (or ``ops``)."""
    ops = list(ops) if ops is not None else list(REGISTRY.values())
    return [check_precision(op, jax.random.key(seed), dtype, draws=draws) for op in ops]
