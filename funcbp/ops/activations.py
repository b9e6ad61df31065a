"""Elementwise activations: relu, leaky_relu, sigmoid, tanh, gelu.

For an elementwise ``y = f(x)`` the Jacobian is diagonal, so the VJP is ``dx = g * f'(x)``; each
op keeps whichever of ``x`` or ``y`` gives ``f'`` most cheaply. A diagonal matrix is its own
transpose, so the JVP is the same product with the tangent: ``dy = f'(x) * dx``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from funcbp.ops import _sample
from funcbp.ops._bits import pack_mask, unpack_mask
from funcbp.ops._checks import require_float
from funcbp.ops._op import Op, register

__all__ = ["relu", "leaky_relu", "sigmoid", "tanh", "gelu"]


def _validate_x(op):
    def validate(x, **static):
        require_float(op, "x", x)

    return validate


def _away(key, dtype, gen):
    """Random shape (0-3 dims) from ``gen``, values away from 0 so kinks never sit between FD
    points. Static options are drawn from the same ``gen`` afterwards, so they vary
    independently of the shape (a fresh generator's first draw would repeat the shape's)."""
    shape = _sample.batch_shape(gen, max_dims=3, max_size=6)
    return (_sample.away_from_zero(key, shape, dtype, 0.05, 3.0),)


def _sample_away(key, dtype):
    return _away(key, dtype, _sample.rng(key)), {}


# -- relu ----------------------------------------------------------------------------------
RESIDUALS = ("output", "input", "bits")


def relu_reference(x, residual="output"):
    """x: any shape -> same.  y = max(x, 0).  ``residual`` (what the backward keeps) does not
    change the value."""
    return jnp.maximum(x, 0)


def relu_fwd(x, residual="output"):
    """Keeps what the mask ``1[x > 0]`` needs; which array is cheapest depends on the neighbours:

    * ``"output"`` (default): y, since y > 0 exactly where x > 0. Free when the next layer keeps
      y as its input anyway (a Dense). y is written as ``where(x <= 0, 0, x)``: written as
      ``max(x, 0)``, XLA fuses the max into the backward's ``y > 0`` and reads the
      pre-activation there instead, so that array stays alive too: one more activation per
      layer in an MLP step (benchmarks/RESULTS.md, "ReLU's residual").
    * ``"input"``: x. Free when the previous layer keeps x, or XLA can recompute it from what
      that layer keeps (after a batch norm it fuses the normalisation into the mask).
    * ``"bits"``: the mask packed one bit an element (`funcbp.ops._bits`, n/8 bytes), when
      neither neighbour keeps x or y (before a max-pool or a dropout); one more reduction
      kernel in the forward.
    """
    if residual == "output":
        y = jnp.where(x <= 0, jnp.zeros((), x.dtype), x)  # NaN stays NaN, as in max(x, 0)
        return y, (y,)
    y = relu_reference(x)
    return y, (pack_mask(x > 0) if residual == "bits" else x,)


def relu_bwd(res, g, residual="output"):
    """dx = g · 1[x > 0] (the gradient at 0 is taken as 0), the mask read from what fwd kept:
    y or x (positive exactly where x is), or the packed bits."""
    (kept,) = res
    mask = unpack_mask(kept, g.shape) if residual == "bits" else kept > 0
    return (jnp.where(mask, g, jnp.zeros_like(g)),)


def relu_jvp(primals, tangents, residual="output"):
    """dy = 1[x > 0] · dx: the slope is 1 on the positive side, 0 on the other (0 at the kink,
    as in the backward)."""
    (x,), (dx,) = primals, tangents
    return relu_reference(x), jnp.where(x > 0, dx, jnp.zeros_like(dx))


def check_residual(residual) -> None:
    """Raises ValueError naming relu unless ``residual`` is one of `RESIDUALS`."""
    if residual not in RESIDUALS:
        raise ValueError(
            f"relu: residual must be one of {', '.join(map(repr, RESIDUALS))}, got {residual!r}"
        )


def _validate_relu(x, residual="output"):
    require_float("relu", "x", x)
    check_residual(residual)


def _sample_relu(key, dtype):
    gen = _sample.rng(key)
    arrays = _away(key, dtype, gen)
    return arrays, {"residual": str(gen.choice(RESIDUALS))}


relu = register(
    Op(
        "relu",
        relu_reference,
        relu_fwd,
        relu_bwd,
        _sample_relu,
        1,
        _validate_relu,
        jvp=relu_jvp,
    )
)


# -- leaky_relu ----------------------------------------------------------------------------
def leaky_relu_reference(x, negative_slope=0.01):
    """x: any shape -> same.  y = x if x > 0 else negative_slope · x."""
    return jnp.where(x > 0, x, negative_slope * x)


def leaky_relu_fwd(x, negative_slope=0.01):
    """Keeps the output y: for negative_slope ≥ 0, y > 0 exactly where x > 0."""
    y = leaky_relu_reference(x, negative_slope)
    return y, (y,)


def leaky_relu_bwd(res, g, negative_slope=0.01):
    """dx = g · (1 if x > 0 else negative_slope)."""
    (y,) = res
    return (jnp.where(y > 0, g, negative_slope * g),)


def leaky_relu_jvp(primals, tangents, negative_slope=0.01):
    """dy = dx if x > 0 else negative_slope · dx (the slope of the piece x lies on)."""
    (x,), (dx,) = primals, tangents
    return leaky_relu_reference(x, negative_slope), jnp.where(x > 0, dx, negative_slope * dx)


def _validate_leaky(x, negative_slope=0.01):
    require_float("leaky_relu", "x", x)
    if not isinstance(negative_slope, int | float) or not (0 <= negative_slope < math.inf):
        raise ValueError(
            f"leaky_relu: negative_slope must be a finite number >= 0, got {negative_slope!r}"
        )


def _sample_leaky(key, dtype):
    gen = _sample.rng(key)
    arrays = _away(key, dtype, gen)
    return arrays, {"negative_slope": float(gen.choice([0.0, 0.01, 0.2, 0.5]))}


leaky_relu = register(
    Op(
        "leaky_relu",
        leaky_relu_reference,
        leaky_relu_fwd,
        leaky_relu_bwd,
        _sample_leaky,
        1,
        _validate_leaky,
        jvp=leaky_relu_jvp,
    )
)


# -- sigmoid -------------------------------------------------------------------------------
def sigmoid_reference(x):
    """x: any shape -> same.  σ(x) = 1 / (1 + e^{-x})."""
    return jax.nn.sigmoid(x)


def sigmoid_fwd(x):
    """Keeps the output s: σ'(x) = s (1 − s) needs nothing else."""
    s = sigmoid_reference(x)
    return s, (s,)


