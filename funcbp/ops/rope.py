"""Rotary position embedding (RoPE), in the rotate-half convention of Llama implementations.

For x (..., T, Dh) with Dh even, split every row's features into two halves x = [x₁ | x₂] of
Dh/2 each. Feature pair (x₁ᵢ, x₂ᵢ), i = 0 … Dh/2 − 1, of the row at position p = offset + t
(t = 0 … T − 1 along axis −2) is rotated by the angle φ_{p,i} = p · θ^(−2i/Dh):

    y₁ = x₁ ⊙ cos φ − x₂ ⊙ sin φ
    y₂ = x₂ ⊙ cos φ + x₁ ⊙ sin φ,
    i.e.  y = x ⊙ [cos φ | cos φ] + rotate_half(x) ⊙ [sin φ | sin φ],

rotate_half([x₁ | x₂]) = [−x₂ | x₁]. This is Hugging Face's ``apply_rotary_pos_emb``: the halves
(not interleaved neighbours) form the pairs, so HF Llama q/k projection weights are used as
they are. Attention scores then depend on positions only through their difference:
⟨R_m q, R_n k⟩ = ⟨q, R_{n−m} k⟩, since rotations compose and Rᵀ = R⁻¹.

Backward (`rope_bwd`): y = R x with R block-diagonal, one 2 × 2 rotation per pair, so the VJP is
dx = Rᵀ g, and the transpose of a rotation by φ is the rotation by −φ:
dx₁ = g₁ cos φ + g₂ sin φ, dx₂ = g₂ cos φ − g₁ sin φ. Forward mode (`rope_jvp`): y is linear in
x, so dy = R dx (the op itself applied to the tangent).

``offset`` is an integer scalar *array* argument (a Python int is accepted), not static
configuration: a KV cache's position is a traced value inside a jitted decoding loop, and one
compiled step must serve every position. It has no gradient (``None``). ``theta`` is static.

Residuals: only ``offset`` (an integer scalar). cos φ and sin φ (T × Dh/2 values) are
recomputed from it in the backward: cheaper than storing them next to an x-sized cotangent
stream, and nothing of x's size is kept (the map does not depend on x).

Precision: angles, cos and sin in float32 at least (float64 for float64 x); for float16/
bfloat16 x the rotation runs in float32 and the result is cast back.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from funcbp.ops import _sample
from funcbp.ops._checks import require_float, require_int, require_ndim
from funcbp.ops._op import Op, register

__all__ = ["rope", "rope_angles"]


def _compute_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def rope_angles(t: int, dh: int, offset, theta: float, dtype=jnp.float32):
    """(cos φ, sin φ), each (T, Dh/2): φ_{p,i} = p θ^(−2i/Dh) at positions p = offset … offset
    + T − 1, computed in ``dtype``."""
    inv_freq = 1.0 / theta ** (jnp.arange(0, dh, 2, dtype=dtype) / dh)  # (Dh/2,)
    pos = jnp.asarray(offset).astype(dtype) + jnp.arange(t, dtype=dtype)  # (T,)
    angles = pos[:, None] * inv_freq[None, :]  # (T, Dh/2)
    return jnp.cos(angles), jnp.sin(angles)


def _rotate(x, cos, sin):
    """x (..., T, Dh), cos/sin (T, Dh/2) -> [x₁ cos − x₂ sin | x₂ cos + x₁ sin] (..., T, Dh)."""
    half = x.shape[-1] // 2
    lift = (1,) * (x.ndim - 2) + cos.shape
    c, s = cos.reshape(lift), sin.reshape(lift)  # (1.., T, Dh/2)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def _rotate_half(x):
    """[x₁ | x₂] -> [−x₂ | x₁] (the Hugging Face helper)."""
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_reference(x, offset=0, theta=10000.0):
    """x (..., T, Dh), offset int scalar -> (..., T, Dh).

    y = x ⊙ [cos φ | cos φ] + rotate_half(x) ⊙ [sin φ | sin φ], φ_{p,i} = p θ^(−2i/Dh), rows at
    positions p = offset + t. cos and sin are computed in float32 (at least) and cast to x's
    dtype, as Hugging Face does.
    """
    t, dh = x.shape[-2], x.shape[-1]
    cos, sin = rope_angles(t, dh, offset, theta, _compute_dtype(x.dtype))
    lift = (1,) * (x.ndim - 2) + (t, dh)
    cos = jnp.concatenate([cos, cos], axis=-1).astype(x.dtype).reshape(lift)  # (1.., T, Dh)
    sin = jnp.concatenate([sin, sin], axis=-1).astype(x.dtype).reshape(lift)
    return x * cos + _rotate_half(x) * sin


def rope_fwd(x, offset=0, theta=10000.0):
    """Forward; keeps only ``offset`` (cos and sin are recomputed from it: see the module)."""
    offset = jnp.asarray(offset)
    c = _compute_dtype(x.dtype)
    cos, sin = rope_angles(x.shape[-2], x.shape[-1], offset, theta, c)  # (T, Dh/2)
    return _rotate(x.astype(c), cos, sin).astype(x.dtype), (offset,)


def rope_primal(x, offset=0, theta=10000.0):
    """The forward outside differentiation: `rope_fwd`'s output (its precision rule)."""
    return rope_fwd(x, offset, theta)[0]


