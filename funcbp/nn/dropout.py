"""Dropout layer: inverted dropout in train mode, identity in eval mode."""

from __future__ import annotations

from funcbp.nn.core import Layer, leaf
from funcbp.ops.dropout import dropout

__all__ = ["Dropout"]


def Dropout(rate: float) -> Layer:
    """Zero each activation with probability ``rate`` (the DROP probability) in train mode and
    scale the rest by 1/(1 − rate); identity in eval mode. Needs a PRNG key when training."""
    if not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        raise ValueError(f"Dropout: rate (the drop probability) must be in [0, 1), got {rate!r}")

    def init(key, input_shape, dtype):
        return input_shape, {}, {}

    def _active(train, key):
        if train and rate > 0 and key is None:
            raise ValueError("Dropout: training mode needs a PRNG key (pass key=...)")
        return train and rate > 0

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        if not _active(train, key):
            return x, state
        return dropout.path(source)(x, key, rate), state

    def forward(params, state, x, *, key=None, train=False):
        if not _active(train, key):
            return x, state, None
        y, res = dropout.fwd(x, key, rate)
        return y, state, res

    def backward(params, residuals, dy):
        if residuals is None:
            return {}, dy
        return {}, dropout.bwd(residuals, dy, rate)[0]

    return leaf(f"dropout{rate}", init, apply, forward, backward)
