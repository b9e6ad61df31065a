"""Parametrised layers (stax-style): Dense, activations, Flatten.

Initialisation follows "Efficient BackProp" (LeCun et al.) and He et al.: weights are drawn
with variance ``gain / fan_in`` so that activations keep unit scale through depth — ``gain = 1``
("lecun") for tanh/sigmoid/linear, ``gain = 2`` ("he") for ReLU-like units, which zero half
their inputs. Biases start at zero. Every init takes an explicit PRNG key and dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcbp import ops
from funcbp.nn.core import Layer, op_layer

__all__ = [
    "Dense",
    "Flatten",
    "Gelu",
    "LeakyRelu",
    "Relu",
    "Sigmoid",
    "Tanh",
    "INITS",
    "variance_scaling",
]

INITS = {"lecun": 1.0, "he": 2.0}


def variance_scaling(key, shape, dtype, init: str = "he"):
    """Normal weights with variance ``INITS[init] / fan_in`` (fan_in = product of all but the
    last dim, so it serves dense (I, O) and conv (KH, KW, C, O) kernels alike)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {sorted(INITS)}, got {init!r}")
    fan_in = math.prod(shape[:-1])
    std = math.sqrt(INITS[init] / fan_in)
    return std * jax.random.normal(key, shape, dtype)


def Dense(out: int, *, init: str = "he") -> Layer:
    """Fully connected layer ``y = x W + b`` on the last axis: (..., I) -> (..., out).

    Params ``{"w": (I, out), "b": (out,)}``; backward by `funcbp.ops.linear`.
    """
    if not isinstance(out, int) or out < 1:
        raise ValueError(f"Dense: out must be a positive int, got {out!r}")
    if init not in INITS:
        raise ValueError(f"Dense: init must be one of {sorted(INITS)}, got {init!r}")

    def init_fn(key, input_shape, dtype):
        if len(input_shape) < 1:
            raise ValueError(f"Dense: input must have a feature axis, got shape {input_shape}")
        n_in = input_shape[-1]
        params = {
            "w": variance_scaling(key, (n_in, out), dtype, init),
            "b": jnp.zeros((out,), dtype),
        }
        return (*input_shape[:-1], out), params

    return op_layer(f"dense{out}", ops.linear, init_fn, ("w", "b"))


def _same_shape(key, input_shape, dtype):
    return input_shape, {}


def Relu() -> Layer:
    """Elementwise max(x, 0); no params."""
    return op_layer("relu", ops.relu, _same_shape)


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """Elementwise leaky ReLU with slope ``negative_slope`` for x < 0; no params."""
    return op_layer(
        "leaky_relu", ops.leaky_relu, _same_shape, static={"negative_slope": negative_slope}
    )


def Tanh() -> Layer:
    """Elementwise tanh; no params."""
    return op_layer("tanh", ops.tanh, _same_shape)


def Sigmoid() -> Layer:
    """Elementwise logistic sigmoid; no params."""
    return op_layer("sigmoid", ops.sigmoid, _same_shape)


def Gelu(approximate: bool = False) -> Layer:
    """Elementwise GELU (exact erf form, or the tanh form with ``approximate=True``)."""
    return op_layer("gelu", ops.gelu, _same_shape, static={"approximate": approximate})


def Flatten() -> Layer:
    """(N, d1, d2, ...) -> (N, d1·d2·...). Its backward reshapes dy back: no op needed."""

    def init(key, input_shape, dtype):
        return (math.prod(input_shape),), {}, {}

    def apply(params, state, x, *, key=None, train=False, gradients="hand"):
        return x.reshape(x.shape[0], -1), state

    def forward(params, state, x, *, key=None, train=False):
        return x.reshape(x.shape[0], -1), state, x.shape

    def backward(params, shape, dy):
        return {}, dy.reshape(shape)

    return Layer("flatten", init, apply, forward, backward)
