"""Scaled dot-product attention ``o = softmax(q kᵀ / √D + mask) v`` with a hand VJP.

Shapes (any identical leading dims ``...``, e.g. ``(batch,)``):
  q (..., H, T, D), k (..., G, S, D), v (..., G, S, Dv) -> o (..., H, T, Dv).

Grouped heads (GQA; MQA is G = 1): the head axis (third from last) of q may be a multiple of
k's and v's, H = G·R; query head h uses key/value head h // R, so each kv head serves a group of
R consecutive query heads and its gradients dk, dv sum over that group. G = H is ordinary
multi-head attention (R = 1), and 2-d inputs q (T, D), k (S, D), v (S, Dv) have no head axis.

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
the extra GEMM costs more than the memory saves. `funcbp.ops.flash_attention` computes the same
function block by block with no ``T × S`` buffer at all (the choice for long context).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcbp.ops import _sample
from funcbp.ops._checks import require_float, require_ndim, require_same_dtype
from funcbp.ops._op import Op, register

__all__ = ["attention", "groups", "validate_attention"]


def _mask(s, causal):
    """Scores s (..., T, S) with masked entries set to a large finite negative.

    The fill is half the dtype's most negative value: ``exp(fill − m)`` underflows to exactly 0
    for any finite row max/log-sum-exp ``m`` without overflowing to −inf, in float32 and float64
    alike, and the mask is applied to ``s`` itself (before any ``exp``) so no masked entry can
    ever reach an overflowing ``exp`` whose gradient would be ``0 · inf``.
    """
    if not causal:
        return s
    t, s_len = s.shape[-2], s.shape[-1]
    row = jnp.arange(t)[:, None]  # (T, 1)
    col = jnp.arange(s_len)[None, :]  # (1, S)
    mask = (col <= row + (s_len - t)).reshape((1,) * (s.ndim - 2) + (t, s_len))  # (1.., T, S)
    fill = jnp.asarray(jnp.finfo(s.dtype).min / 2, s.dtype)
    return jnp.where(mask, s, fill)


def _masked_scores(q, k, causal):
    """s = q kᵀ/√D, masked (`_mask`): q (..., T, D), k (..., S, D) -> (..., T, S)."""
    s = jnp.einsum("...td,...sd->...ts", q, k) * (1.0 / math.sqrt(q.shape[-1]))  # (..., T, S)
    return _mask(s, causal)


def groups(q, k) -> tuple[int, int]:
    """(G, R): kv heads and query heads per kv head; (1, 1) for 2-d inputs (no head axis)."""
    if q.ndim < 3:
        return 1, 1
    return k.shape[-3], q.shape[-3] // k.shape[-3]


def _grouped_q(x, k):
    """q, o or do (..., H, T, ·) -> (..., G, R, T, ·): query heads gathered under their kv
    head. Unchanged when R = 1 (G = H, or 2-d inputs): then every einsum below is the plain
    multi-head one, so ungrouped attention computes exactly what it always did."""
    g, r = groups(x, k)
    return x if r == 1 else x.reshape(x.shape[:-3] + (g, r) + x.shape[-2:])


def _letters(q, k) -> tuple[str, str]:
    """Einsum letters of the head axes of grouped q and of k, v: ("gr", "g") or ("", "")."""
    return ("gr", "g") if groups(q, k)[1] > 1 else ("", "")


def _repeat_kv(q, kv):
    """k or v (..., G, S, ·) -> (..., H, S, ·): kv head h // R repeated for query head h."""
    g, r = groups(q, kv)
    return kv if r == 1 else jnp.repeat(kv, r, axis=-3)  # (..., H, S, ·)


def attention_reference(q, k, v, causal=True):
    """q (..., H, T, D), k (..., G, S, D), v (..., G, S, Dv) -> o (..., H, T, Dv).

    k, v repeated over each group of R = H/G query heads (query head h uses kv head h // R);
    s = q kᵀ/√D (masked: query i sees keys j <= i + S − T when ``causal``);
    p = softmax(s) row-wise;  o = p v.
    """
    k, v = _repeat_kv(q, k), _repeat_kv(q, v)  # (..., H, S, D), (..., H, S, Dv)
    s = _masked_scores(q, k, causal)  # (..., H, T, S)
    e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))  # (..., T, S)
    p = e / jnp.sum(e, axis=-1, keepdims=True)  # (..., T, S)
    return jnp.einsum("...ts,...se->...te", p, v)  # (..., T, Dv)


def _grouped_scores(qg, k, heads, causal):
    """qg (..., G, R, T, D), k (..., G, S, D) -> masked s = q kᵀ/√D (..., G, R, T, S);
    ``heads`` = `_letters` (ungrouped: q (..., T, D) -> (..., T, S))."""
    hq, hk = heads
    s = jnp.einsum(f"...{hq}td,...{hk}sd->...{hq}ts", qg, k) * (1.0 / math.sqrt(qg.shape[-1]))
    return _mask(s, causal)  # (..., G, R, T, S)


