"""Output-shape inference for layers: trace the op's reference on an abstract batch of one."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def infer_shape(fn, input_shape, dtype, *args) -> tuple[int, ...]:
    """Shape (without the batch dim) of ``fn(x, *args)`` for ``x`` of shape (1, *input_shape).

    Runs no computation (`jax.eval_shape`); errors from the op's validation surface here, at
    init time, naming the op and the shapes.
    """
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.dtype(dtype))
    return tuple(jax.eval_shape(fn, x, *args).shape[1:])
