"""Embedding lookup: rows of a table for integer ids; its gradient is a scatter-add.

Out-of-range ids (outside [0, V), negatives included: no Python-style wrap-around):
* concrete ids (eager calls, ids passed as constants) are rejected with a ValueError naming the
  offending range;
* under `jax.jit`/`vmap` the values are unknown at trace time, so the lookup returns a row of
  NaN for each such id (the trainer's NaN guard then reports it) and the backward drops its
  cotangent (nothing is added to any row of the table). The behaviour never reads or writes
  out of bounds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.ops import _sample
from funcbp.ops._checks import is_concrete, require_array, require_float, require_ndim
from funcbp.ops._op import Op, register
from funcbp.ops._precision import acc_dtype

__all__ = ["embedding"]


def embedding_reference(ids, table):
    """ids: integer, any shape (...); table: (V, D) float -> (..., D).

    out[..., :] = table[ids[...], :]; a row of NaN where an id is outside [0, V).
    """
    return table.at[ids].get(mode="fill", fill_value=jnp.nan, wrap_negative_indices=False)


def embedding_fwd(ids, table):
    """Forward; keeps the ids (for the scatter) and the table, only for its shape (V, D) and
    dtype: the table is the op's input, a live parameter, so keeping it stores nothing new."""
    return embedding_reference(ids, table), (ids, table)


def embedding_bwd(res, g):
    """dtable = zeros(V, D).at[ids].add(g);  dids = None (integers).

    out[n] = table[ids[n]] reads row ids[n], so ∂L/∂table[v] = Σ_{n: ids[n] = v} g[n]: a
    scatter-add in which repeated ids accumulate. Out-of-range ids are dropped (their output
    was NaN fill, which does not depend on the table).
    """
    ids, table = res
    acc = acc_dtype(table)  # float32 for a half table: repeated ids add up without rounding
    dtable = (
        jnp.zeros(table.shape, acc)
        .at[ids]
        .add(g.astype(acc), mode="drop", wrap_negative_indices=False)
    )  # (V, D)
    return None, dtable


def embedding_jvp(primals, tangents):
    """dout = dtable[ids] (the same lookup, in the tangent table); the ids' tangent is ignored.

    out[n] = table[ids[n]] is linear in the table, so it moves by the looked-up rows of dtable:
    a gather forwards, the scatter-add of the backward being its transpose. An out-of-range id
    gives a NaN row that does not depend on the table: its tangent is 0 (fill value 0).
    """
    (ids, table), (_, dtable) = primals, tangents
    dout = dtable.at[ids].get(mode="fill", fill_value=0, wrap_negative_indices=False)  # (..., D)
    return embedding_reference(ids, table), dout


def _validate(ids, table):
    op = "embedding"
    require_array(op, "ids", ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(
            f"embedding: ids must be an integer array (row indices), got shape "
            f"{tuple(ids.shape)} dtype {ids.dtype}; cast float ids explicitly if intended"
        )
    require_float(op, "table", table)
    require_ndim(op, "table", table, 2, "(V, D)")
    n_rows = table.shape[0]
    if is_concrete(ids) and ids.size:
        values = np.asarray(ids)
        lo, hi = values.min(), values.max()
        if lo < 0 or hi >= n_rows:
            raise ValueError(
                f"embedding: ids must lie in [0, {n_rows}) for a table of shape "
                f"{tuple(table.shape)}, got values in [{lo}, {hi}]"
            )


def _sample_embedding(key, dtype):
    gen = _sample.rng(key)
    n_rows, dim = int(gen.integers(1, 7)), int(gen.integers(1, 5))
    ids_shape = _sample.batch_shape(gen, max_dims=2, max_size=6)  # () included: a single id
    wide = gen.integers(0, 2) and jax.config.jax_enable_x64
    id_dtype = jnp.int64 if wide else jnp.int32
    ids = _sample.host(gen.integers(0, n_rows, ids_shape), id_dtype)  # small V: repeats common
    table = _sample.normal(key, (n_rows, dim), dtype)
    return (ids, table), {}


embedding = register(
    Op(
        "embedding",
        embedding_reference,
        embedding_fwd,
        embedding_bwd,
        _sample_embedding,
        2,
        _validate,
        jvp=embedding_jvp,
    )
)
