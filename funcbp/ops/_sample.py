"""Random valid inputs of random shapes for the registry's samplers.

Samplers take ``(key, dtype)`` and must be deterministic in the key. Shapes are drawn small
(every hypothesis example with a new shape recompiles under jit) but never fixed, and values are
never all zero. Points near kinks (ReLU at 0) are avoided so finite differences are meaningful.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["rng", "normal", "away_from_zero", "batch_shape", "split3"]


def rng(key) -> np.random.Generator:
    """A NumPy generator seeded from a JAX key (for drawing Python ints: shapes, choices)."""
    data = np.asarray(jax.random.key_data(key)).ravel()
    return np.random.default_rng([int(v) for v in data])


def normal(key, shape, dtype, scale=1.0):
    """Standard normal values times ``scale``."""
    return scale * jax.random.normal(key, shape, dtype)


def away_from_zero(key, shape, dtype, lo=0.1, hi=2.0):
    """Random signs times uniform magnitudes in ``[lo, hi)``: no value within ``lo`` of 0."""
    k1, k2 = jax.random.split(key)
    sign = jnp.where(jax.random.bernoulli(k1, 0.5, shape), 1.0, -1.0).astype(dtype)
    return sign * jax.random.uniform(k2, shape, dtype, lo, hi)


def batch_shape(gen: np.random.Generator, max_dims: int = 2, max_size: int = 5) -> tuple:
    """Zero to ``max_dims`` leading batch dims, each 1..max_size."""
    n = int(gen.integers(0, max_dims + 1))
    return tuple(int(d) for d in gen.integers(1, max_size + 1, size=n))


def split3(key):
    """Three independent keys."""
    k1, k2, k3 = jax.random.split(key, 3)
    return k1, k2, k3
