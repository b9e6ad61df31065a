"""Normalisation layers: LayerNorm and RMSNorm (stateless) and BatchNorm (running statistics as
state)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcbp.nn.core import Layer, leaf, op_layer
from funcbp.ops.norm import batch_norm, batch_norm_inference, batch_norm_stats, layer_norm
from funcbp.ops.rms_norm import rms_norm

__all__ = ["LayerNorm", "RMSNorm", "BatchNorm"]


def LayerNorm(eps: float = 1e-5) -> Layer:
    """Normalise over the last axis, then scale γ and shift β: params ``{"gamma", "beta"}``."""

    def init_fn(key, input_shape, dtype):
        d = input_shape[-1]
        return input_shape, {"gamma": jnp.ones((d,), dtype), "beta": jnp.zeros((d,), dtype)}

    return op_layer("layer_norm", layer_norm, init_fn, ("gamma", "beta"), {"eps": eps})


def RMSNorm(eps: float = 1e-6) -> Layer:
    """Divide each row by its root mean square over the last axis, then scale by γ (no centring,
    no β; Llama's norm): params ``{"gamma": (D,)}``, γ = 1 at init. Backward by
    `funcbp.ops.rms_norm`."""

    def init_fn(key, input_shape, dtype):
        return input_shape, {"gamma": jnp.ones(input_shape[-1:], dtype)}

    return op_layer("rms_norm", rms_norm, init_fn, ("gamma",), {"eps": eps})


def BatchNorm(momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch normalisation over every axis but the last (channels).

    Train mode normalises with the batch statistics (`funcbp.ops.batch_norm`) and updates the
    running statistics in ``state``: ``m ← momentum·m + (1 − momentum)·μ_batch`` and likewise
    ``v`` with the *unbiased* batch variance (n/(n−1)·σ², as PyTorch does). Eval mode uses the
    running statistics (`funcbp.ops.batch_norm_inference`, also a hand VJP). Params
    ``{"gamma", "beta"}``; state ``{"mean", "var"}``.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"BatchNorm: momentum must be in [0, 1), got {momentum!r}")
    return _batch_norm(momentum, eps, None)


def _batch_norm(momentum, eps, compute_dtype) -> Layer:
    """`BatchNorm` whose ops compute in ``compute_dtype`` (`funcbp.ops.Op.cast`; ``None``: the
    input's dtype). The running statistics stay in the state's dtype."""
    train_op, eval_op = batch_norm.cast(compute_dtype), batch_norm_inference.cast(compute_dtype)

    def init(key, input_shape, dtype):
        c = input_shape[-1]
        params = {"gamma": jnp.ones((c,), dtype), "beta": jnp.zeros((c,), dtype)}
        state = {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}
        return input_shape, params, state

    def _update(state, x):
        mean, var = batch_norm_stats(jax.lax.stop_gradient(x).astype(state["mean"].dtype))
        n = x.size // x.shape[-1]
        unbiased = var * (n / max(n - 1, 1))
        return {
            "mean": momentum * state["mean"] + (1 - momentum) * mean,
            "var": momentum * state["var"] + (1 - momentum) * unbiased,
        }

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        if train:
            y = train_op.path(source)(x, params["gamma"], params["beta"], eps=eps)
            return y, _update(state, x)
        y = eval_op.path(source)(
            x, state["mean"], state["var"], params["gamma"], params["beta"], eps=eps
        )
        return y, state

    def forward(params, state, x, *, key=None, train=False):
        if train:
            y, res = train_op.fwd(x, params["gamma"], params["beta"], eps=eps)
            return y, _update(state, x), (True, res)
        y, res = eval_op.fwd(
            x, state["mean"], state["var"], params["gamma"], params["beta"], eps=eps
        )
        return y, state, (False, res)

    def backward(params, residuals, dy):
        train, res = residuals
        if train:
            dx, dgamma, dbeta = train_op.bwd(res, dy, eps=eps)
        else:  # the running statistics are state, not trained: their cotangents are dropped
            dx, _, _, dgamma, dbeta = eval_op.bwd(res, dy, eps=eps)
        dtype = params["gamma"].dtype  # the sums come in their accumulation dtype
        return {"gamma": dgamma.astype(dtype), "beta": dbeta.astype(dtype)}, dx

    cast = lambda dtype: _batch_norm(momentum, eps, dtype)
    return leaf("batch_norm", init, apply, forward, backward, cast=cast)
