"""Inverted dropout: zero each entry with probability ``rate``, scale the kept ones by 1/(1−rate).

Given the key, dropout is a fixed linear map of x (a diagonal of 0s and 1/(1−rate)s), so its
VJP is the same map applied to the cotangent and finite differences of the reference (same key,
same mask) are exact up to rounding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcbp.ops import _sample
from funcbp.ops._checks import require_array, require_float
from funcbp.ops._op import Op, register

__all__ = ["dropout"]


def _typed_key(key):
    """A typed PRNG key; raw ``uint32`` key data (``jax.random.PRNGKey``) is wrapped first."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def _keep_mask(key, rate, shape):
    """Boolean mask, True (kept) with probability 1 − rate; a pure function of (key, shape)."""
    return jax.random.bernoulli(_typed_key(key), 1.0 - rate, shape)


def _apply(mask, v, rate):
    """mask ⊙ v / (1 − rate): the linear map of both the forward and the backward."""
    return jnp.where(mask, v * (1.0 / (1.0 - rate)), jnp.zeros((), v.dtype))


def dropout_reference(x, key, rate):
    """x: any float shape; key: a PRNG key (typed, or raw uint32 data); rate: Python float in
    [0, 1), the DROP probability -> same shape as x.

    y = m ⊙ x / (1 − rate) with m_i ~ Bernoulli(1 − rate) drawn from ``key``, so E[y] = x.
    ``rate == 0`` returns x itself (no mask is drawn).
    """
    if rate == 0:
        return x
    return _apply(_keep_mask(key, rate, x.shape), x, rate)


def dropout_fwd(x, key, rate):
    """Forward; keeps only the key (a few bytes), not the mask.

    The mask is a pure function of (key, shape), so the backward redraws it: nothing of the size
    of x is stored (a boolean mask would be 1 byte per element), at the price of regenerating
    the random bits once more. Same key, same bits: forward and backward masks agree exactly.
    """
    return dropout_reference(x, key, rate), (key,)


def dropout_bwd(res, g, rate):
    """dx = m ⊙ g / (1 − rate) (the map is diagonal, so it is its own transpose); dkey = None.

    With the mask m redrawn from the kept key. ``rate == 0``: dx = g.
    """
    (key,) = res
    if rate == 0:
        return g, None
    return _apply(_keep_mask(key, rate, g.shape), g, rate), None


def dropout_jvp(primals, tangents, rate):
    """dy = m ⊙ dx / (1 − rate), the mask m drawn from the same key; the key's tangent (float0)
    is ignored. For a fixed key the op is a fixed linear (diagonal) map of x, so its JVP is the
    map itself applied to the tangent, and its VJP the same map (a diagonal is symmetric)."""
    (x, key), (dx, _) = primals, tangents
    if rate == 0:
        return x, dx
    mask = _keep_mask(key, rate, x.shape)
    return _apply(mask, x, rate), _apply(mask, dx, rate)


def _validate(x, key, rate):
    op = "dropout"
    require_float(op, "x", x)
    require_array(op, "key", key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"dropout: key must be a single PRNG key (shape ()), got a key array of shape "
                f"{tuple(key.shape)}; split it outside and pass one key"
            )
    elif key.dtype == jnp.uint32:
        want = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape
        if tuple(key.shape) != tuple(want):
            raise ValueError(
                f"dropout: raw uint32 key data must have shape {tuple(want)}, got "
                f"{tuple(key.shape)}"
            )
    else:
        raise TypeError(
            f"dropout: key must be a PRNG key from jax.random.key (or raw uint32 key data from "
            f"jax.random.PRNGKey), got shape {tuple(key.shape)} dtype {key.dtype}"
        )
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise TypeError(
            f"dropout: rate (the drop probability) must be a Python float, static, got "
            f"{type(rate).__name__}; pass a number such as 0.1, not an array"
        )
    if not (math.isfinite(rate) and 0 <= rate < 1):
        raise ValueError(f"dropout: rate (the drop probability) must lie in [0, 1), got {rate!r}")


def _sample_dropout(key, dtype):
    gen = _sample.rng(key)
    shape = (*_sample.batch_shape(gen, max_dims=2), int(gen.integers(1, 7)))
    rate = float(gen.choice([0.0, 0.1, 0.3, 0.5, 0.8]))
    kx, kd = jax.random.split(key)
    drop_key = jax.random.fold_in(kd, 0)
    if gen.integers(0, 2):  # both key flavours: typed, and raw uint32 data
        drop_key = jax.random.key_data(drop_key)
    return (_sample.normal(kx, shape, dtype), drop_key), {"rate": rate}


dropout = register(
    Op(
        "dropout",
        dropout_reference,
        dropout_fwd,
        dropout_bwd,
        _sample_dropout,
        2,
        _validate,
        jvp=dropout_jvp,
    )
)
