"""Embedding layer: integer ids -> rows of a learned table."""

from __future__ import annotations

import jax

from funcbp.nn.core import Layer, op_layer
from funcbp.ops.embedding import embedding

__all__ = ["Embedding"]


def Embedding(vocab: int, dim: int, *, scale: float = 0.02) -> Layer:
    """ids (...) int -> (..., dim). Params ``{"table": (vocab, dim)}`` ~ N(0, scale²).

    The table's gradient is a scatter-add of dy at the ids (repeated ids accumulate); the ids
    get no gradient (the layer's ``backward`` returns ``dx = None``)."""
    for name, v in (("vocab", vocab), ("dim", dim)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"Embedding: {name} must be a positive int, got {v!r}")

    def init_fn(key, input_shape, dtype):
        return (*input_shape, dim), {"table": scale * jax.random.normal(key, (vocab, dim), dtype)}

    return op_layer(f"embedding{vocab}x{dim}", embedding, init_fn, ("table",))
