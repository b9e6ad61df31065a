"""The explicit reverse pass: the classic derivation as code, with no autodiff machinery.

For a chain ``x_0 → f_1 → x_1 → … → f_n → x_n → loss``:

1. forward: run each layer's ``forward`` (the ops' ``fwd`` rules), storing its residuals — the
   layer's input, output and weights as the op chose to keep them (the *tape*);
2. loss: ``e = loss(x_n, y)``; seed the reverse pass with ``dE/dE = 1``;
3. backward: walk the layers in reverse, each ``backward`` (the ops' hand ``bwd``) turning
   ``dE/dx_n`` into ``dE/dx_{n-1}`` and ``dE/dW_n`` — every gradient is computed from the
   stored (pre-update) weights;
4. only then may an optimizer update all weights at once.

No `jax.grad`, `jax.vjp` or `jax.custom_vjp` is involved: the result is tested equal to
`jax.grad` through the custom VJPs and to `jax.grad` of the references. Everything here is
jittable (the tape is a pytree of arrays plus static Python values).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from funcbp.ops import Op

__all__ = ["layer_keys", "serial_forward", "serial_backward", "loss_and_grad"]


def layer_keys(key, n):
    """One independent key per layer (``None`` for all when ``key`` is ``None``)."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def serial_forward(layers: Sequence, params, state, x, *, key=None, train=False):
    """Forward through ``layers`` with each ``forward``; returns ``(y, new_state, tape)``.

    ``params`` and ``state`` are tuples with one entry per layer; ``tape`` holds each layer's
    residuals in order.
    """
    tape, new_state = [], []
    for layer, p, s, k in zip(layers, params, state, layer_keys(key, len(layers)), strict=True):
        x, s, residuals = layer.forward(p, s, x, key=k, train=train)
        tape.append(residuals)
        new_state.append(s)
    return x, tuple(new_state), tuple(tape)


def serial_backward(layers: Sequence, params, tape, dy):
    """Walk the layers in reverse: ``dE/dx_n → (dE/dW_n, dE/dx_{n-1})``.

    Returns ``(grads, dx)``: ``grads`` has the structure of ``params``; ``dx`` is ``dE/dx_0``.
    """
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        grads[i], dy = layers[i].backward(params[i], tape[i], dy)
    return tuple(grads), dy


def loss_and_grad(model, loss_op: Op, params, state, x, y, *, key=None, train=True):
    """``((loss, (new_state, logits)), grads)`` by the explicit reverse pass.

    The same contract as ``jax.value_and_grad(loss_fn, has_aux=True)``: the loss is
    ``loss_op(model(x), y)`` and ``grads`` has the structure of ``params``.
    """
    logits, new_state, residuals = model.forward(params, state, x, key=key, train=train)
    loss, loss_residuals = loss_op.fwd(logits, y)
    seed = jnp.ones((), loss.dtype)  # dE/dE = 1
    dlogits = loss_op.bwd(loss_residuals, seed)[0]
    grads, _ = model.backward(params, residuals, dlogits)
    return (loss, (new_state, logits)), grads
