"""Convolution and pooling layers (NHWC)."""

from __future__ import annotations

import jax

from funcbp.nn import init as initializers
from funcbp.nn.core import Layer, op_layer
from funcbp.nn.shapes import infer_shape
from funcbp.ops.conv import conv2d
from funcbp.ops.pool import avg_pool2d, max_pool2d

__all__ = ["Conv2D", "MaxPool2D", "AvgPool2D"]


def _pair(v, what):
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(k, int) and k >= 1 for k in pair):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
    return pair


def Conv2D(
    out_channels: int, kernel=3, *, stride=1, padding="SAME", init=None, bias_init=None
) -> Layer:
    """2-D convolution: (N, H, W, C) -> (N, H', W', out_channels).

    Params ``{"w": (KH, KW, C, out_channels), "b": (out_channels,)}``; ``init`` draws ``w``
    (default ``nn.init.he_normal()``, fan_in = KH·KW·C), ``bias_init`` draws ``b`` (zeros).
    Backward by `funcbp.ops.conv2d` (transposed convolution for dX, correlation of X with dY for
    dW; run as im2col GEMMs or `lax` convolutions by a size rule).
    """
    kh, kw = _pair(kernel, "Conv2D: kernel")
    if not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"Conv2D: out_channels must be a positive int, got {out_channels!r}")
    init = initializers.check(init or initializers.he_normal(), "Conv2D: init")
    bias_init = initializers.check(bias_init or initializers.zeros, "Conv2D: bias_init")
    static = {"stride": stride, "padding": padding}

    def init_fn(key, input_shape, dtype):
        if len(input_shape) != 3:
            raise ValueError(f"Conv2D: input must be (H, W, C) per example, got {input_shape}")
        w = init(key, (kh, kw, input_shape[-1], out_channels), dtype)
        b = bias_init(jax.random.fold_in(key, 1), (out_channels,), dtype)
        shape = infer_shape(
            lambda x, w, b: conv2d.reference(x, w, b, **static), input_shape, dtype, w, b
        )
        return shape, {"w": w, "b": b}

    return op_layer(f"conv{out_channels}", conv2d, init_fn, ("w", "b"), static)


def _pool(name, op, window, stride):
    static = {"window": window, "stride": stride}

    def init_fn(key, input_shape, dtype):
        if len(input_shape) != 3:
            raise ValueError(f"{name}: input must be (H, W, C) per example, got {input_shape}")
        return infer_shape(lambda x: op(x, **static), input_shape, dtype), {}

    return op_layer(name, op, init_fn, (), static)


def MaxPool2D(window=2, stride=2) -> Layer:
    """Max pooling, "VALID": the gradient goes to each window's arg-max."""
    return _pool("max_pool", max_pool2d, window, stride)


def AvgPool2D(window=2, stride=2) -> Layer:
    """Average pooling, "VALID": the gradient is spread evenly over each window."""
    return _pool("avg_pool", avg_pool2d, window, stride)