def attention_fwd(q, k, v, causal=True):
    """Forward; keeps q, k (to recompute s and for dk, dq), v (for dp = do vᵀ), the output o
    (for the row term Σ_e do ⊙ o) and the row log-sum-exp L (..., H, T) (so p = exp(s − L) is
    recovered exactly) — never the T × S probabilities. Grouped heads are contracted in place
    (scores (..., G, R, T, S)): k and v are never repeated."""
    heads = hq, hk = _letters(q, k)
    s = _grouped_scores(_grouped_q(q, k), k, heads, causal)  # (..., G, R, T, S)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))  # (..., G, R, T, 1)
    lse = m + jnp.log(jnp.sum(jnp.exp(s - m), axis=-1, keepdims=True))  # (..., G, R, T, 1)
    p = jnp.exp(s - lse)  # (..., G, R, T, S), dropped after this line
    o = jnp.einsum(f"...{hq}ts,...{hk}se->...{hq}te", p, v)  # (..., G, R, T, Dv)
    o = o.reshape(q.shape[:-1] + v.shape[-1:])  # (..., H, T, Dv)
    return o, (q, k, v, o, lse.reshape(q.shape[:-1]))


def attention_bwd(res, do, causal=True):
    """dv = pᵀ do;  dp = do vᵀ;  ds = p ⊙ (dp − δ),  δ = rowsum(do ⊙ o);  dq = ds k/√D;
    dk = dsᵀ q/√D; with grouped heads dk and dv also sum over the R query heads of each group.

    With o_ie = Σ_j p_ij v_je:  ∂L/∂v_je = Σ_i p_ij do_ie (dv = pᵀ do) and
    ∂L/∂p_ij = Σ_e do_ie v_je (dp = do vᵀ). Each row of p is a softmax of the row of s, whose
    Jacobian is diag(p) − p pᵀ, so ds_ij = p_ij (dp_ij − Σ_l dp_il p_il). The row term is
    Σ_l dp_il p_il = Σ_l Σ_e do_ie v_le p_il = Σ_e do_ie o_ie: O(Dv) per row from the kept output
    instead of O(S) from the T × S product. Masked entries have p_ij = 0 exactly, so ds is 0
    there (the mask's constant carries no gradient). Finally s = q kᵀ/√D gives
    dq = ds k/√D and dk = dsᵀ q/√D. p itself is recomputed as exp(s − L). A kv head used by
    R query heads is R branches of one value: its cotangents add (the einsums sum over r).
    """
    q, k, v, o, lse = res
    scale = 1.0 / math.sqrt(q.shape[-1])
    heads = hq, hk = _letters(q, k)
    qg, dog, og = _grouped_q(q, k), _grouped_q(do, k), _grouped_q(o, k)  # (..., G, R, T, ·)
    s = _grouped_scores(qg, k, heads, causal)  # (..., G, R, T, S)
    p = jnp.exp(s - _grouped_q(lse[..., None], k))  # (..., G, R, T, S)
    dv = jnp.einsum(f"...{hq}ts,...{hq}te->...{hk}se", p, dog)  # (..., G, S, Dv)
    dp = jnp.einsum(f"...{hq}te,...{hk}se->...{hq}ts", dog, v)  # (..., G, R, T, S)
    delta = jnp.sum(dog * og, axis=-1, keepdims=True)  # (..., G, R, T, 1)
    ds = p * (dp - delta)  # (..., G, R, T, S)
    dq = jnp.einsum(f"...{hq}ts,...{hk}sd->...{hq}td", ds, k) * scale  # (..., G, R, T, D)
    dk = jnp.einsum(f"...{hq}ts,...{hq}td->...{hk}sd", ds, qg) * scale  # (..., G, S, D)
    return dq.reshape(q.shape), dk, dv


def attention_jvp(primals, tangents, causal=True):
    """ds = (dq kᵀ + q dkᵀ)/√D;  dp = p ⊙ (ds − rowsum(p ⊙ ds));  do = dp v + p dv.

    Forwards through the three steps: s = q kᵀ/√D is bilinear (product rule; the mask's fill
    is a constant, so masked entries have ds = 0 — and p = 0 there, which zeroes them in dp
    anyway); each row of p = softmax(s) moves by p ⊙ (ds − ⟨p, ds⟩) (`softmax_jvp`); o = p v
    is bilinear: do = dp v + p dv. Shapes: ds, dp (..., H, T, S), do (..., H, T, Dv). Forward
    mode materialises the T × S tangent ds (as the backward does its cotangent). Grouped heads:
    k, v and their tangents are repeated over each group (a linear map: its tangent is the
    repeat of the tangent).
    """
    q, k, v = primals
    dq, dk, dv = tangents
    k, v, dk, dv = (_repeat_kv(q, a) for a in (k, v, dk, dv))  # (..., H, S, ·)
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


