"""One bit per element: a boolean mask stored as packed ``uint8`` for a backward pass.

A ReLU's backward needs only the sign pattern of its input. Kept as a float array (x or y) that
pattern costs 4 bytes an element (float32), which is free only when a neighbouring layer keeps
the same array anyway; packed, it costs 1/8 byte. The packing is a reduction, and XLA does not
fuse a reduction into its consumer, so the backward reads the packed bytes and no float array
has to stay alive for it.

Layout: the mask, flattened in row-major order and padded with ``False`` to ``8 m`` elements
(``m = ceil(n / 8)``), is viewed as ``(8, m)``; byte ``j`` holds element ``k m + j`` in bit ``k``:

    bits[j] = OR_k  mask[k m + j] << k              k = 0 … 7,  j = 0 … m − 1

Reducing over the leading (major) axis reads 8 contiguous rows, which XLA's CPU backend
vectorises (packing 8 adjacent elements, a reduction over the minor axis, measured about 1.4–2×
slower at 2M elements). Unpacking is elementwise: ``(bits[j] >> k) & 1``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

__all__ = ["pack_mask", "unpack_mask"]


def _shifts():
    """``[[0], [1], …, [7]]``: uint8 (8, 1), bit k's shift down axis 0."""
    return lax.broadcasted_iota(jnp.uint8, (8, 1), 0)


def pack_mask(mask):
    """mask: bool, any shape (n elements) -> uint8 (ceil(n / 8),), the layout above."""
    flat = mask.reshape(-1)
    m = -(-flat.shape[0] // 8)
    rows = jnp.pad(flat, (0, 8 * m - flat.shape[0])).reshape(8, m).astype(jnp.uint8)
    return lax.reduce(rows << _shifts(), jnp.uint8(0), lax.bitwise_or, (0,))  # (m,)


def unpack_mask(bits, shape):
    """bits: uint8 (ceil(n / 8),) from `pack_mask` -> bool of ``shape`` (n elements)."""
    n = math.prod(shape)
    rows = (bits[None, :] >> _shifts()) & jnp.uint8(1)  # (8, m)
    return rows.reshape(-1)[:n].reshape(shape).astype(bool)
