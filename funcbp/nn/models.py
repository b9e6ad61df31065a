"""Ready models built from layers."""

from __future__ import annotations

from collections.abc import Sequence

from funcbp.nn import init as initializers
from funcbp.nn import layers as L
from funcbp.nn.combinators import serial
from funcbp.nn.conv import Conv2D, MaxPool2D
from funcbp.nn.core import Layer
from funcbp.nn.dropout import Dropout
from funcbp.nn.norm import BatchNorm

__all__ = ["mlp", "cnn", "ACTIVATIONS"]

# activation name -> (layer factory, matching weight init)
ACTIVATIONS = {
    "relu": (L.Relu, initializers.he_normal),
    "leaky_relu": (L.LeakyRelu, initializers.he_normal),
    "gelu": (L.Gelu, initializers.he_normal),
    "tanh": (L.Tanh, initializers.lecun_normal),
    "sigmoid": (L.Sigmoid, initializers.lecun_normal),
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
        raise ValueError(
            f"mlp: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
        )
    make_act, init = ACTIVATIONS[activation]
    layers = []
    for width in sizes[:-1]:
        layers += [L.Dense(width, init=init()), make_act()]
    layers.append(L.Dense(sizes[-1], init=initializers.lecun_normal()))
    return serial(*layers, name=f"mlp{'-'.join(map(str, sizes))}")


def cnn(
    n_classes: int, *, channels: Sequence[int] = (32, 64), hidden: int = 128, dropout: float = 0.25
) -> Layer:
    """A small CNN for little images (digits' 8×8×1): NHWC (N, H, W, C) -> (N, n_classes).

    Conv3×3(c1) → BatchNorm → ReLU → Conv3×3(c2) → ReLU → MaxPool2×2 → Flatten →
    Dense(hidden) → ReLU → Dropout → Dense(n_classes). Every layer has a hand VJP.
    """
    c1, c2 = channels
    return serial(
        Conv2D(c1, 3),
        BatchNorm(),
        L.Relu("input"),  # XLA recomputes x from what the batch norm keeps (RESULTS.md)
        Conv2D(c2, 3),
        L.Relu(),
        MaxPool2D(2),
        L.Flatten(),
        L.Dense(hidden),
        L.Relu(),
        Dropout(dropout),
        L.Dense(n_classes, init=initializers.lecun_normal()),
        name="cnn",
    )
