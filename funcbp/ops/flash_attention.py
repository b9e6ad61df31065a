"""Blockwise (FlashAttention-2 style) attention: ``ops.attention``'s maths without a T × S buffer.

Same shapes, grouped heads and causal convention as `funcbp.ops.attention`:
  q (..., H, T, D), k (..., G, S, D), v (..., G, S, Dv) -> o (..., H, T, Dv), H a multiple of G,
  query head h uses kv head h // (H/G); ``causal``: query i sees keys j <= i + S − T.

The T query rows are cut into blocks of ``Bq = min(block_size, T)`` rows and the S keys into
blocks of ``Bk = min(block_size, S)``; ragged remainders are zero-padded to whole blocks (padded
keys are masked out, padded query rows are dropped from the output and get a zero cotangent).

Forward (online softmax, Milakov & Gimelshein; FlashAttention): for each query block, a loop
over the KV blocks carries the running row max ``m``, the running denominator
``l = Σ_j e^{s_ij − m}`` and the unnormalised output ``acc = Σ_j e^{s_ij − m} v_j``; a new block
with row max ``m'`` ≥ ``m`` rescales both by ``e^{m − m'}``. At the end ``o = acc / l`` and the
row log-sum-exp ``L = m + log l``. Only ``o`` and ``L`` leave the loop.

Backward (FlashAttention-2): ``δ = rowsum(do ⊙ o)`` once; then for each KV block ``j`` a loop
over the query blocks ``i`` recomputes ``P_ij = exp(S_ij − L_i)`` exactly from the kept ``L``
and accumulates ``dV_j += P_ijᵀ dO_i``, ``dS_ij = P_ij ⊙ (dO_i V_jᵀ − δ_i)``,
``dK_j += dS_ijᵀ Q_i / √D`` (in the loop's carry) and ``dQ_i += dS_ij K_j / √D`` (a
read-add-write into one (T, D) accumulator). Nothing of size T × S ever exists: the largest
temporaries are a few Bq × Bk blocks and O((T + S)·D) accumulators.

Causal blocks that are fully masked (every key of block j after the last key visible to the
last real row of block i) are skipped by a `lax.cond` in both loops: their work is never done
(about half of all blocks when T = S), and the cond keeps the loops reverse-differentiable
(grad of grad through ``bwd`` works, unlike a data-dependent loop bound).

Precision: with float16/bfloat16 inputs every block product, the running statistics and the
accumulators are float32 (the outputs and cotangents are cast back to the input dtype);
float32/float64 run in their own precision.

Residuals: q, k, v, o and L (..., H, T): O(T + S) per head, as for ``ops.attention``.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
from jax import lax

from funcbp.ops import _sample
from funcbp.ops._op import Op, register
from funcbp.ops.attention import (
    attention_jvp,
    attention_reference,
    draw_heads,
    groups,
    validate_attention,
)

__all__ = ["flash_attention"]


def flash_attention_reference(q, k, v, causal=True, block_size=128):
    """q (..., H, T, D), k (..., G, S, D), v (..., G, S, Dv) -> o (..., H, T, Dv).

    The plain materialised attention (`funcbp.ops.attention`'s reference: a whole T × S
    softmax); ``block_size`` changes how the hand path computes it, not what it computes.
    """
    del block_size
    return attention_reference(q, k, v, causal=causal)


# -- layout: (batch, G, R, T, D) blocks -------------------------------------------------------
def _acc_dtype(dtype):
    """float32 for half precision inputs, else the input's own float dtype."""
    return jnp.promote_types(dtype, jnp.float32)


