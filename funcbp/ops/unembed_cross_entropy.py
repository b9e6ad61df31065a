"""The tied output head and its loss in one op, chunked: mean softmax cross-entropy of
``x Eᵀ`` (x (..., D), the token table E (V, D), integer labels (...)) without the full logits.

A language model whose head is tied to its token embedding computes ``logits = x Eᵀ`` and then
the cross-entropy; over a large vocabulary the (N, V) logits and their gradient dominate memory.
This op is `funcbp.ops.linear_cross_entropy` with ``w = Eᵀ``: the rows of x are taken in chunks,
each chunk's logits exist only inside one step of a scan, and the gradients are formed in the
forward pass (dE = dWᵀ = (Σ_chunks x_cᵀ dz_c)ᵀ, dx = dz E), so the backward only scales them.
Leading dims of x (batch, time) are flattened into rows.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from funcbp.ops import _sample
from funcbp.ops._checks import is_concrete, require_float, require_int, require_same_dtype
from funcbp.ops._op import Op, register
from funcbp.ops.linear_cross_entropy import (
    DEFAULT_CHUNK,
    linear_cross_entropy_bwd,
    linear_cross_entropy_fwd,
    linear_cross_entropy_primal,
)
from funcbp.ops.losses import softmax_cross_entropy_jvp, softmax_cross_entropy_reference

__all__ = ["unembed_cross_entropy"]


def unembed_cross_entropy_reference(x, table, labels, chunk_size=DEFAULT_CHUNK):
    """x (..., D), table (V, D), labels int (...) -> scalar: mean CE of the logits x Eᵀ (..., V).

    ``chunk_size`` (rows per chunk) shapes the hand path only."""
    del chunk_size
    return softmax_cross_entropy_reference(jnp.einsum("...d,vd->...v", x, table), labels)


def _rows(x, labels):
    return x.reshape(-1, x.shape[-1]), labels.reshape(-1)  # (N, D), (N,)


def unembed_cross_entropy_primal(x, table, labels, chunk_size=DEFAULT_CHUNK):
    """The loss alone, chunk by chunk (no (N, V) logits)."""
    x2, y2 = _rows(x, labels)
    return linear_cross_entropy_primal(x2, table.T, y2, chunk_size)


def unembed_cross_entropy_fwd(x, table, labels, chunk_size=DEFAULT_CHUNK):
    """Loss, and dx (..., D), dE (V, D) for cotangent 1, formed chunk by chunk in the forward
    (`funcbp.ops.linear_cross_entropy.linear_cross_entropy_fwd` with w = Eᵀ)."""
    x2, y2 = _rows(x, labels)
    loss, (dx2, dw) = linear_cross_entropy_fwd(x2, table.T, y2, chunk_size)
    return loss, (dx2.reshape(x.shape), dw.T)  # dw (D, V) -> dE (V, D)


def unembed_cross_entropy_bwd(res, g, chunk_size=DEFAULT_CHUNK):
    """dx = g·dx₁, dE = g·dE₁: with z = x Eᵀ, ∂L/∂z = (softmax(z) − onehot(y))/N, so
    dx = dz E and dE = dzᵀ x = (xᵀ dz)ᵀ — the g = 1 gradients kept by the forward, scaled."""
    dx, de = res
    dx, de_t, _ = linear_cross_entropy_bwd((dx, de.T), g, chunk_size)
    return dx, de_t.T, None


def unembed_cross_entropy_jvp(primals, tangents, chunk_size=DEFAULT_CHUNK):
    """dz = dx Eᵀ + x dEᵀ (product rule of z = x Eᵀ), then the softmax-CE rule: dL = (1/N)
    Σ_n ⟨p_n, dz_n⟩ − dz_n[y_n]. Not chunked: it forms the (..., V) tangent dz."""
    x, table, labels = primals
    dx, dtable, dlabels = tangents
    z = jnp.einsum("...d,vd->...v", x, table)  # (..., V)
    dz = jnp.einsum("...d,vd->...v", dx, table) + jnp.einsum("...d,vd->...v", x, dtable)
    return softmax_cross_entropy_jvp((z, labels), (dz, dlabels))


def _validate(x, table, labels, chunk_size=DEFAULT_CHUNK):
    op = "unembed_cross_entropy"
    require_float(op, "x", x)
    require_float(op, "table", table)
    require_int(op, "labels", labels)
    shapes = f"(x {tuple(x.shape)}, table {tuple(table.shape)}, labels {tuple(labels.shape)})"
    if table.ndim != 2 or x.ndim < 1 or x.shape[-1] != table.shape[-1]:
        raise ValueError(f"{op}: need x (..., D) and table (V, D) with the same D {shapes}")
    if labels.shape != x.shape[:-1] or x.size == 0 or table.shape[0] == 0:
        raise ValueError(f"{op}: labels must have x's leading shape, non-empty {shapes}")
    require_same_dtype(op, x=x, table=table)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int, got {chunk_size!r}")
    if is_concrete(labels) and labels.size:
        lab = np.asarray(labels)
        if lab.min() < 0 or lab.max() >= table.shape[0]:
            raise ValueError(
                f"{op}: labels must lie in [0, {table.shape[0]}), got [{lab.min()}, {lab.max()}]"
            )


def _sample_uce(key, dtype):
    """x (B, T, D) or (N, D) with a few rows, V in 2..6, chunks of 1..4 rows (the last ragged)."""
    gen = _sample.rng(key)
    lead = tuple(int(v) for v in gen.integers(1, 4, size=int(gen.integers(1, 3))))
    d, v = int(gen.integers(1, 5)), int(gen.integers(2, 7))
    kx, kt, _ = _sample.split3(key)
    x = _sample.normal(kx, (*lead, d), dtype)
    table = _sample.normal(kt, (v, d), dtype)
    labels = _sample.host(gen.integers(0, v, size=lead), jnp.int32)
    return (x, table, labels), {"chunk_size": int(gen.integers(1, 5))}


unembed_cross_entropy = register(
    Op(
        "unembed_cross_entropy",
        unembed_cross_entropy_reference,
        unembed_cross_entropy_fwd,
        unembed_cross_entropy_bwd,
        _sample_uce,
        3,
        _validate,
        primal=unembed_cross_entropy_primal,
        jvp=unembed_cross_entropy_jvp,
    )
)
