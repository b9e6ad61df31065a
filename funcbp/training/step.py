"""Training: one jitted step that composes forward, hand VJPs and an optax update.

Every gradient of a step is computed from the pre-update weights, then all weights are updated
at once (the optimizers: `funcbp.training.optim`). The step guards against NaN/Inf
(`funcbp.training.guard`): a bad step changes nothing and says which tensor was bad.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from funcbp import backprop, ops
from funcbp.backprop import check_source, loss_inputs
from funcbp.nn.core import Layer
from funcbp.ops import Op
from funcbp.training.guard import guard
from funcbp.training.loss_scale import current_scale

__all__ = [
    "accuracy",
    "apply_loss",
    "make_eval_fn",
    "make_loss_fn",
    "make_multi_step",
    "make_train_step",
]


def apply_loss(loss_path, out, y):
    """``loss(out, y)``; a model whose output is a tuple (a head that hands its input and its
    table to a fused loss, e.g. `funcbp.ops.unembed_cross_entropy`) gives ``loss(*out, y)``,
    its float arrays in one dtype (`funcbp.backprop.loss_inputs`)."""
    return loss_path(*loss_inputs(out), y)


def make_loss_fn(model: Layer, loss: Op = ops.softmax_cross_entropy, *, source="hand"):
    """``loss_fn(params, state, x, y, key, train) -> (loss, (new_state, outputs))`` with the
    model and the loss on ``source``'s path (``"hand"`` or ``"autodiff"`` for `jax.grad`)."""
    loss_path = loss.path(check_source(source, "make_loss_fn: source"))

    def loss_fn(params, state, x, y, key=None, train=True):
        out, new_state = model.apply(params, state, x, key=key, train=train, source=source)
        return apply_loss(loss_path, out, y), (new_state, out)

    return loss_fn


def accuracy(out, y):
    """Mean ``argmax(out) == y`` for integer labels (NaN for other targets, and for a tuple
    output, whose logits are never formed)."""
    if isinstance(out, tuple):
        return jnp.array(jnp.nan, jnp.float32)
    if jnp.issubdtype(y.dtype, jnp.integer) and out.ndim == y.ndim + 1:
        return jnp.mean(jnp.argmax(out, axis=-1) == y)
    return jnp.array(jnp.nan, jnp.float32)


def _gradient(model, loss, source):
    """``(params, state, x, y, key, scale) -> ((loss, (new_state, out)), grads)`` for
    ``source``: the gradient of ``scale · loss`` (``scale=None``: of the loss itself)."""
    if source == "explicit":
        return lambda p, s, x, y, k, scale: backprop.loss_and_grad(
            model, loss, p, s, x, y, key=k, seed=1.0 if scale is None else scale
        )
    loss_fn = make_loss_fn(model, loss, source=source)
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def scaled_fn(p, s, x, y, k, scale):
        value, aux = loss_fn(p, s, x, y, k, True)
        return value * scale.astype(value.dtype), (value, aux)

    scaled = jax.value_and_grad(scaled_fn, has_aux=True)

    def gradient(p, s, x, y, k, scale):
        if scale is None:
            return value_and_grad(p, s, x, y, k, True)
        (_, (value, aux)), grads = scaled(p, s, x, y, k, scale)
        return (value, aux), grads

    return gradient


def _unscale(grads, scale):
    """``grads / scale`` (exact: the scale is a power of two)."""
    return grads if scale is None else jax.tree.map(lambda g: g / scale.astype(g.dtype), grads)


def _skipped(finite, opt_state, scale):
    """A loss-scaled step whose only non-finite tensors are gradients, while the scale could
    still be lowered: `funcbp.training.loss_scale` skipped it (not a failure)."""
    if scale is None:
        return None
    front = finite[0] & finite[1]  # the input batch and the loss
    return front & ~jnp.all(finite[2:-1]) & (scale > opt_state.minimum)


