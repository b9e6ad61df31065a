"""Root-mean-square normalisation ``y = γ ⊙ x / √(mean(x²) + ε)`` (Llama's RMSNorm).

Layer norm without the centring and without β: per row of D features (the last axis),

    r = (mean(x²) + ε)^(−1/2)   (one number per row),   x̂ = x r,   y = γ ⊙ x̂.

Backward (derived in `rms_norm_bwd`): with dx̂ = g ⊙ γ,

    dx = r (dx̂ − x̂ ⊙ mean(dx̂ ⊙ x̂)),   dγ = Σ_batch g ⊙ x̂.

Layer norm's closed form has one more term, − mean(dx̂), which came from the mean μ: RMSNorm has
no μ, so only the "scale" term remains. Forward mode (`rms_norm_jvp`):
dx̂ = r (dx − x̂ ⊙ mean(x̂ ⊙ dx)), dy = γ ⊙ dx̂ + dγ ⊙ x̂. The Jacobian ∂x̂/∂x = r (I − x̂ x̂ᵀ/D)
is symmetric, so the JVP and the VJP apply the same map (they differ in where γ enters).

Residuals: (x, r, γ). r is one number per row; x is the op's input, alive anyway (the residual
stream holds it); x̂ = x r is recomputed in the backward (one multiply per element) rather than
stored as a second buffer the size of x.

Precision: with float16/bfloat16 inputs the statistic and the normalisation run in float32 (as
Hugging Face's ``LlamaRMSNorm`` does: a mean of D squares in bfloat16 keeps 8 bits); outputs
and cotangents are cast back to the input dtype. float32/float64 run in their own precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from funcbp.ops import _sample
from funcbp.ops._checks import require_float, require_ndim, require_same_dtype, require_shape
from funcbp.ops._op import Op, register
from funcbp.ops.norm import _check_eps, _lift

__all__ = ["rms_norm"]


def _compute_dtype(dtype):
    """float32 for half precisions, else the dtype itself."""
    return jnp.promote_types(dtype, jnp.float32)


def rms_norm_reference(x, gamma, eps=1e-6):
    """x: (..., D), gamma: (D,) -> (..., D).

    y = γ ⊙ x / √(mean(x²) + ε), the mean over the last axis of each row.
    """
    ms = jnp.mean(x * x, axis=-1, keepdims=True)  # (..., 1)
    return x * jax.lax.rsqrt(ms + eps) * _lift(gamma, x.ndim)


def rms_norm_fwd(x, gamma, eps=1e-6):
    """Forward; keeps x (the input, alive anyway), r (..., 1) and γ (for dx̂ = g ⊙ γ).

    r is one number per row (float32 for half-precision x); x̂ is recomputed in the backward.
    """
    c = _compute_dtype(x.dtype)
    xc = x.astype(c)  # (..., D)
    rstd = jax.lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)  # (..., 1)
    y = (xc * rstd * _lift(gamma.astype(c), x.ndim)).astype(x.dtype)  # (..., D)
    return y, (x, rstd, gamma)


def rms_norm_primal(x, gamma, eps=1e-6):
    """The forward outside differentiation: `rms_norm_fwd`'s output (its precision rule)."""
    return rms_norm_fwd(x, gamma, eps)[0]


