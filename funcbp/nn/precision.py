"""Mixed precision as a rewrite of a built model: every op computes in a lower dtype, the params
stay what they are (float32 masters), the model's output comes back in float32.

`compute_in(model, jnp.bfloat16)` walks the layer tree: each combinator is rebuilt over its
rewritten children (`Layer.rebuild`), each leaf that computes with ops is replaced by the same
leaf computing in bfloat16 (`Layer.cast`: `op_layer`, `BatchNorm`, `PositionEmbedding`), and
leaves without ops (reshapes, head split/merge, dropout) are kept: they compute in their inputs'
dtype. No model composition changes, and the params tree is the same.

Inside each op (`funcbp.ops.Op.cast`) the float32 inputs are cast to bfloat16 *inside* the
custom_vjp: the forward, its residuals and the activations between layers are bfloat16; each
``bwd`` sums its parameter gradients over the batch in float32 (`preferred_element_type`) and
returns them in the parameter's dtype, so a float32 master gets a float32 gradient that was never
rounded to bfloat16 and, under data parallelism, is all-reduced once, in float32.
"""

from __future__ import annotations

import jax.numpy as jnp

from funcbp.backprop import backward_layer, check_source, run_layer
from funcbp.nn.core import Layer

__all__ = ["cast_layers", "compute_in"]


def cast_layers(layer: Layer, dtype) -> Layer:
    """``layer`` with every leaf that has a ``cast`` computing in ``dtype`` (see module doc).

    Raises ``TypeError`` for a combinator that cannot be rebuilt (no ``rebuild``)."""
    if layer.children:
        if layer.rebuild is None:
            raise TypeError(
                f"compute_in: the {layer.kind} combinator {layer.name} has no rebuild, so its "
                "children cannot be cast (give its Layer a rebuild function)"
            )
        return layer.rebuild(tuple((n, cast_layers(c, dtype)) for n, c in layer.children))
    return layer.cast(dtype) if layer.cast is not None else layer


def _cast_float(x, dtype):
    if x is None or not jnp.issubdtype(getattr(x, "dtype", jnp.int32), jnp.floating):
        return x
    return x.astype(dtype)


def compute_in(model: Layer, dtype, *, output_dtype=jnp.float32) -> Layer:
    """``model`` computing in ``dtype`` (e.g. ``jnp.bfloat16``), its float output cast to
    ``output_dtype`` (float32: the loss is formed in float32). ``dtype=None`` returns ``model``.

    Same params, state and PRNG use as ``model``; ``apply``/``forward``/``backward`` for every
    source. The explicit engine's backward casts the incoming float32 ``dy`` back to ``dtype``,
    as the hand path's cast does under `jax.grad`.
    """
    if dtype is None:
        return model
    dtype, out = jnp.dtype(dtype), jnp.dtype(output_dtype)
    inner = cast_layers(model, dtype)

    def apply(params, state, x, *, key=None, train=False, source="hand", tap=None, path=()):
        check_source(source, "compute_in: source")
        y, new_state, _ = run_layer(
            inner, params, state, x, key=key, train=train, source=source, tap=tap, path=path
        )
        return _cast_float(y, out), new_state

    def forward(params, state, x, *, key=None, train=False, tap=None, path=()):
        y, new_state, tape = run_layer(
            inner, params, state, x, key=key, train=train, source="explicit", tap=tap, path=path
        )
        return _cast_float(y, out), new_state, tape

    def backward(params, tape, dy, *, tap=None, path=()):
        return backward_layer(inner, params, tape, _cast_float(dy, dtype), tap=tap, path=path)

    name = f"{model.name}@{dtype.name}"
    return Layer(name, inner.init, apply, forward, backward, ((None, inner),), kind="precision",
                 rebuild=lambda new: compute_in(new[0][1], dtype, output_dtype=out))  # fmt: skip
