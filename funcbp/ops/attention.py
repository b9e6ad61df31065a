"""Scaled dot-product attention ``o = softmax(q kᵀ / √D + mask) v`` with a hand VJP.

Shapes (any identical leading dims ``...``, e.g. ``(batch, heads)``):
  q (..., T, D), k (..., S, D), v (..., S, Dv) -> o (..., T, Dv).

Causal convention (``causal=True``): query ``i`` attends keys ``j <= i + (S − T)``, i.e. the
queries are aligned with the *last* ``T`` keys. With ``T == S`` this is the usual lower-triangular
mask; with ``S > T`` (a KV cache holding ``S − T`` earlier positions) query ``i`` sits at absolute
position ``S − T + i`` and sees everything up to itself, which is what incremental decoding needs.
``causal=True`` requires ``S >= T``: otherwise the first ``T − S`` queries would precede every
key and see none (a fully masked row), which is rejected with an error instead of producing NaN.
Every row therefore keeps at least one key (query 0 sees keys ``0 .. S − T``).

Residuals (the FlashAttention-2 choice): ``q, k, v``, the output ``o`` and the row log-sum-exp
``L = log Σ_j e^{s_ij}`` of shape ``(..., T)``, *not* the ``T × S`` probabilities. The backward
recomputes ``s = q kᵀ/√D`` (one extra GEMM) and ``p = exp(s − L)`` (exact: no max or sum needed
again). Trade-off: the stored state is O(T·(D + Dv) + S·(D + Dv)) instead of O(T·S) per head, at
the price of ~25% more backward FLOPs (the forward's first GEMM is redone). Here the recomputed
``p`` is still materialised as whole ``T × S`` blocks inside the backward (no tiling: ``p``,
``dp``, ``ds``), so the peak of one jitted forward+backward shrinks by less than the residuals
do (about two ``T × S`` buffers instead of three or four under XLA on CPU), and for tiny T, S
the extra GEMM costs more than the memory saves.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcbp.ops import _sample
from funcbp.ops._checks import require_float, require_ndim, require_same_dtype
from funcbp.ops._op import Op, register

__all__ = ["attention"]


def _masked_scores(q, k, causal):
    """s = q kᵀ/√D with masked entries set to a large finite negative: (..., T, S).

    The fill is half the dtype's most negative value: ``exp(fill − m)`` underflows to exactly 0
    for any finite row max/log-sum-exp ``m`` without overflowing to −inf, in float32 and float64
    alike, and the mask is applied to ``s`` itself (before any ``exp``) so no masked entry can
    ever reach an overflowing ``exp`` whose gradient would be ``0 · inf``.
    """
    t, s_len, d = q.shape[-2], k.shape[-2], q.shape[-1]
    s = jnp.einsum("...td,...sd->...ts", q, k) * (1.0 / math.sqrt(d))  # (..., T, S)
    if not causal:
        return s
    row = jnp.arange(t)[:, None]  # (T, 1)
    col = jnp.arange(s_len)[None, :]  # (1, S)
    mask = (col <= row + (s_len - t)).reshape((1,) * (s.ndim - 2) + (t, s_len))  # (1.., T, S)
    fill = jnp.asarray(jnp.finfo(s.dtype).min / 2, s.dtype)
    return jnp.where(mask, s, fill)


def attention_reference(q, k, v, causal=True):
    """q (..., T, D), k (..., S, D), v (..., S, Dv) -> o (..., T, Dv).

    s = q kᵀ/√D (masked: query i sees keys j <= i + S − T when ``causal``);
    p = softmax(s) row-wise;  o = p v.
    """
    s = _masked_scores(q, k, causal)  # (..., T, S)
    e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))  # (..., T, S)
    p = e / jnp.sum(e, axis=-1, keepdims=True)  # (..., T, S)
    return jnp.einsum("...ts,...se->...te", p, v)  # (..., T, Dv)


def attention_fwd(q, k, v, causal=True):
    """Forward; keeps q, k (to recompute s and for dk, dq), v (for dp = do vᵀ), the output o
    (for the row term Σ_e do ⊙ o) and the row log-sum-exp L (..., T) (so p = exp(s − L) is
    recovered exactly) — never the T × S probabilities."""
    s = _masked_scores(q, k, causal)  # (..., T, S)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))  # (..., T, 1)
    lse = m + jnp.log(jnp.sum(jnp.exp(s - m), axis=-1, keepdims=True))  # (..., T, 1)
    p = jnp.exp(s - lse)  # (..., T, S), dropped after this line
    o = jnp.einsum("...ts,...se->...te", p, v)  # (..., T, Dv)
    return o, (q, k, v, o, lse[..., 0])


def attention_bwd(res, do, causal=True):
    """dv = pᵀ do;  dp = do vᵀ;  ds = p ⊙ (dp − δ),  δ = rowsum(do ⊙ o);  dq = ds k/√D;
    dk = dsᵀ q/√D.

    With o_ie = Σ_j p_ij v_je:  ∂L/∂v_je = Σ_i p_ij do_ie (dv = pᵀ do) and
    ∂L/∂p_ij = Σ_e do_ie v_je (dp = do vᵀ). Each row of p is a softmax of the row of s, whose
    Jacobian is diag(p) − p pᵀ, so ds_ij = p_ij (dp_ij − Σ_l dp_il p_il). The row term is
    Σ_l dp_il p_il = Σ_l Σ_e do_ie v_le p_il = Σ_e do_ie o_ie: O(Dv) per row from the kept output
    instead of O(S) from the T × S product. Masked entries have p_ij = 0 exactly, so ds is 0
    there (the mask's constant carries no gradient). Finally s = q kᵀ/√D gives
    dq = ds k/√D and dk = dsᵀ q/√D. p itself is recomputed as exp(s − L).
    """
    q, k, v, o, lse = res
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = _masked_scores(q, k, causal)  # (..., T, S)
    p = jnp.exp(s - lse[..., None])  # (..., T, S)
    dv = jnp.einsum("...ts,...te->...se", p, do)  # (..., S, Dv)
    dp = jnp.einsum("...te,...se->...ts", do, v)  # (..., T, S)
    delta = jnp.sum(do * o, axis=-1, keepdims=True)  # (..., T, 1)
    ds = p * (dp - delta)  # (..., T, S)
    dq = jnp.einsum("...ts,...sd->...td", ds, k) * scale  # (..., T, D)
    dk = jnp.einsum("...ts,...td->...sd", ds, q) * scale  # (..., S, D)
    return dq, dk, dv


def attention_jvp(primals, tangents, causal=True):
    """ds = (dq kᵀ + q dkᵀ)/√D;  dp = p ⊙ (ds − rowsum(p ⊙ ds));  do = dp v + p dv.

    Forwards through the three steps: s = q kᵀ/√D is bilinear (product rule; the mask's fill
    is a constant, so masked entries have ds = 0 — and p = 0 there, which zeroes them in dp
    anyway); each row of p = softmax(s) moves by p ⊙ (ds − ⟨p, ds⟩) (`softmax_jvp`); o = p v
    is bilinear: do = dp v + p dv. Shapes: ds, dp (..., T, S), do (..., T, Dv). Forward mode
    materialises the T × S tangent ds (as the backward does its cotangent).
    """
    q, k, v = primals
    dq, dk, dv = tangents
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = _masked_scores(q, k, causal)  # (..., T, S)
    e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))  # (..., T, S)
    p = e / jnp.sum(e, axis=-1, keepdims=True)  # (..., T, S)
    ds = jnp.einsum("...td,...sd->...ts", dq, k) + jnp.einsum("...td,...sd->...ts", q, dk)
    ds = ds * scale  # (..., T, S)
    dp = p * (ds - jnp.sum(p * ds, axis=-1, keepdims=True))  # (..., T, S)
    o = jnp.einsum("...ts,...se->...te", p, v)  # (..., T, Dv)
    do = jnp.einsum("...ts,...se->...te", dp, v) + jnp.einsum("...ts,...se->...te", p, dv)
    return o, do


def _validate(q, k, v, causal=True):
    op = "attention"
    for name, a in (("q", q), ("k", k), ("v", v)):
        require_float(op, name, a)
    require_ndim(op, "q", q, (2, None), "(..., T, D)")
    require_ndim(op, "k", k, (2, None), "(..., S, D)")
    require_ndim(op, "v", v, (2, None), "(..., S, Dv)")
    shapes = f"(q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)})"
    if not q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        raise ValueError(
            f"attention: q, k and v must have identical leading dims, got "
            f"{tuple(q.shape[:-2])}, {tuple(k.shape[:-2])}, {tuple(v.shape[:-2])} {shapes}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention: q has feature size D={q.shape[-1]} but k has {k.shape[-1]} {shapes}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"attention: k has S={k.shape[-2]} keys but v has {v.shape[-2]} values {shapes}"
        )
    if q.shape[-1] == 0:
        raise ValueError(f"attention: feature size D must be at least 1 {shapes}")
    if k.shape[-2] == 0:
        raise ValueError(f"attention: at least one key is needed, got S=0 {shapes}")
    require_same_dtype(op, q=q, k=k, v=v)
    if not isinstance(causal, bool):
        raise TypeError(f"attention: causal must be a Python bool, got {causal!r}")
    if causal and k.shape[-2] < q.shape[-2]:
        raise ValueError(
            f"attention: causal=True needs S >= T (query i sees keys j <= i + S - T), got "
            f"T={q.shape[-2]} queries and S={k.shape[-2]} keys {shapes}"
        )


def _sample_attention(key, dtype):
    """Well-conditioned draws, so float32 hand vs autodiff can meet 1e-5 relative.

    ds_j = p_j (do·v_j − do·o) cancels when one key dominates (saturated softmax: relative
    error ~ eps / (1 − p_max)) or when do·(v_j − o) is small by chance; tiny shapes (one query,
    two keys, D = Dv = 1) leave nothing to average over, and then *both* float32 paths sit
    ~1e-5 from the exact value. Hence q, k of scale 0.7 (scores of std ≈ 0.5) and at least
    2 queries, 3 keys and 2 features; float64 tests cover the tiny shapes (T = 1, S = 2, D = 1).
    """
    gen = _sample.rng(key)
    lead = _sample.batch_shape(gen, max_dims=2, max_size=3)
    causal = bool(gen.integers(0, 2))
    t = int(gen.integers(2, 6))
    s_len = max(t + int(gen.integers(0, 4)), 3) if causal else int(gen.integers(3, 7))
    d, dv = (int(x) for x in gen.integers(2, 5, size=2))
    kq, kk, kv = _sample.split3(key)
    q = _sample.normal(kq, (*lead, t, d), dtype, scale=0.7)
    k = _sample.normal(kk, (*lead, s_len, d), dtype, scale=0.7)
    v = _sample.normal(kv, (*lead, s_len, dv), dtype)
    return (q, k, v), {"causal": causal}


attention = register(
    Op(
        "attention",
        attention_reference,
        attention_fwd,
        attention_bwd,
        _sample_attention,
        3,
        _validate,
        jvp=attention_jvp,
    )
)
