"""Parametrised layers (stax-style): Dense, Project (bias-free, PyTorch layout), activations,
SwiGLU, Flatten.

Weights come from initialiser callables (`funcbp.nn.init`): He for ReLU-like units, LeCun for
tanh/sigmoid/linear ones; biases start at zero. Every init takes an explicit PRNG key and dtype.
"""

from __future__ import annotations

import math

import jax

from funcbp import ops
from funcbp.nn import init as initializers
from funcbp.nn.core import Layer, leaf, op_layer
from funcbp.ops.activations import check_residual

__all__ = [
    "Dense",
    "Flatten",
    "Gelu",
    "LeakyRelu",
    "Project",
    "Relu",
    "Sigmoid",
    "SwiGLU",
    "Tanh",
]


def Dense(
    out: int, *, init: initializers.Initializer | None = None, bias_init=initializers.zeros
) -> Layer:
    """Fully connected layer ``y = x W + b`` on the last axis: (..., I) -> (..., out).

    Params ``{"w": (I, out), "b": (out,)}``; ``init`` draws ``w`` (default
    ``nn.init.he_normal()``), ``bias_init`` draws ``b`` (zeros); backward by
    `funcbp.ops.linear`.
    """
    if isinstance(out, bool) or not isinstance(out, int) or out < 1:
        raise ValueError(f"Dense: out must be a positive int, got {out!r}")
    init = initializers.check(init or initializers.he_normal(), "Dense: init")
    bias_init = initializers.check(bias_init, "Dense: bias_init")

    def init_fn(key, input_shape, dtype):
        if len(input_shape) < 1:
            raise ValueError(f"Dense: input must have a feature axis, got shape {input_shape}")
        k_w, k_b = key, jax.random.fold_in(key, 1)
        params = {"w": init(k_w, (input_shape[-1], out), dtype), "b": bias_init(k_b, (out,), dtype)}
        return (*input_shape[:-1], out), params

    return op_layer(f"dense{out}", ops.linear, init_fn, ("w", "b"))


def Project(out: int, *, init: initializers.Initializer | None = None) -> Layer:
    """Bias-free linear map ``y = x Wᵀ`` on the last axis: (..., I) -> (..., out).

    Params ``{"w": (out, I)}``: the weight in the (out, in) layout of ``torch.nn.Linear`` and of
    Hugging Face checkpoints, so they load without a transpose. The map is exactly
    `funcbp.ops.unembed`'s (``logits = x Eᵀ`` with E (V, D)), whose hand VJP it uses:
    ``dx = dy W``, ``dW = Σ_batch dyᵀ x``. ``init`` draws ``w`` (default N(0, 0.02²)).
    """
    if isinstance(out, bool) or not isinstance(out, int) or out < 1:
        raise ValueError(f"Project: out must be a positive int, got {out!r}")
    init = initializers.check(init or initializers.normal(0.02), "Project: init")

    def init_fn(key, input_shape, dtype):
        if len(input_shape) < 1:
            raise ValueError(f"Project: input must have a feature axis, got shape {input_shape}")
        return (*input_shape[:-1], out), {"w": init(key, (out, input_shape[-1]), dtype)}

    return op_layer(f"project{out}", ops.unembed, init_fn, ("w",))


def SwiGLU() -> Layer:
    """``(a, b) -> silu(a) ⊙ b``: the gate of a Llama MLP (a = gate projection, b = up
    projection, e.g. from ``parallel(gate=Project(h), up=Project(h))``); no params; backward
    by `funcbp.ops.swiglu`, ``dx = (da, db)``."""

    def init_fn(key, input_shape, dtype):
        a, b = input_shape
        if tuple(a) != tuple(b):
            raise ValueError(f"SwiGLU: the gate {tuple(a)} and the up part {tuple(b)} differ")
        return tuple(a), {}

    return op_layer("swiglu", ops.swiglu, init_fn, inputs=2)


def _same_shape(key, input_shape, dtype):
    return input_shape, {}


def Relu(residual: str = "output") -> Layer:
    """Elementwise max(x, 0); no params. ``residual``: what the backward keeps (`funcbp.ops.relu`:
    ``"output"`` when the next layer keeps y, ``"input"`` when the previous one keeps x, or
    ``"bits"``)."""
    check_residual(residual)
    return op_layer("relu", ops.relu, _same_shape, static={"residual": residual})


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

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        return x.reshape(x.shape[0], -1), state

    def forward(params, state, x, *, key=None, train=False):
        return x.reshape(x.shape[0], -1), state, x.shape

    def backward(params, shape, dy):
        return {}, dy.reshape(shape)

    return leaf("flatten", init, apply, forward, backward)
