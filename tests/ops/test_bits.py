"""The packed bit mask that relu keeps for large activations: layout, round trip, sizes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from funcbp.ops._bits import pack_mask, unpack_mask

SHAPES = st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple)


@given(seed=st.integers(0, 2**31 - 1), shape=SHAPES)
def test_round_trip_and_layout(seed, shape):
    mask = np.random.default_rng(seed).random(shape) < 0.5
    n, m = mask.size, -(-mask.size // 8)
    bits = jax.jit(pack_mask)(jnp.asarray(mask))
    assert bits.dtype == jnp.uint8 and bits.shape == (m,)
    # Bit k of byte j holds element k·m + j of the flattened mask (padding reads as 0).
    flat = np.concatenate([mask.reshape(-1), np.zeros(8 * m - n, bool)])
    want = sum(flat.reshape(8, m)[k].astype(np.uint8) << k for k in range(8)) if m else []
    np.testing.assert_array_equal(np.asarray(bits), np.asarray(want, np.uint8))
    back = jax.jit(unpack_mask, static_argnums=1)(bits, shape)
    assert back.dtype == jnp.bool_ and back.shape == shape
    np.testing.assert_array_equal(np.asarray(back), mask)


def test_eight_to_one():
    """1 byte per 8 elements: a (1024, 4096) float32 activation's mask is 512 KiB, not 16 MiB."""
    shape = (1024, 4096)
    bits = jax.eval_shape(pack_mask, jax.ShapeDtypeStruct(shape, jnp.bool_))
    assert bits.shape == (math.prod(shape) // 8,) and bits.dtype == jnp.uint8
