"""Tables of vectors: token embedding, learned position embedding, and the output head.

* `Embedding` — ids (...) -> rows of a table; backward a scatter-add (`funcbp.ops.embedding`).
* `PositionEmbedding` — adds row ``t`` of a learned table to position ``t`` of (N, T, W).
* `Unembed` — (..., W) -> logits (..., V) = x Eᵀ (`funcbp.ops.unembed`); tied to a token table
  with `funcbp.nn.tie`.
* `HeadInputs` — (..., W) -> ``(x, E)``: the head's input and table handed on to a fused loss
  (`funcbp.ops.unembed_cross_entropy`) that never forms the (..., V) logits.
"""

from __future__ import annotations

import jax.numpy as jnp

from funcbp.nn import init as initializers
from funcbp.nn.core import Layer, leaf, op_layer
from funcbp.ops.embedding import embedding
from funcbp.ops.unembed import unembed

__all__ = ["Embedding", "HeadInputs", "PositionEmbedding", "Unembed"]


def _positive(where: str, **values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{where}: {name} must be a positive int, got {v!r}")


def Embedding(vocab: int, dim: int, *, init=None) -> Layer:
    """ids (...) int -> (..., dim). Params ``{"table": (vocab, dim)}`` drawn by ``init``
    (default N(0, 0.02²)).

    The table's gradient is a scatter-add of dy at the ids (repeated ids accumulate); the ids
    get no gradient (the layer's ``backward`` returns ``dx = None``)."""
    _positive("Embedding", vocab=vocab, dim=dim)
    init = initializers.check(init or initializers.normal(0.02), "Embedding: init")

    def init_fn(key, input_shape, dtype):
        return (*input_shape, dim), {"table": init(key, (vocab, dim), dtype)}

    return op_layer(f"embedding{vocab}x{dim}", embedding, init_fn, ("table",))


def _positions(x):
    """The position ids of (N, T, W): 0..T−1 for every example, (N, T)."""
    return jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])


def PositionEmbedding(context: int, dim: int, *, init=None) -> Layer:
    """x (N, T, dim) -> x + P[0..T), T <= ``context``. Params ``{"table": (context, dim)}``
    (default N(0, 0.02²)).

    Backward: ``dx = dy`` (an addition), and every example looks up rows 0..T−1, so the
    table's gradient is `funcbp.ops.embedding`'s scatter-add of all N·T rows of ``dy``: row t
    gets ``Σ_n dy[n, t]``, rows ≥ T get 0. The sum over the batch happens inside the op's
    backward (in float32 for half precision, once per device before the data-parallel
    reduction), not in a broadcast's transpose in the activations' dtype.
    """
    _positive("PositionEmbedding", context=context, dim=dim)
    init = initializers.check(init or initializers.normal(0.02), "PositionEmbedding: init")
    return _position(context, dim, init, None)


def _position(context, dim, init, compute_dtype) -> Layer:
    """`PositionEmbedding` looking its rows up in ``compute_dtype`` (`funcbp.ops.Op.cast`)."""
    lookup = embedding.cast(compute_dtype)

    def _check(x):
        if x.ndim != 3 or x.shape[-1] != dim or not 1 <= x.shape[1] <= context:
            raise ValueError(
                f"PositionEmbedding: x must be (N, T, {dim}) with 1 <= T <= context {context}, "
                f"got {tuple(x.shape)}"
            )

    def init_fn(key, input_shape, dtype):
        if len(input_shape) != 2 or input_shape[-1] != dim or not 1 <= input_shape[0] <= context:
            raise ValueError(
                f"PositionEmbedding: input must be (T, {dim}) per example with T <= "
                f"{context}, got {tuple(input_shape)}"
            )
        return tuple(input_shape), {"table": init(key, (context, dim), dtype)}, {}

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        _check(x)
        pos = lookup.path(source)(_positions(x), params["table"])  # (N, T, W)
        return x + pos, state

    def forward(params, state, x, *, key=None, train=False):
        _check(x)
        pos, residuals = lookup.fwd(_positions(x), params["table"])  # (N, T, W)
        return x + pos, state, residuals

    def backward(params, residuals, dy):
        _, dtable = lookup.bwd(residuals, dy)  # (context, W)
        return {"table": dtable.astype(params["table"].dtype)}, dy

    cast = lambda dtype: _position(context, dim, init, dtype)
    return leaf(f"position{context}x{dim}", init_fn, apply, forward, backward, cast=cast)


def Unembed(vocab: int, dim: int, *, init=None) -> Layer:
    """x (..., dim) -> logits (..., vocab) = x Eᵀ with params ``{"table": (vocab, dim)}``
    (default N(0, 0.02²)); tie ``table`` to a token `Embedding`'s with `funcbp.nn.tie`."""
    _positive("Unembed", vocab=vocab, dim=dim)
    init = initializers.check(init or initializers.normal(0.02), "Unembed: init")

    def init_fn(key, input_shape, dtype):
        return (*input_shape[:-1], vocab), {"table": init(key, (vocab, dim), dtype)}

    return op_layer(f"unembed{vocab}", unembed, init_fn, ("table",))


def HeadInputs(vocab: int, dim: int, *, init=None) -> Layer:
    """x (..., dim) -> ``(x, table)``: a head whose logits ``x Eᵀ`` are left to the loss
    (`funcbp.ops.unembed_cross_entropy`, chunked), params ``{"table": (vocab, dim)}`` (tie it to
    the token table with `funcbp.nn.tie`). Backward: ``(dx, dE) -> ({"table": dE}, dx)``."""
    _positive("HeadInputs", vocab=vocab, dim=dim)
    init = initializers.check(init or initializers.normal(0.02), "HeadInputs: init")

    def init_fn(key, input_shape, dtype):
        return (tuple(input_shape), (vocab, dim)), {"table": init(key, (vocab, dim), dtype)}, {}

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        return (x, params["table"]), state

    def forward(params, state, x, *, key=None, train=False):
        return (x, params["table"]), state, None

    def backward(params, residuals, dy):
        dx, dtable = dy
        return {"table": dtable}, dx

    return leaf(f"head_inputs{vocab}", init_fn, apply, forward, backward)