def make_train_step(
    model: Layer,
    optimizer: optax.GradientTransformation,
    *,
    loss: Op = ops.softmax_cross_entropy,
    source: str = "hand",
    jit: bool = True,
) -> Callable[..., tuple[Any, Any, Any, dict]]:
    """One training step ``(params, opt_state, state, batch, key) -> (params, opt_state, state,
    metrics)``, jitted by default.

    ``batch`` is ``(x, y)``; ``key`` a PRNG key for stochastic layers (or ``None``).
    ``source`` (`funcbp.backprop.SOURCES`): ``"hand"`` (`jax.grad` through the ops' custom
    VJPs), ``"explicit"`` (the explicit reverse pass: the layers' hand ``bwd`` called in reverse
    order, no autodiff) or ``"autodiff"`` (`jax.grad` of the references). ``metrics``:
    ``loss``, ``accuracy`` (NaN for non-integer labels), ``grad_norm``, and ``finite``: a bool
    vector, one flag per tensor named by `funcbp.training.finite_flag_names`, all true when the
    update was applied. With a loss-scaling optimizer (`funcbp.training.loss_scale`, float16)
    the loss is scaled by the state's S, the gradients unscaled, and the metrics add
    ``loss_scale`` (S of this step) and ``skipped``: true when only gradients were non-finite
    and S could still be halved — a skipped step, not a failure.
    """
    gradient = _gradient(model, loss, check_source(source, "make_train_step: source"))

    def step(params, opt_state, state, batch, key=None):
        x, y = batch
        scale = current_scale(opt_state)  # None unless the optimizer scales the loss
        (value, (new_state, out)), grads = gradient(params, state, x, y, key, scale)
        grads = _unscale(grads, scale)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite, grad_norm = guard(x, value, grads, new_params)
        ok = jnp.all(finite)
        keep = lambda new, old, ok=ok: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        metrics = {
            "loss": value,
            "accuracy": accuracy(out, y),
            "grad_norm": grad_norm,
            "finite": finite,
        }
        skipped = _skipped(finite, opt_state, scale)
        if skipped is not None:  # the lowered scale is kept; params and state are not updated
            metrics |= {"skipped": skipped, "loss_scale": scale}
            new_opt_state = keep(new_opt_state, opt_state, ok | skipped)
        else:
            new_opt_state = keep(new_opt_state, opt_state)
        return keep(new_params, params), new_opt_state, keep(new_state, state), metrics

    return jax.jit(step) if jit else step


def make_multi_step(step: Callable, *, jit: bool = True) -> Callable:
    """Fuse k steps into one call: ``lax.scan`` of ``step`` over stacked batches and keys.

    ``multi(params, opt_state, state, (xs, ys), keys)`` with ``xs`` of shape ``(k, B, ...)``
    returns the same as k sequential calls, with metrics stacked along a leading k axis. Small
    models are dispatch-bound; one call per k steps removes k−1 dispatches (speed-ups in
    benchmarks/RESULTS.md). ``step`` should be the un-jitted step
    (``make_train_step(..., jit=False)``).
    """

    def multi(params, opt_state, state, batches, keys):
        def body(carry, inputs):
            p, o, s = carry
            batch, k = inputs
            p, o, s, m = step(p, o, s, batch, k)
            return (p, o, s), m

        (params, opt_state, state), metrics = jax.lax.scan(
            body, (params, opt_state, state), (batches, keys)
        )
        return params, opt_state, state, metrics

    return jax.jit(multi) if jit else multi


def make_eval_fn(model: Layer, loss: Op = ops.softmax_cross_entropy, *, jit: bool = True):
    """``eval_fn(params, state, x, y) -> {"loss", "accuracy"}`` in evaluation mode."""

    def eval_fn(params, state, x, y):
        out, _ = model.apply(params, state, x, key=None, train=False, source="hand")
        return {"loss": apply_loss(loss, out, y), "accuracy": accuracy(out, y)}

    return jax.jit(eval_fn) if jit else eval_fn
