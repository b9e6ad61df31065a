"""Random valid inputs of random shapes for the registry's samplers.

Samplers take ``(key, dtype)`` and must be deterministic in the key. Shapes are drawn small
(every hypothesis example with a new shape recompiles under jit) but never fixed, and values are
never all zero. Points near kinks (ReLU at 0) are avoided so finite differences are meaningful.

Values are drawn on the host with NumPy from a generator seeded by the key (then moved to the
device once): `jax.random` would compile a small XLA program for every new shape, and with random
shapes that compile time dominated the registry tests. Each helper seeds its own stream (a tag
appended to the key's data), so values are independent of the shape draws from `rng(key)`.
Samplers compute on the host too (NumPy, then `host`): an eager ``jnp`` op on a freshly drawn
shape compiles a program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["rng", "host", "normal", "uniform", "away_from_zero", "batch_shape", "split3"]

_NORMAL, _UNIFORM, _AWAY = 1, 2, 3  # stream tags: one independent stream per helper


def _key_words(key) -> list[int]:
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # raw uint32 key data (jax.random.PRNGKey)
    return [int(v) for v in np.asarray(jax.random.key_data(key)).ravel()]


def rng(key) -> np.random.Generator:
    """A NumPy generator seeded from a JAX key (for drawing Python ints: shapes, choices)."""
    return np.random.default_rng(_key_words(key))


def host(values, dtype) -> jax.Array:
    """Host values -> a device array of ``dtype`` (rounded once, on the host). `jax.device_put`,
    not `jnp.asarray`: since jax 0.10 the latter lifts a NumPy array through ``lax.stage``, a
    jitted program compiled once per shape and dtype (151 compiles in one ``funcbp check``)."""
    return jax.device_put(np.asarray(values, dtype=jnp.dtype(dtype)))


def normal(key, shape, dtype, scale=1.0):
    """Standard normal values times ``scale``, of ``shape`` and ``dtype``."""
    gen = np.random.default_rng([*_key_words(key), _NORMAL])
    return host(scale * gen.standard_normal(tuple(shape)), dtype)


def uniform(key, shape, dtype, lo=0.0, hi=1.0):
    """Uniform values in ``[lo, hi)``, of ``shape`` and ``dtype``."""
    gen = np.random.default_rng([*_key_words(key), _UNIFORM])
    return host(gen.uniform(lo, hi, tuple(shape)), dtype)


def away_from_zero(key, shape, dtype, lo=0.1, hi=2.0):
    """Random signs times uniform magnitudes in ``[lo, hi)``: no value within ``lo`` of 0."""
    gen = np.random.default_rng([*_key_words(key), _AWAY])
    sign = np.where(gen.random(tuple(shape)) < 0.5, -1.0, 1.0)
    return host(sign * gen.uniform(lo, hi, tuple(shape)), dtype)


def batch_shape(gen: np.random.Generator, max_dims: int = 2, max_size: int = 5) -> tuple:
    """Zero to ``max_dims`` leading batch dims, each 1..max_size."""
    n = int(gen.integers(0, max_dims + 1))
    return tuple(int(d) for d in gen.integers(1, max_size + 1, size=n))


def split3(key):
    """Three independent keys."""
    k1, k2, k3 = jax.random.split(key, 3)
    return k1, k2, k3
