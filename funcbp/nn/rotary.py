"""Glue of grouped-head attention with rotary positions: split a fused q|k|v projection into H
query heads and G key/value heads, then rotate q and k by their positions.

* `GroupedSplitHeads` — (N, T, (H + 2G)·Dh) -> q (N, H, T, Dh), k (N, G, T, Dh), v (N, G, T, Dh):
  the columns are ``[q (H heads) | k (G heads) | v (G heads)]``, each head Dh consecutive
  columns (the Hugging Face q/k/v projections' output layout, stacked). It only moves entries,
  so its backward is its inverse: the three cotangents put back side by side.
* `Rope` — ``(q, k, v) -> (rope(q), rope(k), v)`` by `funcbp.ops.rope` (rotate-half, hand VJP:
  the rotation by −φ); v passes through (dv = dy_v). Positions start at 0, or, when its state
  holds a KV cache's ``{"pos": int}`` (decoding, `funcbp.nn.kv_cache`), at that position; the
  state then advances by T.
"""

from __future__ import annotations

import jax.numpy as jnp

from funcbp.nn.core import Layer, leaf
from funcbp.ops.rope import rope

__all__ = ["GroupedSplitHeads", "Rope"]


def _positive(where, **values):
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}: {name} must be a positive int, got {v!r}")


def _split(x, heads, kv_heads):
    """(N, T, (H + 2G)·Dh) -> q (N, H, T, Dh), k, v (N, G, T, Dh)."""
    n, t, width = x.shape
    dh = width // (heads + 2 * kv_heads)
    y = x.reshape(n, t, heads + 2 * kv_heads, dh).transpose(0, 2, 1, 3)  # (N, H + 2G, T, Dh)
    return y[:, :heads], y[:, heads : heads + kv_heads], y[:, heads + kv_heads :]


def GroupedSplitHeads(heads: int, kv_heads: int) -> Layer:
    """(N, T, (H + 2G)·Dh) -> ``(q, k, v)``: q (N, H, T, Dh), k and v (N, G, T, Dh).

    H = ``heads`` must be a multiple of G = ``kv_heads`` (query head h uses kv head h // (H/G),
    as `funcbp.ops.attention` reads them). Backward (the inverse permutation):
    ``(dq, dk, dv) -> dx`` (N, T, (H + 2G)·Dh)."""
    _positive("GroupedSplitHeads", heads=heads, kv_heads=kv_heads)
    if heads % kv_heads:
        raise ValueError(
            f"GroupedSplitHeads: heads {heads} must be a multiple of kv_heads {kv_heads}"
        )
    parts = heads + 2 * kv_heads

    def _check(x):
        if x.ndim != 3 or x.shape[-1] % parts:
            raise ValueError(
                f"GroupedSplitHeads: x must be (N, T, (heads + 2·kv_heads)·Dh) with heads="
                f"{heads}, kv_heads={kv_heads}, got {tuple(x.shape)}"
            )

    def init(key, input_shape, dtype):
        t, width = input_shape
        if width % parts:
            raise ValueError(
                f"GroupedSplitHeads: width {width} is not {parts} heads of one size "
                f"({heads} q + 2·{kv_heads} kv; input {tuple(input_shape)})"
            )
        dh = width // parts
        return ((heads, t, dh), (kv_heads, t, dh), (kv_heads, t, dh)), {}, {}

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        _check(x)
        return _split(x, heads, kv_heads), state

    def forward(params, state, x, *, key=None, train=False):
        _check(x)
        return _split(x, heads, kv_heads), state, None

    def backward(params, residuals, dy):
        heads_all = jnp.concatenate(dy, axis=1)  # (N, H + 2G, T, Dh)
        n, _, t, dh = heads_all.shape
        return {}, heads_all.transpose(0, 2, 1, 3).reshape(n, t, parts * dh)

    return leaf(f"split_heads{heads}q{kv_heads}kv", init, apply, forward, backward)


def _offset(state):
    """The first position: the cache's ``pos`` when decoding, else 0."""
    return state["pos"] if state else 0


def _advance(state, t):
    return {"pos": state["pos"] + t} if state else state


def Rope(theta: float = 10000.0) -> Layer:
    """``(q, k, v) -> (rope(q), rope(k), v)``; q (N, H, T, Dh), k (N, G, T, Dh).

    Rows sit at positions ``pos … pos + T − 1``: ``pos`` = 0 (training, an empty state) or
    the decoding position held in the state ``{"pos": int32}`` (`funcbp.nn.kv_cache`), which
    then advances by T. Backward: ``(dq, dk, dv) -> (Rᵀ dq, Rᵀ dk, dv)`` by `funcbp.ops.rope`'s
    hand VJP (the rotation by −φ)."""

    def init(key, input_shape, dtype):
        return tuple(input_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        q, k, v = x
        rotate = rope.path(source)
        offset = _offset(state)
        out = (rotate(q, offset, theta=theta), rotate(k, offset, theta=theta), v)
        return out, _advance(state, q.shape[-2])

    def forward(params, state, x, *, key=None, train=False):
        q, k, v = x
        offset = _offset(state)
        for a in (q, k):
            rope.validate(a, offset, theta=theta)
        (qr, res_q), (kr, res_k) = rope.fwd(q, offset, theta), rope.fwd(k, offset, theta)
        return (qr, kr, v), _advance(state, q.shape[-2]), (res_q, res_k)

    def backward(params, residuals, dy):
        res_q, res_k = residuals
        dq, dk, dv = dy
        return {}, (rope.bwd(res_q, dq, theta)[0], rope.bwd(res_k, dk, theta)[0], dv)

    return leaf("rope", init, apply, forward, backward, op=rope)
