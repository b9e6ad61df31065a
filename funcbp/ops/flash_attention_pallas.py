"""A Pallas kernel for `funcbp.ops.flash_attention`'s blockwise forward (optional GPU fast path).

One kernel instance per (batch, kv head, query head of the group, query block): it holds its
query block, streams the key/value blocks of its kv head through the online softmax (running
max m, denominator l, unnormalised output), and writes the output block and the row
log-sum-exp L, the two residuals the op's backward needs. Causal query blocks stop their loop at
the last visible key block, so fully masked blocks are never loaded (a dynamic trip count:
kernels are not differentiated, so no `lax.cond` is needed here).

Not wired into the op yet: `flash_attention_pallas_forward` returns exactly what
`flash_attention_fwd` computes (``o`` and ``L``, tested equal in Pallas interpret mode on CPU),
but its speed has only been measurable where an accelerator is lent, and a Pallas forward cannot
be differentiated again (``ops.flash_attention`` supports grad of grad through its jnp forward).
On a GPU, Triton wants block sizes that are powers of two and at least 16.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from funcbp.ops.flash_attention import _acc_dtype, _canonical_kv, _canonical_q, _plan

__all__ = ["flash_attention_pallas_forward"]


def _kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, plan, causal):
    """Refs: q (Bq, D), k (Sp, D), v (Sp, Dv) -> o (Bq, Dv), L (Bq,)."""
    _, _, _, t, s_len, bq, bk, _, nk = plan
    i = pl.program_id(3)
    q = q_ref[...] * (1.0 / math.sqrt(q_ref.shape[-1]))  # (Bq, D)
    rows = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)  # (Bq, Bk)
    fill = jnp.finfo(q.dtype).min / 2
    if causal:  # the last key block the block's last real row sees
        n_blocks = jnp.minimum(nk, (jnp.minimum((i + 1) * bq, t) - 1 + (s_len - t)) // bk + 1)
    else:
        n_blocks = nk

    def body(j, carry):
        m, l, acc = carry  # (Bq,), (Bq,), (Bq, Dv)
        k = k_ref[pl.ds(j * bk, bk), :]  # (Bk, D)
        v = v_ref[pl.ds(j * bk, bk), :]  # (Bk, Dv)
        s = jnp.dot(q, k.T)  # (Bq, Bk)
        cols = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)  # (Bq, Bk)
        keep = cols < s_len
        if causal:
            keep = keep & (cols <= rows + (s_len - t))
        s = jnp.where(keep, s, fill)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[:, None])  # (Bq, Bk)
        return m_new, alpha * l + jnp.sum(p, axis=1), alpha[:, None] * acc + jnp.dot(p, v)

    init = (
        jnp.full((bq,), fill, q.dtype),
        jnp.zeros((bq,), q.dtype),
        jnp.zeros((bq, o_ref.shape[-1]), q.dtype),
    )
    m, l, acc = lax.fori_loop(0, n_blocks, body, init)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = (m + jnp.log(l)).astype(lse_ref.dtype)


@functools.partial(jax.jit, static_argnames=("causal", "block_size", "interpret"))
def flash_attention_pallas_forward(q, k, v, causal=True, block_size=128, interpret=False):
    """q (..., H, T, D), k (..., G, S, D), v (..., G, S, Dv) -> (o (..., H, T, Dv), L (..., H, T)).

    The same values as ``flash_attention_fwd(q, k, v, causal, block_size)``'s output and its
    log-sum-exp residual (float32 accumulators for half inputs). ``interpret=True`` runs the
    kernel in Pallas' interpreter (any backend; what the CPU tests use).
    """
    plan = _plan(q, k, block_size)
    b, g, r, t, _, bq, _, nq, nk = plan
    qc, kc, vc = _canonical_q(q, plan), _canonical_kv(k, plan), _canonical_kv(v, plan)
    d, dv, sp = qc.shape[-1], vc.shape[-1], kc.shape[2]
    kv_map = lambda bi, gi, ri, i: (bi, gi, 0, 0)  # every query head of group g: kv head g
    row_map = lambda bi, gi, ri, i: (bi, gi, ri, i, 0)
    o, lse = pl.pallas_call(
        functools.partial(_kernel, plan=plan, causal=causal),
        grid=(b, g, r, nq),
        in_specs=[
            pl.BlockSpec((None, None, None, bq, d), row_map),
            pl.BlockSpec((None, None, sp, d), kv_map),
            pl.BlockSpec((None, None, sp, dv), kv_map),
        ],
        out_specs=[
            pl.BlockSpec((None, None, None, bq, dv), row_map),
            pl.BlockSpec((None, None, None, bq), lambda bi, gi, ri, i: (bi, gi, ri, i)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, g, r, nq * bq, dv), _acc_dtype(q.dtype)),
            jax.ShapeDtypeStruct((b, g, r, nq * bq), _acc_dtype(q.dtype)),
        ],
        interpret=interpret,
    )(qc, kc, vc)
    o = o[..., :t, :].astype(q.dtype).reshape(q.shape[:-1] + v.shape[-1:])  # (..., H, T, Dv)
    return o, lse[..., :t].reshape(q.shape[:-1])