def _plan(q, k, block_size):
    """Static sizes: (B, G, R, T, S, Bq, Bk, nq, nk) for the canonical layout."""
    g, r = groups(q, k)
    t, s_len = q.shape[-2], k.shape[-2]
    b = math.prod(q.shape[:-3]) if q.ndim >= 3 else 1
    bq, bk = min(block_size, t), min(block_size, s_len)
    return b, g, r, t, s_len, bq, bk, -(-t // bq), -(-s_len // bk)


def _pad_rows(x, rows, axis):
    """Zero-pad axis ``axis`` of ``x`` to ``rows`` entries (a no-op when it has them)."""
    extra = rows - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def _canonical_q(x, plan):
    """q, o or do (..., H, T, ·) -> (B, G, R, nq·Bq, ·) in the accumulator dtype, zero-padded."""
    b, g, r, t, _, bq, _, nq, _ = plan
    x = x.reshape(b, g, r, t, x.shape[-1]).astype(_acc_dtype(x.dtype))  # (B, G, R, T, ·)
    return _pad_rows(x, nq * bq, 3)  # (B, G, R, Tp, ·)


def _canonical_kv(x, plan):
    """k or v (..., G, S, ·) -> (B, G, nk·Bk, ·) in the accumulator dtype, zero-padded."""
    b, g, _, _, s_len, _, bk, _, nk = plan
    x = x.reshape(b, g, s_len, x.shape[-1]).astype(_acc_dtype(x.dtype))  # (B, G, S, ·)
    return _pad_rows(x, nk * bk, 2)  # (B, G, Sp, ·)


def _visible(i, j, plan, causal):
    """Does query block i see any key of KV block j? (traced bool; Python True if not causal)"""
    _, _, _, t, s_len, bq, bk, _, _ = plan
    if not causal:
        return True
    last_row = jnp.minimum((i + 1) * bq, t) - 1  # the last real query row of block i
    return j * bk <= last_row + (s_len - t)


def _block_mask(i, j, plan, causal):
    """(Bq, Bk) bool of visible (query, key) pairs in block (i, j), or None if all are."""
    _, _, _, t, s_len, bq, bk, _, nk = plan
    if not causal and nk * bk == s_len:
        return None
    rows = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)  # (Bq, Bk)
    cols = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)  # (Bq, Bk)
    keep = cols < s_len
    return keep & (cols <= rows + (s_len - t)) if causal else keep


def _scores(qi, kj, mask):
    """qi (B, G, R, Bq, D) (already times 1/√D), kj (B, G, Bk, D) -> s (B, G, R, Bq, Bk)."""
    s = jnp.einsum("bgrqd,bgkd->bgrqk", qi, kj)  # (B, G, R, Bq, Bk)
    if mask is None:
        return s
    fill = jnp.asarray(jnp.finfo(s.dtype).min / 2, s.dtype)
    return jnp.where(mask.reshape(1, 1, 1, *mask.shape), s, fill)


def _maybe(pred, compute, skip, operand):
    """``compute(operand)`` where ``pred`` holds, else ``skip(operand)``; no cond if static."""
    if pred is True:
        return compute(operand)
    return lax.cond(pred, compute, skip, operand)


# -- forward ----------------------------------------------------------------------------------
def _online_step(qi, kj, vj, mask, carry):
    """One KV block of the online softmax: (m, l, acc) -> the same, rescaled and updated."""
    m, l, acc = carry  # (B, G, R, Bq), (B, G, R, Bq), (B, G, R, Bq, Dv)
    s = _scores(qi, kj, mask)  # (B, G, R, Bq, Bk)
    m_new = jnp.maximum(m, lax.stop_gradient(jnp.max(s, axis=-1)))  # (B, G, R, Bq)
    alpha = jnp.exp(m - m_new)  # (B, G, R, Bq): rescales the old terms to the new max
    p = jnp.exp(s - m_new[..., None])  # (B, G, R, Bq, Bk)
    l = alpha * l + jnp.sum(p, axis=-1)  # (B, G, R, Bq)
    acc = alpha[..., None] * acc + jnp.einsum("bgrqk,bgke->bgrqe", p, vj)  # (B, G, R, Bq, Dv)
    return m_new, l, acc


def _forward_blocks(qc, kc, vc, plan, causal):
    """Canonical q, k, v -> o (B, G, R, Tp, Dv) and L (B, G, R, Tp), one query block at a time."""
    b, g, r, _, _, bq, bk, nq, nk = plan
    dv_size = vc.shape[-1]
    scale = 1.0 / math.sqrt(qc.shape[-1])
    fill = jnp.finfo(qc.dtype).min / 2

    def q_block(i, out):
        o_all, lse_all = out
        qi = lax.dynamic_slice_in_dim(qc, i * bq, bq, axis=3) * scale  # (B, G, R, Bq, D)

        def kv_block(j, carry):
            kj = lax.dynamic_slice_in_dim(kc, j * bk, bk, axis=2)  # (B, G, Bk, D)
            vj = lax.dynamic_slice_in_dim(vc, j * bk, bk, axis=2)  # (B, G, Bk, Dv)
            step = functools.partial(_online_step, qi, kj, vj, _block_mask(i, j, plan, causal))
            return _maybe(_visible(i, j, plan, causal), step, lambda c: c, carry)

        init = (
            jnp.full((b, g, r, bq), fill, qc.dtype),  # m: finite, so e^{m − m'} is never NaN
            jnp.zeros((b, g, r, bq), qc.dtype),  # l
            jnp.zeros((b, g, r, bq, dv_size), qc.dtype),  # acc
        )
        m, l, acc = lax.fori_loop(0, nk, kv_block, init)
        o_i = acc / l[..., None]  # (B, G, R, Bq, Dv)
        lse_i = m + jnp.log(l)  # (B, G, R, Bq)
        o_all = lax.dynamic_update_slice_in_dim(o_all, o_i, i * bq, axis=3)
        return o_all, lax.dynamic_update_slice_in_dim(lse_all, lse_i, i * bq, axis=3)

    out = (
        jnp.zeros((b, g, r, nq * bq, dv_size), qc.dtype),
        jnp.zeros((b, g, r, nq * bq), qc.dtype),
    )
    return lax.fori_loop(0, nq, q_block, out)


