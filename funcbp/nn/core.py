"""The layer protocol: pure ``(init, apply)`` pairs plus the hooks of the explicit reverse pass.

A `Layer` is four pure functions and a name:

* ``init(key, input_shape, dtype) -> (output_shape, params, state)``
  ``input_shape`` excludes the batch dims; ``params`` and ``state`` are plain pytrees (dicts of
  arrays, ``{}`` when empty). ``state`` holds what is not trained by gradients (batch-norm
  running statistics).
* ``apply(params, state, x, *, key=None, train=False, source="hand") -> (y, state)``
  the forward, for one gradient source (`funcbp.backprop.SOURCES`): ``"hand"`` calls the ops'
  custom VJPs, ``"autodiff"`` their plain references (so `jax.grad` differentiates the
  references), ``"explicit"`` the ops' ``fwd`` rules (the explicit engine's values). ``key`` is
  a PRNG key (dropout) or ``None``; ``train`` selects training behaviour (dropout on, batch
  statistics) vs evaluation.
* ``forward(params, state, x, *, key=None, train=False) -> (y, state, residuals)``
  the forward of the explicit engine (`funcbp.backprop`): the ops' ``fwd`` rules, keeping
  their residuals.
* ``backward(params, residuals, dy) -> (dparams, dx)``
  the ops' hand ``bwd`` rules called directly: no `jax.grad`, `jax.vjp` or custom_vjp
  machinery. ``dx`` is ``None`` when the input is not differentiable (integer ids).

A *leaf* computes (built with `leaf`, most often with `op_layer`: one op applied to the input
and the layer's parameters). A *combinator* (`funcbp.nn.combinators`) composes children: its
``children`` are ``(name, layer)`` pairs (``name`` is the child's key in the params tree, or
``None`` when the child shares the combinator's params), and its ``apply``/``forward``/
``backward`` also take the walk's ``tap`` and ``path`` keywords (`funcbp.backprop.walk`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from funcbp.backprop import check_source
from funcbp.ops import Op

__all__ = ["Layer", "leaf", "op_layer"]


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer: ``init``, ``apply``, and the explicit engine's ``forward``/``backward``.

    ``children``: ``(name, layer)`` pairs of a combinator (empty for a leaf); ``kind`` says
    which combinator (``"leaf"``, ``"serial"``, ``"residual"``, ``"tie"``, ``"remat"``);
    ``op``: the op an `op_layer` applies. ``rebuild(children)``: the same combinator over other
    children (same names); ``cast(dtype)``: the same leaf computing in ``dtype`` (its ops cast
    their float inputs inside, `funcbp.ops.Op.cast`; params stay as they are). Both are
    ``None`` where they do not apply: `funcbp.nn.precision.compute_in` walks them.
    """

    name: str
    init: Callable[..., tuple[Any, Any, Any]]
    apply: Callable[..., tuple[Any, Any]]
    forward: Callable[..., tuple[Any, Any, Any]]
    backward: Callable[..., tuple[Any, Any]]
    children: tuple[tuple[Hashable | None, Layer], ...] = ()
    kind: str = "leaf"
    op: Op | None = None  # the op of an `op_layer` (checks look at it: kinks, mutants)
    rebuild: Callable[[tuple], Layer] | None = dataclasses.field(default=None, repr=False)
    cast: Callable[[Any], Layer] | None = dataclasses.field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"Layer({self.name})"


def leaf(name: str, init, apply, forward, backward, *, op: Op | None = None, cast=None) -> Layer:
    """A leaf `Layer` whose ``apply`` handles ``"hand"`` and ``"autodiff"``; ``"explicit"`` is
    answered by ``forward`` (its residuals dropped), so every layer takes every source.
    ``cast(dtype) -> Layer``: this leaf computing in ``dtype`` (`Layer.cast`)."""

    def apply_any(params, state, x, *, key=None, train=False, source="hand"):
        if check_source(source, f"{name}: source") == "explicit":
            y, new_state, _ = forward(params, state, x, key=key, train=train)
            return y, new_state
        return apply(params, state, x, key=key, train=train, source=source)

    return Layer(name, init, apply_any, forward, backward, op=op, cast=cast)


def op_layer(
    name: str,
    op: Op,
    init: Callable[..., tuple[Any, Any]],
    param_names: Sequence[str] = (),
    static: dict | None = None,
    *,
    remat: bool = False,
    inputs: int = 1,
    compute_dtype=None,
) -> Layer:
    """A stateless layer computing ``op(*x, *params[names], **static)``.

    ``init(key, input_shape, dtype) -> (output_shape, params)``. The op's first ``inputs``
    arrays are the layer input (``x`` itself, or a tuple of ``inputs`` arrays such as attention's
    ``(q, k, v)``); the remaining arrays are ``params[n]`` for ``n`` in ``param_names``; ``dx``
    has the structure of ``x``. ``remat=True``: save only the op's inputs and recompute its
    residuals on the backward pass (`Op.remat` on the hand path and in the explicit engine,
    `jax.checkpoint` of the reference on the autodiff path); same values and gradients.
    ``compute_dtype``: run the op in this dtype (`Op.cast`: float inputs and params are cast
    inside the op; parameter gradients come back in the params' dtype, accumulated in float32
    for half precision); ``None`` computes in the inputs' own dtype. The layer's ``cast``
    rebuilds it with another one.
    """
    remade = dict(param_names=param_names, static=static, remat=remat, inputs=inputs)
    cast = lambda dtype, base=op: op_layer(name, base, init, compute_dtype=dtype, **remade)
    op = op.cast(compute_dtype)
    engine_op = op.remat if remat else op  # what the explicit engine's fwd/bwd run
    # Bind once with placeholders: static config with the op's defaults applied, frozen.
    _, frozen = op.split((None,) * op.n_arrays, dict(static or {}))
    static = dict(frozen)
    names = tuple(param_names)

    def _arrays(params, x):
        xs = (x,) if inputs == 1 else tuple(x)
        if len(xs) != inputs:
            raise ValueError(f"{name}: expects a tuple of {inputs} inputs, got {len(xs)}")
        return (*xs, *(params[n] for n in names))

    def init_fn(key, input_shape, dtype):
        out_shape, params = init(key, input_shape, dtype)
        return out_shape, params, {}

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        return op.path(source, remat=remat)(*_arrays(params, x), **static), state

    def forward(params, state, x, *, key=None, train=False):
        arrays = _arrays(params, x)
        if op.validate is not None:
            op.validate(*arrays, **static)
        y, residuals = engine_op.fwd(*arrays, **static)
        return y, state, residuals

    def backward(params, residuals, dy):
        grads = tuple(engine_op.bwd(residuals, dy, **static))
        dx = grads[0] if inputs == 1 else grads[:inputs]
        dparams = {n: _like(g, params[n]) for n, g in zip(names, grads[inputs:], strict=True)}
        return dparams, dx

    return leaf(name, init_fn, apply, forward, backward, op=op, cast=cast)


def _like(grad, param):
    """A parameter's gradient in the parameter's dtype (a ``bwd`` may return it in its float32
    accumulation dtype, `funcbp.ops._precision`), as the hand path's custom_vjp does."""
    return grad if grad is None or grad.dtype == param.dtype else grad.astype(param.dtype)
