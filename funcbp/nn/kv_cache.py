"""Causal attention whose state can be a KV cache: decoding without a second model forward.

`CausalAttention` is the attention leaf of a decoder (``(q, k, v) -> o`` by
`funcbp.ops.attention` or `funcbp.ops.flash_attention`, causal). Its state is empty in training
and in ordinary evaluation. For decoding it holds a cache (`cache_entry`)::

    {"k": (N, G, L, Dh), "v": (N, G, L, Dv), "pos": int32}

(L = the longest sequence to decode). A call in eval mode with T new rows writes their k, v at
``pos … pos + T − 1``, attends, and returns the state with ``pos + T``: the prompt is one call
(T = P, the prefill), every generated token one more (T = 1). The `funcbp.nn.rotary.Rope`
before it holds the same ``pos`` (its rotation offset) and advances it the same way, so the
whole decoder runs unchanged, one token at a time, with every layer's work done once per token.

Masking is `funcbp.ops.attention`'s causal convention with S = pos + T keys (query i sits at
position pos + i and sees keys j <= pos + i, the ``S > T`` case of the op); the buffer's slots
after pos + T are the future and masked too, so one compiled step serves every position.
``window`` (the trained context C) additionally hides keys more than C − 1 positions back
(j > pos + i − C): beyond the context a query sees the last C keys, as the last query of a
training window did (with RoPE, scores depend on relative positions only).

The cached path is evaluation only (plain `jax.numpy`, nothing is differentiated through a
cache); training and the explicit engine use the ops' hand VJPs with an empty state.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcbp.nn.core import Layer, leaf
from funcbp.ops.attention import attention
from funcbp.ops.flash_attention import flash_attention

__all__ = ["KINDS", "CausalAttention", "attend_cached", "cache_entry"]

KINDS = ("dense", "flash")
"""``"dense"``: `funcbp.ops.attention` (the T × S scores materialised); ``"flash"``:
`funcbp.ops.flash_attention` (blockwise, no T × S buffer)."""


def cache_entry(batch: int, kv_heads: int, length: int, head_dim: int, dtype=jnp.float32):
    """An empty cache for one attention layer: ``{"k", "v": zeros (N, G, L, Dh), "pos": 0}``."""
    zeros = jnp.zeros((batch, kv_heads, length, head_dim), dtype)
    return {"k": zeros, "v": zeros, "pos": jnp.zeros((), jnp.int32)}


def attend_cached(q, k_buf, v_buf, pos, window: int | None = None):
    """q (N, H, T, D) at positions pos … pos + T − 1 against the buffers k (N, G, L, D),
    v (N, G, L, Dv) -> o (N, H, T, Dv). Query i sees keys j with j <= pos + i (and
    j > pos + i − window when ``window`` is set); query head h uses kv head h // (H/G).
    Evaluation only (plain `jax.numpy`)."""
    n, h, t, d = q.shape
    g, length = k_buf.shape[1], k_buf.shape[2]
    qg = q.reshape(n, g, h // g, t, d)  # (N, G, R, T, D)
    s = jnp.einsum("ngrtd,ngsd->ngrts", qg, k_buf) * (1.0 / math.sqrt(d))  # (N, G, R, T, L)
    row = pos + jnp.arange(t)[:, None]  # (T, 1) absolute positions of the queries
    col = jnp.arange(length)[None, :]  # (1, L)
    visible = col <= row
    if window is not None:
        visible = visible & (col > row - window)
    fill = jnp.asarray(jnp.finfo(s.dtype).min / 2, s.dtype)
    s = jnp.where(visible.reshape(1, 1, 1, t, length), s, fill)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("ngrts,ngse->ngrte", p, v_buf)  # (N, G, R, T, Dv)
    return o.reshape(n, h, t, v_buf.shape[-1])


def _decode(q, k, v, cache, window):
    pos = cache["pos"]
    zero = jnp.zeros((), pos.dtype)
    at = (zero, zero, pos, zero)
    k_buf = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), at)
    v_buf = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), at)
    o = attend_cached(q, k_buf, v_buf, pos, window).astype(q.dtype)
    return o, {"k": k_buf, "v": v_buf, "pos": pos + q.shape[-2]}


def CausalAttention(
    *, kind: str = "dense", block_size: int = 128, window: int | None = None
) -> Layer:
    """``(q, k, v) -> o``: causal attention by `funcbp.ops.attention` (``kind="dense"``) or
    `funcbp.ops.flash_attention` (``"flash"``, blocks of ``block_size``); q (N, H, T, Dh),
    k, v (N, G, T, ·) -> o (N, H, T, Dv). ``dx = (dq, dk, dv)`` by the op's hand VJP.

    State: empty, or a KV cache (`cache_entry`) in eval mode (see the module);
    ``window``: the cache's attention span (None: unlimited)."""
    if kind not in KINDS:
        raise ValueError(f"CausalAttention: kind must be one of {KINDS}, got {kind!r}")
    op = attention if kind == "dense" else flash_attention
    static = {"causal": True} if kind == "dense" else {"causal": True, "block_size": block_size}

    def init(key, input_shape, dtype):
        q_shape, _, v_shape = input_shape
        return (*q_shape[:-1], v_shape[-1]), {}, {}

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        if not state:
            return op.path(source)(*x, **static), state
        if train:
            raise ValueError("CausalAttention: a KV cache is for decoding (train=False)")
        return _decode(*x, state, window)

    def forward(params, state, x, *, key=None, train=False):
        if state:
            raise ValueError("CausalAttention: the explicit engine does not run a KV cache")
        if op.validate is not None:
            op.validate(*x, **static)
        y, residuals = op.fwd(*x, **static)
        return y, state, residuals

    def backward(params, residuals, dy):
        return {}, tuple(op.bwd(residuals, dy, **static))

    return leaf(f"attention_{kind}", init, apply, forward, backward, op=op)
