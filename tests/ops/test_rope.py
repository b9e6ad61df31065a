"""rope: the rotate-half convention (NumPy, as Hugging Face computes it), its VJP is the
rotation by −φ (so the backward of the output gives the input back), scores depend only on
relative positions, a traced offset (one compile for every position), the FlashAttention rule in
float32 and bfloat16, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import check, ops
from funcbp.ops.rope import rope_bwd, rope_fwd
from tests.helpers import precision_rule_errors


def _numpy_rope(x, offset, theta):
    """Hugging Face's apply_rotary_pos_emb, in NumPy: x * cos + rotate_half(x) * sin."""
    t, dh = x.shape[-2:]
    inv_freq = 1.0 / theta ** (np.arange(0, dh, 2) / dh)
    freqs = np.outer(np.arange(offset, offset + t), inv_freq)  # (T, Dh/2)
    emb = np.concatenate([freqs, freqs], axis=-1)  # (T, Dh)
    rotated = np.concatenate([-x[..., dh // 2 :], x[..., : dh // 2]], axis=-1)
    return x * np.cos(emb) + rotated * np.sin(emb)


@pytest.mark.parametrize(("offset", "theta"), [(0, 10000.0), (7, 10000.0), (3, 500000.0)])
def test_matches_the_rotate_half_convention(offset, theta, key):
    x = jax.random.normal(key, (2, 3, 5, 8), jnp.float64)
    want = _numpy_rope(np.asarray(x), offset, theta)
    np.testing.assert_allclose(ops.rope(x, offset=offset, theta=theta), want, rtol=1e-13,
                               atol=1e-14)  # fmt: skip


def test_vjp_is_the_rotation_by_minus_phi(key):
    """Rᵀ = R⁻¹: the backward applied to R x returns x, and it is a VJP (⟨R x, g⟩ = ⟨x, Rᵀ g⟩)."""
    kx, kg = jax.random.split(key)
    x = jax.random.normal(kx, (3, 6, 10), jnp.float64)
    g = jax.random.normal(kg, x.shape, jnp.float64)
    y, res = rope_fwd(x, 11)
    np.testing.assert_allclose(rope_bwd(res, y)[0], x, rtol=1e-13, atol=1e-14)
    dx, doffset = rope_bwd(res, g)
    assert doffset is None
    np.testing.assert_allclose(jnp.vdot(y, g), jnp.vdot(x, dx), rtol=1e-13)
    hand = jax.grad(lambda x: jnp.vdot(ops.rope(x, offset=11), g))(x)
    auto = jax.grad(lambda x: jnp.vdot(ops.rope.autodiff(x, offset=11), g))(x)
    assert check.compare(hand, auto, tol=1e-12).ok


def test_scores_depend_on_relative_positions_only(key):
    kq, kk = jax.random.split(key)
    q, k = (jax.random.normal(kk_, (1, 8), jnp.float64) for kk_ in (kq, kk))
    score = lambda m, n: jnp.vdot(ops.rope(q, offset=m), ops.rope(k, offset=n))
    np.testing.assert_allclose(score(3, 1), score(12, 10), rtol=1e-12)
    np.testing.assert_allclose(score(5, 5), jnp.vdot(q, k), rtol=1e-12)


def test_offset_is_traced_one_compile_serves_every_position(key):
    x = jax.random.normal(key, (2, 1, 4), jnp.float64)
    full = ops.rope(jnp.tile(x, (1, 9, 1)))  # the same row at positions 0..8
    step = jax.jit(lambda x, p: ops.rope(x, offset=p))
    for p in (0, 4, 8):
        np.testing.assert_allclose(step(x, jnp.int32(p)), full[:, p : p + 1], rtol=1e-13)
    assert step._cache_size() == 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_flashattention_rule_low_precision(dtype, key):
    x = jax.random.normal(key, (2, 4, 64, 32), jnp.float32)
    offset = jnp.int32(100)
    hand, auto = precision_rule_errors(ops.rope, (x, offset), jnp.dtype(dtype), key=key)
    print(f"rope {dtype}: hand {hand:.2e} vs autodiff-{dtype} {auto:.2e}")
    assert hand <= 2 * auto, (hand, auto)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"rope: the feature size Dh must be even"):
        ops.rope(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"rope: x must have at least 2 dims"):
        ops.rope(jnp.ones(4))
    with pytest.raises(TypeError, match="rope: offset must be an integer array"):
        ops.rope(jnp.ones((2, 4)), offset=jnp.float32(1.0))
    with pytest.raises(ValueError, match="rope: offset must have 0 dims"):
        ops.rope(jnp.ones((2, 4)), offset=jnp.arange(2))
    with pytest.raises(ValueError, match="rope: theta must be a finite number > 1"):
        ops.rope(jnp.ones((2, 4)), theta=0.5)
    with pytest.raises(TypeError, match="rope: offset must be an int"):
        ops.rope(jnp.ones((2, 4)), offset=1.5)