def sigmoid_bwd(res, g):
    """dx = g · s (1 − s)."""
    (s,) = res
    return (g * s * (1 - s),)


def sigmoid_jvp(primals, tangents):
    """ds = s (1 − s) · dx, from σ' = e^{−x}/(1 + e^{−x})² = σ (1 − σ)."""
    (x,), (dx,) = primals, tangents
    s = sigmoid_reference(x)
    return s, s * (1 - s) * dx


def _sample_normal(key, dtype):
    gen = _sample.rng(key)
    shape = _sample.batch_shape(gen, max_dims=3, max_size=6)
    return (_sample.normal(key, shape, dtype, scale=2.0),), {}


sigmoid = register(
    Op(
        "sigmoid",
        sigmoid_reference,
        sigmoid_fwd,
        sigmoid_bwd,
        _sample_normal,
        1,
        _validate_x("sigmoid"),
        jvp=sigmoid_jvp,
    )
)


# -- tanh ----------------------------------------------------------------------------------
def tanh_reference(x):
    """x: any shape -> same."""
    return jnp.tanh(x)


def tanh_fwd(x):
    """Keeps the output t: tanh'(x) = 1 − t²."""
    t = tanh_reference(x)
    return t, (t,)


def tanh_bwd(res, g):
    """dx = g · (1 − t²)."""
    (t,) = res
    return (g * (1 - t * t),)


