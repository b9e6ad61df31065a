"""softmax and log_softmax along one axis, stable for logits of any magnitude (±1e4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcbp.ops import _sample
from funcbp.ops._checks import require_float
from funcbp.ops._op import Op, register

__all__ = ["softmax", "log_softmax"]


def _shifted(x, axis):
    """x − max(x) along ``axis``; the max is a constant shift, so it carries no gradient."""
    return x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))


def softmax_reference(x, axis=-1):
    """x: any shape -> same.  y_i = e^{x_i} / Σ_j e^{x_j} along ``axis``."""
    e = jnp.exp(_shifted(x, axis))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def softmax_fwd(x, axis=-1):
    """Keeps the output y only: the Jacobian diag(y) − y yᵀ is a function of y alone."""
    y = softmax_reference(x, axis)
    return y, (y,)


def softmax_bwd(res, g, axis=-1):
    """dx = y ⊙ (g − ⟨g, y⟩).

    ∂y_i/∂x_j = y_i (δ_ij − y_j), so dx_j = Σ_i g_i y_i (δ_ij − y_j) = y_j (g_j − Σ_i g_i y_i):
    the compact form, O(n) per row instead of the n×n Jacobian.
    """
    (y,) = res
    return (y * (g - jnp.sum(g * y, axis=axis, keepdims=True)),)


def softmax_jvp(primals, tangents, axis=-1):
    """dy = y ⊙ (dx − ⟨y, dx⟩).

    dy_i = Σ_j ∂y_i/∂x_j dx_j = Σ_j y_i (δ_ij − y_j) dx_j = y_i (dx_i − Σ_j y_j dx_j): the
    Jacobian diag(y) − y yᵀ is symmetric, so forward and backward apply the same map (to dx,
    resp. g). A constant shift of dx along ``axis`` gives dy = 0 (softmax is shift-invariant).
    """
    (x,), (dx,) = primals, tangents
    y = softmax_reference(x, axis)
    return y, y * (dx - jnp.sum(y * dx, axis=axis, keepdims=True))


def log_softmax_reference(x, axis=-1):
    """x: any shape -> same.  y_i = x_i − log Σ_j e^{x_j} along ``axis``."""
    z = _shifted(x, axis)
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=axis, keepdims=True))


def log_softmax_fwd(x, axis=-1):
    """Keeps the output y (log-probabilities): softmax(x) = e^{y} is recovered from it."""
    y = log_softmax_reference(x, axis)
    return y, (y,)


def log_softmax_bwd(res, g, axis=-1):
    """dx = g − softmax(x) Σ_i g_i.

    ∂y_i/∂x_j = δ_ij − p_j with p = e^{y}, so dx_j = g_j − p_j Σ_i g_i.
    """
    (y,) = res
    return (g - jnp.exp(y) * jnp.sum(g, axis=axis, keepdims=True),)


def log_softmax_jvp(primals, tangents, axis=-1):
    """dy = dx − ⟨p, dx⟩,  p = softmax(x) = e^{y}.

    y_i = x_i − lse(x) and ∂lse/∂x_j = p_j, so dy_i = dx_i − Σ_j p_j dx_j: every entry of the
    row moves by its own tangent minus one shared, p-weighted mean. (The Jacobian I − 1 pᵀ is
    not symmetric; its transpose I − p 1ᵀ is the backward's dx = g − p Σ g.)
    """
    (x,), (dx,) = primals, tangents
    y = log_softmax_reference(x, axis)
    return y, dx - jnp.sum(jnp.exp(y) * dx, axis=axis, keepdims=True)


def _validate(op):
    def validate(x, axis=-1):
        require_float(op, "x", x)
        if x.ndim == 0:
            raise ValueError(f"{op}: x must have at least 1 dim, got shape ()")
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise TypeError(f"{op}: axis must be an int, got {axis!r}")
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"{op}: axis {axis} is out of range for x of shape {x.shape}")

    return validate


def _sample_softmax(key, dtype):
    gen = _sample.rng(key)
    shape = (*_sample.batch_shape(gen, max_dims=2), int(gen.integers(1, 8)))
    axis = int(gen.integers(-len(shape), len(shape)))
    return (_sample.normal(key, shape, dtype, scale=3.0),), {"axis": axis}


softmax = register(
    Op(
        "softmax",
        softmax_reference,
        softmax_fwd,
        softmax_bwd,
        _sample_softmax,
        1,
        _validate("softmax"),
        jvp=softmax_jvp,
    )
)
log_softmax = register(
    Op(
        "log_softmax",
        log_softmax_reference,
        log_softmax_fwd,
        log_softmax_bwd,
        _sample_softmax,
        1,
        _validate("log_softmax"),
        jvp=log_softmax_jvp,
    )
)