def flash_attention_fwd(q, k, v, causal=True, block_size=128):
    """Forward by blocks (online softmax); keeps q, k, v, the output o and the row
    log-sum-exp L (..., H, T) (in the accumulator dtype): p = exp(s − L) is recomputed block by
    block in the backward, never stored."""
    plan = _plan(q, k, block_size)
    t = plan[3]
    qc, kc, vc = _canonical_q(q, plan), _canonical_kv(k, plan), _canonical_kv(v, plan)
    o, lse = _forward_blocks(qc, kc, vc, plan, causal)  # (B, G, R, Tp, Dv), (B, G, R, Tp)
    o = o[..., :t, :].astype(q.dtype).reshape(q.shape[:-1] + v.shape[-1:])  # (..., H, T, Dv)
    return o, (q, k, v, o, lse[..., :t].reshape(q.shape[:-1]))


def flash_attention_primal(q, k, v, causal=True, block_size=128):
    """The forward outside differentiation: blockwise too (no T × S buffer at inference)."""
    return flash_attention_fwd(q, k, v, causal=causal, block_size=block_size)[0]


# -- backward ---------------------------------------------------------------------------------
def _block_grads(qi, doi, lsei, deltai, kj, vj, mask, carry):
    """One (query block, KV block) pair: dK_j, dV_j += their terms; returns dQ_i's term too.

    qi is q/√D, so ds qi = dsᵀ q/√D is dK's term directly; dQ's term ds kj still needs 1/√D
    (applied once, to the whole accumulator)."""
    dk_j, dv_j = carry  # (B, G, Bk, D), (B, G, Bk, Dv)
    p = jnp.exp(_scores(qi, kj, mask) - lsei[..., None])  # (B, G, R, Bq, Bk)
    dv_j = dv_j + jnp.einsum("bgrqk,bgrqe->bgke", p, doi)  # (B, G, Bk, Dv)
    dp = jnp.einsum("bgrqe,bgke->bgrqk", doi, vj)  # (B, G, R, Bq, Bk)
    ds = p * (dp - deltai[..., None])  # (B, G, R, Bq, Bk)
    dk_j = dk_j + jnp.einsum("bgrqk,bgrqd->bgkd", ds, qi)  # (B, G, Bk, D)
    return (dk_j, dv_j), jnp.einsum("bgrqk,bgkd->bgrqd", ds, kj)  # (B, G, R, Bq, D)


def _backward_blocks(qc, kc, vc, doc, lse, delta, plan, causal):
    """Canonical arrays -> dq·√D (B, G, R, Tp, D), dk (B, G, Sp, D), dv (B, G, Sp, Dv)."""
    _, _, _, _, _, bq, bk, nq, nk = plan
    qs = qc * (1.0 / math.sqrt(qc.shape[-1]))  # (B, G, R, Tp, D)
    rows = lambda x, i: lax.dynamic_slice_in_dim(x, i * bq, bq, axis=3)  # query block i
    keys = lambda x, j: lax.dynamic_slice_in_dim(x, j * bk, bk, axis=2)  # KV block j

    def kv_block(j, grads):
        dq, dk, dv = grads
        kj, vj = keys(kc, j), keys(vc, j)  # (B, G, Bk, D), (B, G, Bk, Dv)

        def q_block(i, carry):
            acc, dq = carry
            step = functools.partial(
                _block_grads,
                rows(qs, i),
                rows(doc, i),
                rows(lse, i),
                rows(delta, i),
                kj,
                vj,
                _block_mask(i, j, plan, causal),
            )
            skip = lambda c: (c, jnp.zeros((*qs.shape[:3], bq, qs.shape[-1]), qs.dtype))
            acc, dq_i = _maybe(_visible(i, j, plan, causal), step, skip, acc)
            return acc, lax.dynamic_update_slice_in_dim(dq, rows(dq, i) + dq_i, i * bq, axis=3)

        init = (jnp.zeros_like(kj), jnp.zeros_like(vj))
        (dk_j, dv_j), dq = lax.fori_loop(0, nq, q_block, (init, dq))
        dk = lax.dynamic_update_slice_in_dim(dk, dk_j, j * bk, axis=2)
        return dq, dk, lax.dynamic_update_slice_in_dim(dv, dv_j, j * bk, axis=2)

    grads = (jnp.zeros_like(qc), jnp.zeros_like(kc), jnp.zeros_like(vc))
    return lax.fori_loop(0, nk, kv_block, grads)