def tanh_jvp(primals, tangents):
    """dt = (1 − t²) · dx, from tanh' = 1/cosh² = 1 − tanh²."""
    (x,), (dx,) = primals, tangents
    t = tanh_reference(x)
    return t, (1 - t * t) * dx


tanh = register(
    Op(
        "tanh",
        tanh_reference,
        tanh_fwd,
        tanh_bwd,
        _sample_normal,
        1,
        _validate_x("tanh"),
        jvp=tanh_jvp,
    )
)


# -- gelu ----------------------------------------------------------------------------------
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_C = 0.044715


def gelu_reference(x, approximate=False):
    """x: any shape -> same.

    exact:        x Φ(x) = ½ x (1 + erf(x / √2))
    approximate:  ½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))
    """
    if approximate:
        return 0.5 * x * (1 + jnp.tanh(_SQRT_2_OVER_PI * (x + _C * x**3)))
    return 0.5 * x * (1 + erf(x * _INV_SQRT_2))


def gelu_fwd(x, approximate=False):
    """Keeps x: the derivative needs x itself (recomputing Φ or tanh is cheaper than storing)."""
    return gelu_reference(x, approximate), (x,)


def gelu_bwd(res, g, approximate=False):
    """exact:  d/dx [x Φ(x)] = Φ(x) + x φ(x),  φ(x) = e^{−x²/2} / √(2π).

    approximate, with u = √(2/π)(x + c x³), t = tanh u:
      d/dx [½ x (1 + t)] = ½ (1 + t) + ½ x (1 − t²) √(2/π) (1 + 3 c x²).
    """
    (x,) = res
    if approximate:
        t = jnp.tanh(_SQRT_2_OVER_PI * (x + _C * x**3))
        dydx = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * _C * x * x)
    else:
        cdf = 0.5 * (1 + erf(x * _INV_SQRT_2))
        pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)
        dydx = cdf + x * pdf
    return (g * dydx,)


def gelu_jvp(primals, tangents, approximate=False):
    """dy = y'(x) · dx, with the slope derived for each form:

    exact, y = x Φ(x):  y' = Φ(x) + x Φ'(x) = Φ(x) + x φ(x), φ(x) = e^{−x²/2}/√(2π).
    approximate, y = ½ x (1 + tanh u), u = √(2/π)(x + c x³), c = 0.044715:
      y' = ½ (1 + tanh u) + ½ x (1 − tanh² u) u',  u' = √(2/π)(1 + 3 c x²).
    """
    (x,), (dx,) = primals, tangents
    if approximate:
        u = _SQRT_2_OVER_PI * (x + _C * x**3)
        t = jnp.tanh(u)
        du = _SQRT_2_OVER_PI * (1 + 3 * _C * x * x)
        slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
        return 0.5 * x * (1 + t), slope * dx
    one_plus_erf = 1 + erf(x * _INV_SQRT_2)  # 2 Φ(x)
    slope = 0.5 * one_plus_erf + x * _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)
    return 0.5 * x * one_plus_erf, slope * dx


def _validate_gelu(x, approximate=False):
    require_float("gelu", "x", x)
    if not isinstance(approximate, bool):
        raise TypeError(f"gelu: approximate must be a bool, got {approximate!r}")


def _sample_gelu(key, dtype):
    (x,), _ = _sample_normal(key, dtype)
    return (x,), {"approximate": bool(_sample.rng(key).integers(0, 2))}


gelu = register(
    Op(
        "gelu",
        gelu_reference,
        gelu_fwd,
        gelu_bwd,
        _sample_gelu,
        1,
        _validate_gelu,
        jvp=gelu_jvp,
    )
)