def rms_norm_bwd(res, g, eps=1e-6):
    """dx = r (dx̂ − x̂ ⊙ mean(dx̂ ⊙ x̂));  dγ = Σ_batch g ⊙ x̂;  dx̂ = g ⊙ γ.

    Per row of D entries (means over the last axis), with x̂_i = x_i r and
    r = (m + ε)^(−1/2), m = (1/D) Σ_k x_k²:

      ∂m/∂x_j  = 2 x_j / D
      ∂r/∂x_j  = −½ (m + ε)^(−3/2) ∂m/∂x_j = −r³ x_j / D = −r² x̂_j / D
      ∂x̂_i/∂x_j = r δ_ij + x_i ∂r/∂x_j = r (δ_ij − x̂_i x̂_j / D)

    so dx_j = Σ_i dx̂_i ∂x̂_i/∂x_j = r (dx̂_j − x̂_j (1/D) Σ_i dx̂_i x̂_i): O(D) per row, no D × D
    Jacobian. (Layer norm's extra − mean(dx̂) came from ∂μ/∂x_j = 1/D; RMSNorm has no μ.)
    γ scales each feature on every row: dγ sums g ⊙ x̂ over all leading (batch) dims.
    """
    x, rstd, gamma = res
    c = rstd.dtype
    xhat = x.astype(c) * rstd  # (..., D)  recomputed, not stored
    gc = g.astype(c)
    dxhat = gc * _lift(gamma.astype(c), g.ndim)  # (..., D)
    proj = jnp.mean(dxhat * xhat, axis=-1, keepdims=True)  # (..., 1)
    dx = rstd * (dxhat - xhat * proj)  # (..., D)
    dgamma = jnp.sum((gc * xhat).reshape(-1, x.shape[-1]), axis=0)  # (D,)
    return dx.astype(x.dtype), dgamma.astype(gamma.dtype)


def rms_norm_jvp(primals, tangents, eps=1e-6):
    """dy = γ ⊙ dx̂ + dγ ⊙ x̂,  dx̂ = r (dx − x̂ ⊙ mean(x̂ ⊙ dx)).

    Push a tangent dx through each step of a row: dm = (2/D) Σ_k x_k dx_k = 2 mean(x ⊙ dx);
    dr = −½ r³ dm = −r² mean(x̂ ⊙ dx); dx̂ = r dx + x dr = r (dx − x̂ ⊙ mean(x̂ ⊙ dx)); and
    y = γ ⊙ x̂ is bilinear in (γ, x̂): dy = γ ⊙ dx̂ + dγ ⊙ x̂.
    """
    (x, gamma), (dx, dgamma) = primals, tangents
    c = _compute_dtype(x.dtype)
    xc, dxc, n = x.astype(c), dx.astype(c), x.ndim
    rstd = jax.lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = xc * rstd  # (..., D)
    dxhat = rstd * (dxc - xhat * jnp.mean(xhat * dxc, axis=-1, keepdims=True))  # (..., D)
    y = xhat * _lift(gamma.astype(c), n)
    dy = dxhat * _lift(gamma.astype(c), n) + xhat * _lift(dgamma.astype(c), n)
    return y.astype(x.dtype), dy.astype(x.dtype)


def _validate(x, gamma, eps=1e-6):
    op = "rms_norm"
    require_float(op, "x", x)
    require_float(op, "gamma", gamma)
    require_ndim(op, "x", x, (1, None), "(..., D)")
    require_shape(op, "gamma", gamma, x.shape[-1:], f"one per feature of x {tuple(x.shape)}")
    require_same_dtype(op, x=x, gamma=gamma)
    _check_eps(op, eps)


def _sample_rms_norm(key, dtype):
    """x with a random scale per row (and an offset: RMSNorm does not centre), γ away from 0.

    D >= 2: with D = 1 the normalised row is ±1 (up to ε) whatever x, dx = O(ε) is all
    cancellation, which float32 cannot resolve to 1e-5 relative (float64 tests cover D = 1)."""
    gen = _sample.rng(key)
    shape = (*_sample.batch_shape(gen, max_dims=2), int(gen.integers(2, 8)))
    kx, ks, kg = _sample.split3(key)
    scale = np.asarray(_sample.uniform(ks, shape[:-1] + (1,), dtype, 0.3, 3.0))
    offset = np.asarray(_sample.normal(jax.random.fold_in(kx, 1), (), dtype))
    x = _sample.host(np.asarray(_sample.normal(kx, shape, dtype)) * scale + offset, dtype)
    gamma = _sample.away_from_zero(kg, shape[-1:], dtype, 0.3, 2.0)
    return (x, gamma), {"eps": float(gen.choice([1e-6, 1e-5, 0.1]))}


rms_norm = register(
    Op(
        "rms_norm",
        rms_norm_reference,
        rms_norm_fwd,
        rms_norm_bwd,
        _sample_rms_norm,
        2,
        _validate,
        primal=rms_norm_primal,
        jvp=rms_norm_jvp,
    )
)
