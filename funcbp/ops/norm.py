"""Normalisation: layer norm (per sample, last axis) and batch norm (per channel, over the batch).

Both share one closed-form backward. With x̂ = (x − μ) r, r = 1/√(σ² + ε), y = γ x̂ + β and the
statistics μ, σ² taken over a set of n entries (the last axis for layer norm, every axis but the
last for batch norm), the input gradient is

    dx = r (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂)),   dx̂ = g ⊙ γ,

with the means over those same n entries; `layer_norm_bwd` derives it. ``batch_norm_inference``
(eval mode: running statistics are inputs, not functions of x) is a per-channel affine map with
its own, simpler VJP.

Forward mode shares one closed form too (`_normalise_jvp`, derived in `layer_norm_jvp`):

    dx̂ = r (dx − mean(dx) − x̂ ⊙ mean(x̂ ⊙ dx)),   dy = γ ⊙ dx̂ + dγ ⊙ x̂ + dβ.

The map dx ↦ dx̂ is the same as dx̂ ↦ dx in the backward: ∂x̂/∂x = r (I − 11ᵀ/n − x̂ x̂ᵀ/n) is
symmetric, so forward and backward differ only in where γ enters.

Residuals of the training-mode ops: (x, μ, r, γ). μ and r are small (one per row or channel); x
is the op's input and is alive anyway (its producer or the caller holds it), whereas keeping x̂
would add a new buffer the size of x. x̂ = (x − μ) r is recomputed in the backward: one
subtract and one multiply per element, cheaper than the memory traffic of a stored copy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.ops import _sample
from funcbp.ops._checks import require_float, require_ndim, require_same_dtype, require_shape
from funcbp.ops._op import Op, register
from funcbp.ops._precision import acc_sum

__all__ = ["layer_norm", "batch_norm", "batch_norm_inference", "batch_norm_stats"]


def _lift(p, ndim):
    """Per-feature vector ``(D,)`` -> ``(1, ..., 1, D)`` with ``ndim`` dims (no rank promotion)."""
    return p.reshape((1,) * (ndim - 1) + p.shape)


def _normalise_bwd(g, x, mean, rstd, gamma, axes):
    """Shared closed form: returns (dx, dγ, dβ); means/sums over ``axes`` (the statistics' set).

    x, g: (..., D); mean, rstd: broadcastable to x (keepdims); gamma: (D,).
    """
    xhat = (x - mean) * rstd  # (..., D)  recomputed, not stored
    dxhat = g * _lift(gamma, g.ndim)  # (..., D)
    mean_dxhat = jnp.mean(dxhat, axis=axes, keepdims=True)  # keepdims shape of mean
    mean_dxhat_xhat = jnp.mean(dxhat * xhat, axis=axes, keepdims=True)
    dx = rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)  # (..., D)
    lead = tuple(range(g.ndim - 1))  # γ, β are per feature: sum over everything else
    dgamma = acc_sum(g * xhat, lead)  # (D,), float32 for half inputs (`ops._precision`)
    dbeta = acc_sum(g, lead)  # (D,)
    return dx, dgamma, dbeta


def _normalise_jvp(x, gamma, beta, dx, dgamma, dbeta, eps, axes):
    """Shared forward-mode closed form: returns (y, dy); means over ``axes`` (keepdims).

    x, dx: (..., D); gamma, beta, dgamma, dbeta: (D,).
    """
    mean = jnp.mean(x, axis=axes, keepdims=True)  # keepdims shape of the statistics
    var = jnp.mean((x - mean) ** 2, axis=axes, keepdims=True)
    rstd = jax.lax.rsqrt(var + eps)
    xhat = (x - mean) * rstd  # (..., D)
    mean_dx = jnp.mean(dx, axis=axes, keepdims=True)
    mean_xhat_dx = jnp.mean(xhat * dx, axis=axes, keepdims=True)
    dxhat = rstd * (dx - mean_dx - xhat * mean_xhat_dx)  # (..., D)
    n = x.ndim
    y = xhat * _lift(gamma, n) + _lift(beta, n)
    dy = dxhat * _lift(gamma, n) + xhat * _lift(dgamma, n) + _lift(dbeta, n)
    return y, dy


def _check_eps(op, eps):
    if isinstance(eps, bool) or not isinstance(eps, int | float):
        raise TypeError(f"{op}: eps must be a Python float (static), got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{op}: eps must be a finite number >= 0, got {eps!r}")


def _check_affine(op, x, gamma, beta, n_min_dims, what):
    require_float(op, "x", x)
    require_float(op, "gamma", gamma)
    require_float(op, "beta", beta)
    require_ndim(op, "x", x, (n_min_dims, None), what)
    d = x.shape[-1]
    require_shape(op, "gamma", gamma, (d,), f"one per feature of x {tuple(x.shape)}")
    require_shape(op, "beta", beta, (d,), f"one per feature of x {tuple(x.shape)}")
    require_same_dtype(op, x=x, gamma=gamma, beta=beta)


# -- layer_norm ----------------------------------------------------------------------------
def layer_norm_reference(x, gamma, beta, eps=1e-5):
    """x: (..., D), gamma: (D,), beta: (D,) -> (..., D).

    y = γ ⊙ (x − μ)/√(σ² + ε) + β with μ, σ² (biased) over the last axis of each row.
    """
    mean = jnp.mean(x, axis=-1, keepdims=True)  # (..., 1)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)  # (..., 1)
    xhat = (x - mean) * jax.lax.rsqrt(var + eps)  # (..., D)
    return xhat * _lift(gamma, x.ndim) + _lift(beta, x.ndim)


def layer_norm_fwd(x, gamma, beta, eps=1e-5):
    """Forward; keeps x, μ (..., 1), r (..., 1) and γ (for dx̂ = g ⊙ γ).

    μ and r are one number per row; x is the input (already alive), so nothing of size x is
    added; x̂ is recomputed in the backward. β is not needed (dβ = Σ g).
    """
    mean = jnp.mean(x, axis=-1, keepdims=True)  # (..., 1)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)  # (..., 1)
    rstd = jax.lax.rsqrt(var + eps)  # (..., 1)
    xhat = (x - mean) * rstd  # (..., D)
    y = xhat * _lift(gamma, x.ndim) + _lift(beta, x.ndim)
    return y, (x, mean, rstd, gamma)


def layer_norm_bwd(res, g, eps=1e-5):
    """dx = r (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂));  dγ = Σ_batch g ⊙ x̂;  dβ = Σ_batch g.

    Per row, over its D entries (means are over the last axis), with dx̂ = g ⊙ γ
    (from y = γ x̂ + β) and x̂_i = (x_i − μ) r, r = (σ² + ε)^(−1/2):

      ∂μ/∂x_j  = 1/D
      ∂σ²/∂x_j = (2/D) Σ_i (x_i − μ)(δ_ij − 1/D) = 2 (x_j − μ)/D     (Σ_i (x_i − μ) = 0)
      ∂r/∂x_j  = −½ r³ ∂σ²/∂x_j = −r³ (x_j − μ)/D = −r² x̂_j / D
      ∂x̂_i/∂x_j = r (δ_ij − 1/D) + (x_i − μ) ∂r/∂x_j = r (δ_ij − 1/D − x̂_i x̂_j / D)

    so dx_j = Σ_i dx̂_i ∂x̂_i/∂x_j = r (dx̂_j − (1/D) Σ_i dx̂_i − x̂_j (1/D) Σ_i dx̂_i x̂_i):
    O(D) per row, the D×D Jacobian is never formed. γ, β act per feature on every row, so their
    gradients sum over all leading (batch) dims. ``eps`` is already folded into r.
    """
    x, mean, rstd, gamma = res
    return _normalise_bwd(g, x, mean, rstd, gamma, axes=-1)


def layer_norm_jvp(primals, tangents, eps=1e-5):
    """dy = γ ⊙ dx̂ + dγ ⊙ x̂ + dβ,  dx̂ = r (dx − mean(dx) − x̂ ⊙ mean(x̂ ⊙ dx)).

    Per row of D entries, with x̂ = (x − μ) r, r = (σ² + ε)^(−1/2), push a tangent dx through
    each statistic (means over the last axis):
      dμ  = mean(dx)
      dσ² = (2/D) Σ_i (x_i − μ)(dx_i − dμ) = 2 mean((x − μ) ⊙ dx)     (Σ_i (x_i − μ) = 0)
      dr  = −½ r³ dσ² = −r² mean(x̂ ⊙ dx)
      dx̂  = r (dx − dμ) + (x − μ) dr = r (dx − mean(dx) − x̂ ⊙ mean(x̂ ⊙ dx))
    and y = γ ⊙ x̂ + β is bilinear in (γ, x̂): dy = γ ⊙ dx̂ + dγ ⊙ x̂ + dβ. O(D) per row; the
    D×D Jacobian r (I − 11ᵀ/D − x̂ x̂ᵀ/D) is symmetric, which is why dx̂ ↦ dx in the backward
    is the same map.
    """
    (x, gamma, beta), (dx, dgamma, dbeta) = primals, tangents
    return _normalise_jvp(x, gamma, beta, dx, dgamma, dbeta, eps, axes=-1)


def _validate_layer_norm(x, gamma, beta, eps=1e-5):
    _check_affine("layer_norm", x, gamma, beta, 1, "(..., D)")
    _check_eps("layer_norm", eps)


def _sample_eps(gen):
    return float(gen.choice([1e-5, 1e-3, 0.1]))


def _sample_affine(key, shape, dtype):
    """x with a random offset and scale per row/channel, γ away from 0, β normal."""
    kx, kg, kb = _sample.split3(key)
    k1, k2 = jax.random.split(kx)
    x = np.asarray(_sample.normal(k1, shape, dtype, scale=1.5))
    x = _sample.host(x + np.asarray(_sample.normal(k2, (), dtype)), dtype)
    gamma = _sample.away_from_zero(kg, shape[-1:], dtype, 0.3, 2.0)
    beta = _sample.normal(kb, shape[-1:], dtype)
    return x, gamma, beta


def _sample_layer_norm(key, dtype):
    gen = _sample.rng(key)
    # D >= 3: with D = 2 the normalised row is ±1 whatever x, dx = O(ε/σ²) is all cancellation
    # and float32 cannot resolve it to 1e-5 relative (float64 tests cover D = 1, 2 separately).
    shape = (*_sample.batch_shape(gen, max_dims=2), int(gen.integers(3, 8)))
    return _sample_affine(key, shape, dtype), {"eps": _sample_eps(gen)}


layer_norm = register(
    Op(
        "layer_norm",
        layer_norm_reference,
        layer_norm_fwd,
        layer_norm_bwd,
        _sample_layer_norm,
        3,
        _validate_layer_norm,
        jvp=layer_norm_jvp,
    )
)


# -- batch_norm (training mode) ------------------------------------------------------------
def _batch_axes(x):
    return tuple(range(x.ndim - 1))


def batch_norm_stats(x):
    """x: (..., C) -> (mean (C,), var (C,)): the batch statistics batch norm normalises with.

    Means over every axis but the last; the variance is the biased one (divided by the number
    of values per channel), as in `batch_norm`. A plain function (gradients by autodiff if ever
    needed); the nn layer uses it to update running statistics.
    """
    op = "batch_norm_stats"
    require_float(op, "x", x)
    require_ndim(op, "x", x, (2, None), "(batch..., C)")
    axes = _batch_axes(x)
    mean = jnp.mean(x, axis=axes)  # (C,)
    var = jnp.mean((x - _lift(mean, x.ndim)) ** 2, axis=axes)  # (C,)
    return mean, var


def batch_norm_reference(x, gamma, beta, eps=1e-5):
    """x: (batch..., C), gamma: (C,), beta: (C,) -> (batch..., C).

    Training mode: y = γ ⊙ (x − μ)/√(σ² + ε) + β with μ, σ² (biased) per channel over every
    axis but the last (e.g. N, H, W of an NHWC image batch).
    """
    axes = _batch_axes(x)
    mean = jnp.mean(x, axis=axes, keepdims=True)  # (1, ..., 1, C)
    var = jnp.mean((x - mean) ** 2, axis=axes, keepdims=True)  # (1, ..., 1, C)
    xhat = (x - mean) * jax.lax.rsqrt(var + eps)
    return xhat * _lift(gamma, x.ndim) + _lift(beta, x.ndim)


def batch_norm_fwd(x, gamma, beta, eps=1e-5):
    """Forward; keeps x, μ and r (one per channel: tiny) and γ; x̂ is recomputed (see module)."""
    axes = _batch_axes(x)
    mean = jnp.mean(x, axis=axes, keepdims=True)  # (1, ..., 1, C)
    var = jnp.mean((x - mean) ** 2, axis=axes, keepdims=True)  # (1, ..., 1, C)
    rstd = jax.lax.rsqrt(var + eps)  # (1, ..., 1, C)
    y = (x - mean) * rstd * _lift(gamma, x.ndim) + _lift(beta, x.ndim)
    return y, (x, mean, rstd, gamma)


def batch_norm_bwd(res, g, eps=1e-5):
    """dx = r (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂));  dγ = Σ g ⊙ x̂;  dβ = Σ g.

    The derivation of `layer_norm_bwd` with the roles of the axes swapped: for each channel c
    the statistics are over its n = Π(batch dims) values, every value of the channel moves
    μ_c and σ²_c, so ∂x̂_i/∂x_j = r (δ_ij − 1/n − x̂_i x̂_j / n) within a channel (and 0 across
    channels). Means and sums run over all axes but the last.
    """
    x, mean, rstd, gamma = res
    return _normalise_bwd(g, x, mean, rstd, gamma, axes=_batch_axes(x))


def batch_norm_jvp(primals, tangents, eps=1e-5):
    """dy = γ ⊙ dx̂ + dγ ⊙ x̂ + dβ,  dx̂ = r (dx − mean(dx) − x̂ ⊙ mean(x̂ ⊙ dx)).

    The derivation of `layer_norm_jvp` with the statistics of each channel taken over its n
    values (every axis but the last): dμ = mean(dx), dr = −r² mean(x̂ ⊙ dx) per channel.
    """
    (x, gamma, beta), (dx, dgamma, dbeta) = primals, tangents
    return _normalise_jvp(x, gamma, beta, dx, dgamma, dbeta, eps, axes=_batch_axes(x))


def _validate_batch_norm(x, gamma, beta, eps=1e-5):
    op = "batch_norm"
    _check_affine(op, x, gamma, beta, 2, "(batch..., C)")
    _check_eps(op, eps)
    n = math.prod(x.shape[:-1])
    if n < 2:
        raise ValueError(
            f"batch_norm: training mode needs more than one value per channel to estimate "
            f"the batch statistics, got x of shape {tuple(x.shape)} ({n} per channel)"
        )


def _sample_batch_norm(key, dtype):
    gen = _sample.rng(key)
    # >= 3 values per channel, for the reason given in `_sample_layer_norm`.
    lead = (int(gen.integers(3, 6)), *_sample.batch_shape(gen, max_dims=2, max_size=3))
    shape = (*lead, int(gen.integers(1, 5)))
    return _sample_affine(key, shape, dtype), {"eps": _sample_eps(gen)}


batch_norm = register(
    Op(
        "batch_norm",
        batch_norm_reference,
        batch_norm_fwd,
        batch_norm_bwd,
        _sample_batch_norm,
        3,
        _validate_batch_norm,
        jvp=batch_norm_jvp,
    )
)


# -- batch_norm_inference (eval mode) ------------------------------------------------------
def batch_norm_inference_reference(x, mean, var, gamma, beta, eps=1e-5):
    """x: (..., C); mean, var, gamma, beta: (C,) -> (..., C).

    Eval mode: y = γ ⊙ (x − m)/√(v + ε) + β with fixed (running) statistics m, v: a per-channel
    affine map of x.
    """
    n = x.ndim
    rstd = jax.lax.rsqrt(var + eps)  # (C,)
    return (x - _lift(mean, n)) * _lift(rstd * gamma, n) + _lift(beta, n)


def batch_norm_inference_fwd(x, mean, var, gamma, beta, eps=1e-5):
    """Forward; keeps x (input, alive anyway: needed for dγ and dv), m, r = (v + ε)^(−½) and γ
    (all (C,), tiny). v itself is not kept: r carries everything dv needs."""
    n = x.ndim
    rstd = jax.lax.rsqrt(var + eps)  # (C,)
    y = (x - _lift(mean, n)) * _lift(rstd * gamma, n) + _lift(beta, n)
    return y, (x, mean, rstd, gamma)


def batch_norm_inference_bwd(res, g, eps=1e-5):
    """dx = g ⊙ rγ;  dm = −Σ g ⊙ rγ;  dv = −½ r² γ ⊙ Σ g ⊙ x̂;  dγ = Σ g ⊙ x̂;  dβ = Σ g.

    With x̂ = (x − m) r, r = (v + ε)^(−½), y = γ x̂ + β per channel (sums over all leading dims):
      ∂y/∂x = rγ,  ∂y/∂m = −rγ,  ∂y/∂γ = x̂,  ∂y/∂β = 1,
      ∂y/∂v = γ (x − m) · (−½)(v + ε)^(−3/2) = −½ r² γ x̂.
    """
    x, mean, rstd, gamma = res
    n = x.ndim
    lead = tuple(range(n - 1))
    scale = rstd * gamma  # (C,)
    xhat = (x - _lift(mean, n)) * _lift(rstd, n)  # (..., C)
    dx = g * _lift(scale, n)  # (..., C)
    dbeta = acc_sum(g, lead)  # (C,), float32 for half inputs
    dgamma = acc_sum(g * xhat, lead)  # (C,)
    dmean = -scale * dbeta  # (C,)
    dvar = -0.5 * rstd * rstd * gamma * dgamma  # (C,)
    return dx, dmean, dvar, dgamma, dbeta


def batch_norm_inference_jvp(primals, tangents, eps=1e-5):
    """dy = rγ ⊙ (dx − dm) − ½ r² γ ⊙ x̂ ⊙ dv + x̂ ⊙ dγ + dβ.

    y = γ (x − m) r + β with r = (v + ε)^(−½) is a product of (x − m), r and γ: each factor's
    tangent times the others. d(x − m) = dx − dm;  dr = −½ (v + ε)^(−3/2) dv = −½ r³ dv, so
    γ (x − m) dr = −½ r² γ x̂ dv (x̂ = (x − m) r);  dγ multiplies x̂;  dβ adds. Per channel,
    broadcast over the leading dims (the backward sums them back).
    """
    x, mean, var, gamma, beta = primals
    dx, dmean, dvar, dgamma, dbeta = tangents
    n = x.ndim
    rstd = jax.lax.rsqrt(var + eps)  # (C,)
    xhat = (x - _lift(mean, n)) * _lift(rstd, n)  # (..., C)
    y = (x - _lift(mean, n)) * _lift(rstd * gamma, n) + _lift(beta, n)
    dy = (dx - _lift(dmean, n)) * _lift(rstd * gamma, n)  # (..., C)
    dy = dy + xhat * _lift(dgamma - 0.5 * rstd * rstd * gamma * dvar, n) + _lift(dbeta, n)
    return y, dy


def _validate_batch_norm_inference(x, mean, var, gamma, beta, eps=1e-5):
    op = "batch_norm_inference"
    require_float(op, "x", x)
    require_ndim(op, "x", x, (1, None), "(..., C)")
    c = x.shape[-1]
    for name, a in (("mean", mean), ("var", var), ("gamma", gamma), ("beta", beta)):
        require_float(op, name, a)
        require_shape(op, name, a, (c,), f"one per channel of x {tuple(x.shape)}")
    require_same_dtype(op, x=x, mean=mean, var=var, gamma=gamma, beta=beta)
    _check_eps(op, eps)


def _sample_batch_norm_inference(key, dtype):
    gen = _sample.rng(key)
    shape = (*_sample.batch_shape(gen, max_dims=3, max_size=4), int(gen.integers(1, 6)))
    k1, k2, k3 = _sample.split3(jax.random.fold_in(key, 1))
    x, gamma, beta = _sample_affine(k1, shape, dtype)
    mean = _sample.normal(k2, shape[-1:], dtype)
    var = _sample.uniform(k3, shape[-1:], dtype, 0.2, 3.0)  # running variances are > 0
    return (x, mean, var, gamma, beta), {"eps": _sample_eps(gen)}


batch_norm_inference = register(
    Op(
        "batch_norm_inference",
        batch_norm_inference_reference,
        batch_norm_inference_fwd,
        batch_norm_inference_bwd,
        _sample_batch_norm_inference,
        5,
        _validate_batch_norm_inference,
        jvp=batch_norm_inference_jvp,
    )
)