def flash_attention_bwd(res, do, causal=True, block_size=128):
    """δ = rowsum(do ⊙ o);  per block pair:  P = exp(S − L),  dV += Pᵀ dO,  dP = dO Vᵀ,
    dS = P ⊙ (dP − δ),  dQ += dS K/√D,  dK += dSᵀ Q/√D.

    The same VJP as ``ops.attention`` (see its ``attention_bwd`` for the derivation), summed
    block by block: P_ij = exp(S_ij − L_i) is exact for every block because L is the row's
    log-sum-exp over *all* keys, and the row term δ_i = Σ_l dP_il P_il = Σ_e dO_ie O_ie needs
    the whole row but comes from the kept output in O(Dv). Skipped (fully masked) blocks have
    P = 0, so they add nothing. Grouped heads: dK_j and dV_j sum over the R query heads of each
    kv head (the einsums contract r).
    """
    q, k, v, o, lse = res
    plan = _plan(q, k, block_size)
    b, g, r, t, s_len, bq, _, nq, _ = plan
    qc, kc, vc = _canonical_q(q, plan), _canonical_kv(k, plan), _canonical_kv(v, plan)
    doc, oc = _canonical_q(do, plan), _canonical_q(o, plan)  # (B, G, R, Tp, Dv)
    delta = jnp.sum(doc * oc, axis=-1)  # (B, G, R, Tp): 0 on padded rows
    lse_c = _pad_rows(lse.reshape(b, g, r, t).astype(qc.dtype), nq * bq, 3)  # (B, G, R, Tp)
    dq, dk, dv = _backward_blocks(qc, kc, vc, doc, lse_c, delta, plan, causal)
    dq = dq[..., :t, :] * (1.0 / math.sqrt(q.shape[-1]))  # (B, G, R, T, D)
    return (
        dq.astype(q.dtype).reshape(q.shape),
        dk[..., :s_len, :].astype(k.dtype).reshape(k.shape),
        dv[..., :s_len, :].astype(v.dtype).reshape(v.shape),
    )


# -- validation and samples -------------------------------------------------------------------
def flash_attention_jvp(primals, tangents, causal=True, block_size=128):
    """The same maths as `funcbp.ops.attention`, so the same forward rule
    (`funcbp.ops.attention.attention_jvp`): ds = (dq kᵀ + q dkᵀ)/√D, dp = p ⊙ (ds − rowsum(p ⊙ ds)),
    do = dp v + p dv. Forward mode is not blockwise: it forms the T × S tangent ds, as `jax.jvp`
    of the reference does (``block_size`` only shapes the reverse pass)."""
    return attention_jvp(primals, tangents, causal=causal)


def _validate(q, k, v, causal=True, block_size=128):
    validate_attention("flash_attention", q, k, v, causal)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"flash_attention: block_size must be a positive int, got {block_size!r}")


def _sample_flash(key, dtype):
    """Small shapes with smaller blocks: several query and KV blocks, ragged remainders (T, S
    rarely multiples of the block), S > T, causal and not, grouped heads about half the time;
    well conditioned as ``ops.attention``'s sampler (q, k of scale 0.7, T >= 2, S >= 3)."""
    gen = _sample.rng(key)
    q_lead, kv_lead = draw_heads(gen, max_size=2)
    causal = bool(gen.integers(0, 2))
    t = int(gen.integers(2, 8))
    s_len = t + int(gen.integers(0, 5)) if causal else int(gen.integers(3, 9))
    s_len = max(s_len, 3)
    block_size = int(gen.integers(2, 5))
    d, dv = (int(x) for x in gen.integers(2, 5, size=2))
    kq, kk, kv = _sample.split3(key)
    q = _sample.normal(kq, (*q_lead, t, d), dtype, scale=0.7)
    k = _sample.normal(kk, (*kv_lead, s_len, d), dtype, scale=0.7)
    v = _sample.normal(kv, (*kv_lead, s_len, dv), dtype)
    return (q, k, v), {"causal": causal, "block_size": block_size}


flash_attention = register(
    Op(
        "flash_attention",
        flash_attention_reference,
        flash_attention_fwd,
        flash_attention_bwd,
        _sample_flash,
        3,
        _validate,
        primal=flash_attention_primal,
        jvp=flash_attention_jvp,
    )
)
