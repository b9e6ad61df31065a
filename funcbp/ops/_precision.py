"""Mixed precision inside the ops: where a half-precision op accumulates in float32.

An op may run on bfloat16/float16 arrays (`funcbp.ops.Op.cast`: float32 masters cast to the
compute dtype inside the op). Its *parameter* gradients are sums over the batch (dW = Xᵀ dY,
db = Σ dY, a scatter-add of rows): summed in half precision they lose digits, and under data
parallelism the partial sums of each device would be all-reduced in half precision before any
cast to float32 (JAX #27496). So a ``bwd`` forms them with these helpers: the sum runs in the
*accumulation dtype* — float32 for half-precision inputs, the inputs' own dtype otherwise (so
float32 and float64 are unchanged) — and the result stays in it. `Op` then casts every cotangent
to its primal's dtype once (float32 for a float32 master: no rounding at all), so a data-parallel
reduction happens once per parameter, in float32.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["acc_dtype", "acc_matmul", "acc_sum", "cast_floats", "is_float"]


def acc_dtype(*arrays_or_dtypes):
    """float32 for half-precision inputs, else their common float dtype (float32, float64)."""
    return jnp.promote_types(jnp.result_type(*arrays_or_dtypes), jnp.float32)


def acc_matmul(a, b):
    """``a @ b`` accumulated and returned in the accumulation dtype (``preferred_element_type``):
    for bfloat16 inputs a float32 product, with no rounding of the sum to bfloat16."""
    return jnp.matmul(a, b, preferred_element_type=acc_dtype(a, b))


def acc_sum(x, axis):
    """``Σ x`` over ``axis`` in the accumulation dtype."""
    return jnp.sum(x, axis=axis, dtype=acc_dtype(x))


def is_float(x) -> bool:
    """Whether ``x`` is a floating-point array (not an integer array, a PRNG key or None)."""
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def cast_floats(arrays, dtype) -> tuple:
    """``arrays`` with every floating-point one cast to ``dtype`` (the others unchanged)."""
    return tuple(a.astype(dtype) if is_float(a) else a for a in arrays)
