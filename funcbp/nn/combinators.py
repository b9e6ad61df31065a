"""Combinators: `serial` composes layers into a model."""

from __future__ import annotations

from funcbp import backprop
from funcbp.nn.core import Layer

__all__ = ["serial"]


def serial(*layers: Layer, name: str = "serial") -> Layer:
    """Compose layers in order. Params and state are tuples with one entry per layer.

    ``apply`` chains each layer's ``apply`` (either gradient path); ``forward``/``backward``
    are the explicit engine's pass over the chain (`funcbp.backprop`).
    """
    if not layers:
        raise ValueError("serial: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} is {type(layer).__name__}, not a Layer")

    def init(key, input_shape, dtype):
        params, state = [], []
        shape = tuple(input_shape)
        for layer, k in zip(layers, backprop.layer_keys(key, len(layers)), strict=True):
            shape, p, s = layer.init(k, shape, dtype)
            params.append(p)
            state.append(s)
        return shape, tuple(params), tuple(state)

    def apply(params, state, x, *, key=None, train=False, gradients="hand"):
        new_state = []
        keys = backprop.layer_keys(key, len(layers))
        for layer, p, s, k in zip(layers, params, state, keys, strict=True):
            x, s = layer.apply(p, s, x, key=k, train=train, gradients=gradients)
            new_state.append(s)
        return x, tuple(new_state)

    def forward(params, state, x, *, key=None, train=False):
        return backprop.serial_forward(layers, params, state, x, key=key, train=train)

    def backward(params, tape, dy):
        return backprop.serial_backward(layers, params, tape, dy)

    return Layer(name, init, apply, forward, backward, children=tuple(layers))
