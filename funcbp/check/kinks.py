"""Inputs at a kink: where a piecewise-linear op has no derivative, hand and autodiff may both
be right and still differ (ReLU at 0: the hand rule passes 0, `jax.grad` of ``max(x, 0)``
passes 1/2). A model check that fails ONLY because of such points is a false failure: count
them (`kinks`) and check again on an input nudged off them (`nudge`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcbp.backprop import path_str, run_layer

__all__ = ["KINKED", "kinks", "nudge"]

KINKED = ("relu", "leaky_relu")
"""Ops whose derivative jumps at x = 0."""


class _Count:
    def __init__(self):
        self.counts = {}

    def enter(self, path, layer, params, x):
        if layer.op is not None and layer.op.name in KINKED:
            self.counts[f"{path_str(path)} ({layer.op.name})"] = jnp.sum(x == 0)
        return params, x

    def leave(self, path, layer, y):
        return y

    def backward(self, *args):
        pass


def kinks(model, params, state, x, *, key=None, train: bool = True) -> dict[str, int]:
    """How many inputs of each kinked leaf (`KINKED`) are exactly at the kink, by leaf path
    (only the leaves with any)."""

    def count(p, s, a):
        tap = _Count()
        run_layer(model, p, s, a, key=key, train=train, source="autodiff", tap=tap)
        return tap.counts

    counts = jax.jit(count)(params, state, jnp.asarray(x))
    return {k: int(v) for k, v in counts.items() if int(v)}


def nudge(x, key, scale: float = 1e-3):
    """``x + scale·N(0, 1)`` for float inputs (integer inputs cannot move: returned as is)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x + scale * jax.random.normal(key, x.shape, x.dtype)
