"""Whole-model gradient checks: every parameter's gradient from the hand VJPs (``"hand"``) and
from the explicit reverse pass (``"explicit"``) against `jax.grad` of the references
(``"autodiff"``), leaf by leaf, per dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcbp import backprop, ops
from funcbp.backprop import check_source
from funcbp.check.gradients import compare
from funcbp.training.step import make_loss_fn

__all__ = ["MODEL_TOLERANCE", "check_model", "model_gradients"]

MODEL_TOLERANCE = {"float64": 1e-9, "float32": 1e-4}
"""Whole-model bounds (hand vs autodiff): errors compound over layers, so one notch looser than
`funcbp.check.TOLERANCE` for single ops."""


def model_gradients(model, params, state, x, y, loss=None, *, source="hand", key=None):
    """Gradient of ``loss(model(x), y)`` w.r.t. params, by ``source``: ``"hand"`` (custom
    VJPs), ``"autodiff"`` (`jax.grad` of the references) or ``"explicit"`` (the reverse pass
    of `funcbp.backprop`, no autodiff). Train mode; jitted."""
    loss = loss if loss is not None else ops.softmax_cross_entropy
    if check_source(source, "model_gradients: source") == "explicit":
        fn = lambda p: backprop.loss_and_grad(model, loss, p, state, x, y, key=key)[1]
    else:
        loss_fn = make_loss_fn(model, loss, source=source)
        fn = jax.grad(lambda p: loss_fn(p, state, x, y, key, True)[0])
    return jax.jit(fn)(params)


def check_model(model, params, state, x, y, loss=None, *, name="model", key=None, dtypes=None):
    """Hand (and explicit) vs autodiff gradients of every parameter, per dtype.

    Returns a list of `Report`s (``a`` = hand or explicit, ``b`` = autodiff), one per dtype in
    ``dtypes`` (default float32, plus float64 when x64 is enabled); params and float inputs are
    cast to each dtype. Model-level tolerances are `MODEL_TOLERANCE`.
    """
    if dtypes is None:
        dtypes = ("float32", "float64") if jax.config.jax_enable_x64 else ("float32",)
    reports = []
    for dtype in dtypes:
        cast = lambda t, dtype=dtype: jax.tree.map(
            lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, t
        )
        p, s, xx, yy = cast(params), cast(state), cast(jnp.asarray(x)), cast(jnp.asarray(y))
        ref = model_gradients(model, p, s, xx, yy, loss, source="autodiff", key=key)
        for source in ("hand", "explicit"):
            got = model_gradients(model, p, s, xx, yy, loss, source=source, key=key)
            r = compare(
                got,
                ref,
                tol=MODEL_TOLERANCE[dtype],
                name=name,
                a_name=source,
                b_name="autodiff",
                dtype=dtype,
            )
            reports.append(r)
    return reports
