"""Ready models built from layers."""

from __future__ import annotations

from collections.abc import Sequence

from funcbp.nn import layers as L
from funcbp.nn.combinators import serial
from funcbp.nn.core import Layer

__all__ = ["mlp", "ACTIVATIONS"]

# activation name -> (layer factory, matching weight init)
ACTIVATIONS = {
    "relu": (L.Relu, "he"),
    "leaky_relu": (L.LeakyRelu, "he"),
    "gelu": (L.Gelu, "he"),
    "tanh": (L.Tanh, "lecun"),
    "sigmoid": (L.Sigmoid, "lecun"),
}


def mlp(sizes: Sequence[int], *, activation: str = "relu") -> Layer:
    """Multi-layer perceptron: Dense → activation → … → Dense (no activation on the output).

    ``sizes`` are the output widths of each Dense layer, e.g. ``[128, 128, 10]``; the input
    width comes from ``init``'s input shape. Hidden layers use the init that matches the
    activation (He for ReLU-like, LeCun for tanh/sigmoid); the output layer uses LeCun.
    """
    sizes = list(sizes)
    if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
        raise ValueError(f"mlp: sizes must be a non-empty list of positive ints, got {sizes!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    make_act, init = ACTIVATIONS[activation]
    layers = []
    for width in sizes[:-1]:
        layers += [L.Dense(width, init=init), make_act()]
    layers.append(L.Dense(sizes[-1], init="lecun"))
    return serial(*layers, name=f"mlp{'-'.join(map(str, sizes))}")