def validate_attention(op, q, k, v, causal):
    """Shapes, dtypes and ``causal`` of an attention call; errors name ``op`` and the shapes."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        require_float(op, name, a)
    require_ndim(op, "q", q, (2, None), "(..., H, T, D)")
    require_ndim(op, "k", k, (2, None), "(..., G, S, D)")
    require_ndim(op, "v", v, (2, None), "(..., G, S, Dv)")
    shapes = f"(q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)})"
    if k.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            f"{op}: k and v must have identical leading dims, got {tuple(k.shape[:-2])} and "
            f"{tuple(v.shape[:-2])} {shapes}"
        )
    _validate_heads(op, q, k, shapes)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"{op}: q has feature size D={q.shape[-1]} but k has {k.shape[-1]} {shapes}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"{op}: k has S={k.shape[-2]} keys but v has {v.shape[-2]} values {shapes}"
        )
    if q.shape[-1] == 0:
        raise ValueError(f"{op}: feature size D must be at least 1 {shapes}")
    if k.shape[-2] == 0:
        raise ValueError(f"{op}: at least one key is needed, got S=0 {shapes}")
    require_same_dtype(op, q=q, k=k, v=v)
    if not isinstance(causal, bool):
        raise TypeError(f"{op}: causal must be a Python bool, got {causal!r}")
    if causal and k.shape[-2] < q.shape[-2]:
        raise ValueError(
            f"{op}: causal=True needs S >= T (query i sees keys j <= i + S - T), got "
            f"T={q.shape[-2]} queries and S={k.shape[-2]} keys {shapes}"
        )


def _validate_heads(op, q, k, shapes):
    """q (..., H, T, D) against k (..., G, S, D): same batch dims, H a multiple of G."""
    if q.ndim != k.ndim:
        raise ValueError(
            f"{op}: q, k and v must have identical leading dims except the head axis, got "
            f"q with {q.ndim} dims and k with {k.ndim} {shapes}"
        )
    if q.ndim < 3:
        return
    if q.shape[:-3] != k.shape[:-3]:
        raise ValueError(
            f"{op}: q, k and v must have identical leading dims before the head axis, got "
            f"{tuple(q.shape[:-3])} and {tuple(k.shape[:-3])} {shapes}"
        )
    h, g = q.shape[-3], k.shape[-3]
    if g == 0 or h % g:
        raise ValueError(
            f"{op}: q's H={h} heads must be a multiple of k's and v's G={g} heads (grouped "
            f"heads: query head h uses kv head h // (H/G); q, k and v must otherwise have "
            f"identical leading dims) {shapes}"
        )


def _validate(q, k, v, causal=True):
    validate_attention("attention", q, k, v, causal)


def draw_heads(gen, max_size=3):
    """Leading dims for q and for k, v: ``(q_lead, kv_lead)``, grouped (H = G·R, R in {2, 3})
    about half the time when there is a head axis; else identical."""
    lead = _sample.batch_shape(gen, max_dims=2, max_size=max_size)
    if lead and gen.integers(0, 2):
        r = int(gen.integers(2, 4))
        return (*lead[:-1], lead[-1] * r), lead
    return lead, lead


def _sample_attention(key, dtype):
    """Well-conditioned draws, so float32 hand vs autodiff can meet 1e-5 relative.

    ds_j = p_j (do·v_j − do·o) cancels when one key dominates (saturated softmax: relative
    error ~ eps / (1 − p_max)) or when do·(v_j − o) is small by chance; tiny shapes (one query,
    two keys, D = Dv = 1) leave nothing to average over, and then *both* float32 paths sit
    ~1e-5 from the exact value. Hence q, k of scale 0.7 (scores of std ≈ 0.5) and at least
    2 queries, 3 keys and 2 features; float64 tests cover the tiny shapes (T = 1, S = 2, D = 1).
    About half the draws with a head axis have grouped heads (G < H).
    """
    gen = _sample.rng(key)
    q_lead, kv_lead = draw_heads(gen)
    causal = bool(gen.integers(0, 2))
    t = int(gen.integers(2, 6))
    s_len = max(t + int(gen.integers(0, 4)), 3) if causal else int(gen.integers(3, 7))
    d, dv = (int(x) for x in gen.integers(2, 5, size=2))
    kq, kk, kv = _sample.split3(key)
    q = _sample.normal(kq, (*q_lead, t, d), dtype, scale=0.7)
    k = _sample.normal(kk, (*kv_lead, s_len, d), dtype, scale=0.7)
    v = _sample.normal(kv, (*kv_lead, s_len, dv), dtype)
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
