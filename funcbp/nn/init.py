"""Initialisers: callables ``init(key, shape, dtype) -> array`` (the `jax.nn.initializers`
signature, so any of those plugs in too).

Following "Efficient BackProp" (LeCun et al.) and He et al., weights are drawn with variance
``gain / fan_in`` so that activations keep unit scale through depth: `lecun_normal` (gain 1)
for tanh/sigmoid/linear units, `he_normal` (gain 2) for ReLU-like units, which zero half their
inputs. ``fan_in`` is the product of all but the last dim, so one rule serves dense ``(I, O)``
and convolution ``(KH, KW, C, O)`` kernels alike. Biases start at `zeros`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "Initializer",
    "he_normal",
    "lecun_normal",
    "normal",
    "ones",
    "variance_scaling",
    "zeros",
]

Initializer = Callable[..., jax.Array]
"""``init(key, shape, dtype) -> array``."""


def variance_scaling(gain: float) -> Initializer:
    """Normal weights with variance ``gain / fan_in``, ``fan_in = prod(shape[:-1])``."""
    if not gain > 0:
        raise ValueError(f"variance_scaling: gain must be > 0, got {gain!r}")

    def init(key, shape, dtype=jnp.float32):
        std = math.sqrt(gain / max(math.prod(shape[:-1]), 1))
        return std * jax.random.normal(key, shape, dtype)

    return init


def he_normal() -> Initializer:
    """Variance ``2 / fan_in`` (He et al.): for ReLU-like units."""
    return variance_scaling(2.0)


def lecun_normal() -> Initializer:
    """Variance ``1 / fan_in`` (LeCun et al.): for tanh, sigmoid and linear units."""
    return variance_scaling(1.0)


def normal(std: float) -> Initializer:
    """N(0, std²) whatever the shape (GPT-2 uses std 0.02)."""
    if not std >= 0:
        raise ValueError(f"normal: std must be >= 0, got {std!r}")

    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)

    return init


def zeros(key, shape, dtype=jnp.float32):
    """All zeros (the key is unused)."""
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype=jnp.float32):
    """All ones (the key is unused)."""
    return jnp.ones(shape, dtype)


def check(init, where: str) -> Initializer:
    """``init`` if callable, else a ``TypeError`` naming ``where`` (strings are no longer
    accepted: pass ``nn.init.he_normal()``, ``nn.init.lecun_normal()``, ...)."""
    if not callable(init):
        raise TypeError(
            f"{where} must be a callable init(key, shape, dtype), e.g. nn.init.he_normal(), "
            f"got {init!r}"
        )
    return init
