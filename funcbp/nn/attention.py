"""Multi-head attention as a composition: project, split into heads, attend, merge, project.

The glue layers only move entries, so each one's hand backward is its inverse:

* `SplitHeads` — (N, T, parts·W) -> ``parts`` arrays (N, H, T, W/H): the columns are
  ``[q | k | v]``, each split into H heads of W/H columns (the GPT-2 layout).
* `MergeHeads` — (N, H, T, Dh) -> (N, T, H·Dh): the heads' outputs side by side.
* `Attention` — ``(q, k, v) -> o`` by `funcbp.ops.attention` (causal by default).

`MultiHeadAttention` = ``serial(qkv=Dense(3W), heads=SplitHeads(H), attention=Attention(),
merge=MergeHeads(), proj=Dense(W))``.
"""

from __future__ import annotations

import jax.numpy as jnp

from funcbp.nn import init as initializers
from funcbp.nn.combinators import serial
from funcbp.nn.core import Layer, leaf, op_layer
from funcbp.nn.layers import Dense
from funcbp.ops.attention import attention
from funcbp.ops.flash_attention import flash_attention

__all__ = ["Attention", "MergeHeads", "MultiHeadAttention", "SplitHeads"]


def _split(x, parts, heads):
    """(N, T, parts·H·Dh) -> ``parts`` × (N, H, T, Dh)."""
    n, t, width = x.shape
    dh = width // (parts * heads)
    y = x.reshape(n, t, parts, heads, dh).transpose(2, 0, 3, 1, 4)  # (parts, N, H, T, Dh)
    return tuple(y[i] for i in range(parts))


def _merge(o):
    """(N, H, T, Dh) -> (N, T, H·Dh)."""
    n, h, t, dh = o.shape
    return o.transpose(0, 2, 1, 3).reshape(n, t, h * dh)


def _check_split(x, parts, heads):
    if x.ndim != 3 or x.shape[-1] % (parts * heads):
        raise ValueError(
            f"SplitHeads: x must be (N, T, {parts}·heads·Dh) with heads={heads}, got "
            f"{tuple(x.shape)}"
        )


def SplitHeads(heads: int, parts: int = 3) -> Layer:
    """(N, T, parts·W) -> a tuple of ``parts`` arrays (N, heads, T, W/heads).

    Backward (the inverse permutation): ``parts`` × (N, H, T, Dh) -> (N, T, parts·W)."""
    for name, v in (("heads", heads), ("parts", parts)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"SplitHeads: {name} must be a positive int, got {v!r}")

    def init(key, input_shape, dtype):
        t, width = input_shape
        if width % (parts * heads):
            raise ValueError(
                f"SplitHeads: width {width} is not {parts} parts of {heads} heads "
                f"(input {tuple(input_shape)})"
            )
        head = (heads, t, width // (parts * heads))
        return tuple(head for _ in range(parts)), {}, {}

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        _check_split(x, parts, heads)
        return _split(x, parts, heads), state

    def forward(params, state, x, *, key=None, train=False):
        _check_split(x, parts, heads)
        return _split(x, parts, heads), state, None

    def backward(params, residuals, dy):
        stacked = jnp.stack(dy)  # (parts, N, H, T, Dh)
        _, n, h, t, dh = stacked.shape
        dx = stacked.transpose(1, 3, 0, 2, 4).reshape(n, t, parts * h * dh)  # (N, T, parts·W)
        return {}, dx

    return leaf(f"split_heads{heads}x{parts}", init, apply, forward, backward)


def MergeHeads() -> Layer:
    """(N, H, T, Dh) -> (N, T, H·Dh). Backward (its inverse): (N, T, W) -> (N, H, T, Dh)."""

    def init(key, input_shape, dtype):
        h, t, dh = input_shape
        return (t, h * dh), {}, {}

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        return _merge(x), state

    def forward(params, state, x, *, key=None, train=False):
        return _merge(x), state, x.shape[1]

    def backward(params, heads, dy):
        n, t, w = dy.shape
        return {}, dy.reshape(n, t, heads, w // heads).transpose(0, 2, 1, 3)  # (N, H, T, Dh)

    return leaf("merge_heads", init, apply, forward, backward)


KINDS = ("dense", "flash")


def Attention(*, causal: bool = True, kind: str = "dense", block_size: int = 128) -> Layer:
    """``(q, k, v) -> o``: scaled dot-product attention per head (grouped heads allowed);
    ``dx = (dq, dk, dv)``. ``kind="dense"``: `funcbp.ops.attention` (hand VJP keeping only the
    row log-sum-exp, T × S blocks in the backward); ``"flash"``: `funcbp.ops.flash_attention`
    (blockwise in ``block_size`` rows and keys, no T × S buffer: long contexts)."""
    if kind not in KINDS:
        raise ValueError(f"Attention: kind must be one of {KINDS}, got {kind!r}")

    def init(key, input_shape, dtype):
        q_shape, _, v_shape = input_shape
        return (*q_shape[:-1], v_shape[-1]), {}

    if kind == "flash":
        static = {"causal": causal, "block_size": block_size}
        return op_layer("flash_attention", flash_attention, init, (), static, inputs=3)
    return op_layer("attention", attention, init, (), {"causal": causal}, inputs=3)


def MultiHeadAttention(
    width: int, heads: int, *, causal: bool = True, init=None, proj_init=None
) -> Layer:
    """(N, T, W) -> (N, T, width): ``serial(qkv, heads, attention, merge, proj)``.

    ``qkv`` = Dense(3·width) (its columns ``[q | k | v]``), ``proj`` = Dense(width); ``init``/
    ``proj_init`` draw their weights (default N(0, 0.02²)). Params ``{"qkv": {"w", "b"}, ...,
    "proj": {"w", "b"}}``."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1 or width % heads:
        raise ValueError(
            f"MultiHeadAttention: width must be a positive multiple of heads {heads}, got {width!r}"
        )
    init = init or initializers.normal(0.02)
    return serial(
        qkv=Dense(3 * width, init=init),
        heads=SplitHeads(heads, 3),
        attention=Attention(causal=causal),
        merge=MergeHeads(),
        proj=Dense(width, init=proj_init or init),
        name=f"mha{heads}x{width // heads}",
    )
