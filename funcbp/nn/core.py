"""The layer protocol: pure ``(init, apply)`` pairs plus the hooks of the explicit reverse pass.

A `Layer` is four pure functions and a name:

* ``init(key, input_shape, dtype) -> (output_shape, params, state)``
  ``input_shape`` excludes the batch dims; ``params`` and ``state`` are plain pytrees (dicts of
  arrays, ``{}`` when empty). ``state`` holds what is not trained by gradients (batch-norm
  running statistics).
* ``apply(params, state, x, *, key, train, gradients) -> (y, state)``
  the forward with either gradient path: ``gradients="hand"`` calls the ops' custom VJPs,
  ``"autodiff"`` their plain references (so `jax.grad` differentiates the references). ``key``
  is a PRNG key (dropout) or ``None``; ``train`` selects training behaviour (dropout on, batch
  statistics) vs evaluation.
* ``forward(params, state, x, *, key, train) -> (y, state, residuals)``
  the forward of the explicit engine (`funcbp.backprop`): the ops' ``fwd`` rules, keeping
  their residuals.
* ``backward(params, residuals, dy) -> (dparams, dx)``
  the ops' hand ``bwd`` rules called directly: no `jax.grad`, `jax.vjp` or custom_vjp
  machinery. ``dx`` is ``None`` when the input is not differentiable (integer ids).

Most layers are one op applied to the input and the layer's parameters; `op_layer` builds all
four functions from the op and a list of parameter names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from funcbp.ops import Op

__all__ = ["Layer", "GRADIENTS", "check_gradients", "op_layer"]

GRADIENTS = ("hand", "autodiff")


def check_gradients(gradients: str) -> str:
    """Validate the gradient-path switch: ``"hand"`` or ``"autodiff"``."""
    if gradients not in GRADIENTS:
        raise ValueError(f"gradients must be one of {GRADIENTS}, got {gradients!r}")
    return gradients


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer: ``init``, ``apply``, and the explicit engine's ``forward``/``backward``."""

    name: str
    init: Callable[..., tuple[Any, Any, Any]]
    apply: Callable[..., tuple[Any, Any]]
    forward: Callable[..., tuple[Any, Any, Any]]
    backward: Callable[..., tuple[Any, Any]]
    children: tuple[Layer, ...] = ()  # the sub-layers of a combinator, in order

    def __repr__(self) -> str:
        return f"Layer({self.name})"


def op_layer(
    name: str,
    op: Op,
    init: Callable[..., tuple[Any, Any]],
    param_names: Sequence[str] = (),
    static: dict | None = None,
    *,
    remat: bool = False,
) -> Layer:
    """A stateless layer computing ``op(x, *params[names], **static)``.

    ``init(key, input_shape, dtype) -> (output_shape, params)``. The op's first array is the
    layer input; the remaining arrays are ``params[n]`` for ``n`` in ``param_names``.
    ``remat=True``: save only the op's inputs and recompute its residuals on the backward pass
    (`Op.remat` on the hand path and in the explicit engine, `jax.checkpoint` of the reference
    on the autodiff path); same values and gradients.
    """
    engine_op = op.remat if remat else op  # what the explicit engine's fwd/bwd run
    # Bind once with placeholders: static config with the op's defaults applied, frozen.
    _, frozen = op.split((None,) * op.n_arrays, dict(static or {}))
    static = dict(frozen)
    names = tuple(param_names)

    def _arrays(params, x):
        return (x, *(params[n] for n in names))

    def init_fn(key, input_shape, dtype):
        out_shape, params = init(key, tuple(input_shape), dtype)
        return out_shape, params, {}

    def apply(params, state, x, *, key=None, train=False, gradients="hand"):
        fn = op.path(check_gradients(gradients), remat=remat)
        return fn(*_arrays(params, x), **static), state

    def forward(params, state, x, *, key=None, train=False):
        arrays = _arrays(params, x)
        if op.validate is not None:
            op.validate(*arrays, **static)
        y, residuals = engine_op.fwd(*arrays, **static)
        return y, state, residuals

    def backward(params, residuals, dy):
        grads = tuple(engine_op.bwd(residuals, dy, **static))
        return dict(zip(names, grads[1:], strict=True)), grads[0]

    return Layer(name, init_fn, apply, forward, backward)