def rope_bwd(res, g, theta=10000.0):
    """dx = Rᵀ g = rotation of g by −φ:  dx₁ = g₁ cos φ + g₂ sin φ,  dx₂ = g₂ cos φ − g₁ sin φ.

    Per pair (x₁ᵢ, x₂ᵢ) at position p the forward is y = [[c, −s], [s, c]] x (c = cos φ_{p,i},
    s = sin φ_{p,i}): ∂L/∂x₁ = c g₁ + s g₂ and ∂L/∂x₂ = −s g₁ + c g₂, i.e. the transposed matrix
    [[c, s], [−s, c]], the rotation by −φ (a rotation is orthogonal: Rᵀ = R⁻¹). Pairs and
    positions do not mix, so that is the whole Jacobian. ``offset`` is an integer: ``None``.
    """
    (offset,) = res
    c = _compute_dtype(g.dtype)
    cos, sin = rope_angles(g.shape[-2], g.shape[-1], offset, theta, c)  # (T, Dh/2)
    return _rotate(g.astype(c), cos, -sin).astype(g.dtype), None


def rope_jvp(primals, tangents, theta=10000.0):
    """dy = R dx: y = R x is linear in x (R depends on positions only), so the tangent goes
    through the same rotation; ``offset``'s tangent (float0) is ignored."""
    (x, offset), (dx, _) = primals, tangents
    c = _compute_dtype(x.dtype)
    cos, sin = rope_angles(x.shape[-2], x.shape[-1], offset, theta, c)  # (T, Dh/2)
    y = _rotate(x.astype(c), cos, sin).astype(x.dtype)
    return y, _rotate(dx.astype(c), cos, sin).astype(dx.dtype)


def _validate(x, offset=0, theta=10000.0):
    op = "rope"
    require_float(op, "x", x)
    require_ndim(op, "x", x, (2, None), "(..., T, Dh)")
    if x.shape[-1] % 2 or x.shape[-1] == 0:
        raise ValueError(
            f"rope: the feature size Dh must be even and positive (two halves), got x of shape "
            f"{tuple(x.shape)}"
        )
    if isinstance(offset, bool) or not (isinstance(offset, int) or hasattr(offset, "dtype")):
        raise TypeError(f"rope: offset must be an int or an integer scalar array, got {offset!r}")
    if not isinstance(offset, int):
        require_int(op, "offset", offset)
        require_ndim(op, "offset", offset, 0, "(a scalar: the first row's position)")
    if isinstance(theta, bool) or not isinstance(theta, int | float):
        raise TypeError(f"rope: theta must be a Python float (static), got {theta!r}")
    if not (math.isfinite(theta) and theta > 1):
        raise ValueError(f"rope: theta must be a finite number > 1, got {theta!r}")


def _sample_rope(key, dtype):
    """x of 0-2 leading dims (batch, heads), T in 1..5, Dh in {2, 4, 6, 8}; offset 0..40."""
    gen = _sample.rng(key)
    t, dh = int(gen.integers(1, 6)), 2 * int(gen.integers(1, 5))
    x = _sample.normal(key, (*_sample.batch_shape(gen, max_dims=2, max_size=3), t, dh), dtype)
    offset = _sample.host(int(gen.integers(0, 41)), jnp.int32)
    return (x, offset), {"theta": float(gen.choice([10000.0, 100.0, 500000.0]))}


rope = register(
    Op(
        "rope",
        rope_reference,
        rope_fwd,
        rope_bwd,
        _sample_rope,
        2,
        _validate,
        primal=rope_primal,
        jvp=rope_jvp,
    )
)
