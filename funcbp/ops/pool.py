"""2-D max and average pooling, NHWC, "VALID" windows (no padding).

``max_pool2d(x, window=2, stride=2)`` and ``avg_pool2d(x, window=2, stride=2)``: x ``(N, H, W, C)``
-> ``(N, HO, WO, C)`` with ``HO = ⌊(H − WH)/SH⌋ + 1`` (W alike). ``window`` and ``stride`` are an
int or a pair ``(H, W)``, each >= 1; ``stride < window`` gives overlapping windows, whose
gradients add up. Rows/cols after the last window (when ``(H − WH)`` is not a multiple of SH)
are not pooled and get a zero gradient.

Both backwards are built from one transpose: the forward reads window offset ``(p, q)`` of every
output as the strided slice ``x[:, p : p + SH·(HO−1)+1 : SH, q : ... : SW, :]``; the transpose of
that slice is `lax.pad` with lows ``(p, q)``, interior padding ``(SH − 1, SW − 1)`` and the highs
that restore ``(H, W)`` (`_unslice`). dX is the sum over the WH·WW offsets of unsliced pieces.

Max-pool tie rule: the gradient of a window goes entirely to the FIRST maximum in row-major
window order (smallest ``p``, then smallest ``q``), as `jnp.argmax` picks it. `jax.grad` of the
reference (`lax.reduce_window` with `lax.max`) is not documented to follow any particular tie
rule (a probe on CPU, jax 0.10.2, happened to agree with this one), so hand and autodiff are
compared on tie-free inputs only; the tie rule is tested on its own against hand-built examples
and a loop reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcbp.ops import _sample
from funcbp.ops._checks import require_float, require_ndim
from funcbp.ops._op import Op, register

__all__ = ["max_pool2d", "avg_pool2d"]


# -- shared pieces --------------------------------------------------------------------------
def _pair(op, name, value) -> tuple[int, int]:
    """An int or a pair of ints, each >= 1 -> ``(a, b)``; a clear error naming ``op`` otherwise."""
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
    if is_int(value):
        pair = (value, value)
    elif isinstance(value, tuple | list) and len(value) == 2 and all(is_int(v) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {value!r}")
    return pair


def _config(op, window, stride):
    return _pair(op, "window", window), _pair(op, "stride", stride)


def _out_size(size, k, s):
    return (size - k) // s + 1


def _offsets(window):
    """Window offsets ``(p, q)`` in row-major order: index ``k = p·WW + q``."""
    wh, ww = window
    return [(p, q) for p in range(wh) for q in range(ww)]


def _slice(x, p, q, out, stride):
    """Element ``(p, q)`` of every window: ``x[:, p::SH, q::SW, :]`` cut to ``out`` (N,HO,WO,C)."""
    (ho, wo), (sh, sw) = out, stride
    return lax.slice(
        x,
        (0, p, q, 0),
        (x.shape[0], p + sh * (ho - 1) + 1, q + sw * (wo - 1) + 1, x.shape[3]),
        (1, sh, sw, 1),
    )


def _unslice(piece, p, q, size, stride):
    """Transpose of `_slice`: put ``piece`` (N,HO,WO,C) at rows ``p + SH·i``, cols ``q + SW·j`` of
    zeros (N,H,W,C) — a `lax.pad` with interior padding ``stride − 1``."""
    (h, w), (sh, sw) = size, stride
    ho, wo = piece.shape[1:3]
    zero = jnp.zeros((), piece.dtype)
    return lax.pad(
        piece,
        zero,
        (
            (0, 0, 0),
            (p, h - p - sh * (ho - 1) - 1, sh - 1),
            (q, w - q - sw * (wo - 1) - 1, sw - 1),
            (0, 0, 0),
        ),
    )


def _size_token(x):
    """An empty array whose shape is x's ``(H, W)``: residuals must be arrays, and (H, W) are not
    recoverable from the output when windows leave trailing rows/cols. Costs no memory."""
    return jnp.zeros((x.shape[1], x.shape[2], 0), x.dtype)


def _validate(op):
    def validate(x, window=2, stride=2):
        require_float(op, "x", x)
        require_ndim(op, "x", x, 4, "(N, H, W, C)")
        wh, ww = _pair(op, "window", window)
        _pair(op, "stride", stride)
        if x.shape[1] < wh or x.shape[2] < ww:
            raise ValueError(
                f"{op}: window {(wh, ww)} is larger than the input's spatial size "
                f"{tuple(x.shape[1:3])} (x {tuple(x.shape)} NHWC)"
            )

    return validate


# -- max_pool2d -----------------------------------------------------------------------------
def max_pool2d_reference(x, window=2, stride=2):
    """x (N, H, W, C) -> (N, HO, WO, C).  Y[n,i,j,c] = max_{p,q} X[n, SH·i + p, SW·j + q, c]."""
    (wh, ww), (sh, sw) = _config("max_pool2d", window, stride)
    init = np.array(-np.inf, x.dtype)  # concrete: lax then uses its max-pool primitive
    return lax.reduce_window(x, init, lax.max, (1, wh, ww, 1), (1, sh, sw, 1), "VALID")


@jax.custom_jvp
def _max_argmax(patches):
    """(max, first arg-max) over the last axis in ONE reduction pass -> two (...,) arrays.

    A variadic reduce over (value, index) pairs, with the comparator of ``jnp.argmax``: the
    candidate wins if it is larger or NaN (so NaN propagates, as ``max`` does), or equal with a
    smaller index (the first maximum, row-major). ``jnp.max`` and ``jnp.argmax`` separately are
    two passes over the patches (benchmarks/RESULTS.md, "CNN step: max_pool2d's forward in one
    pass"). JAX cannot differentiate a reduce with a custom comparator, hence the JVP below
    (second-order checks run through it).
    """
    axis = patches.ndim - 1
    index = lax.broadcasted_iota(jnp.int32, patches.shape, axis)

    def pick(a, b):
        (av, ai), (bv, bi) = a, b
        b_nan, a_nan = bv != bv, av != av
        better = (bv > av) | (b_nan & ~a_nan)  # larger, or the first NaN
        tied = (bv == av) | (b_nan & a_nan)
        take_b = better | (tied & (bi < ai))
        return lax.select(take_b, bv, av), lax.select(take_b, bi, ai)

    init = (np.array(-np.inf, patches.dtype), np.array(0, np.int32))
    return lax.reduce((patches, index), init, pick, (axis,))


@_max_argmax.defjvp
def _max_argmax_jvp(primals, tangents):
    """d max = the tangent at the arg-max (the first one on ties); the index has none."""
    (patches,), (dpatches,) = primals, tangents
    y, idx = _max_argmax(patches)
    dy = jnp.take_along_axis(dpatches, idx[..., None], axis=-1)[..., 0]
    return (y, idx), (dy, np.zeros(idx.shape, jax.dtypes.float0))


def max_pool2d_fwd(x, window=2, stride=2):
    """Keeps, per output, the window index k = p·WW + q of its first maximum, plus X's (H, W) in
    an empty array. The backward needs only where each max was, not any value: int8 indices
    (when WH·WW <= 127) are 1 byte per output, 1/16 of X's bytes for float32 at window =
    stride = 2, where keeping X (and re-finding the max) would cost all of it."""
    window, stride = _config("max_pool2d", window, stride)
    out = tuple(_out_size(s, k, st) for s, k, st in zip(x.shape[1:3], window, stride, strict=True))
    patches = jnp.stack(
        [_slice(x, p, q, out, stride) for p, q in _offsets(window)], axis=-1
    )  # (N, HO, WO, C, WH·WW)
    y, idx = _max_argmax(patches)  # (N, HO, WO, C): max is exact, so y == the reference
    k = window[0] * window[1]
    idx = idx.astype(jnp.int8 if k <= 127 else jnp.int32)
    return y, (idx, _size_token(x))


def max_pool2d_bwd(res, g, window=2, stride=2):
    """dX[n,u,v,c] = Σ_{i,j: window (i,j) has its first max at (u,v)} g[n,i,j,c].

    Y[n,i,j,c] = X[n, SH·i + p*, SW·j + q*, c] with (p*, q*) the arg-max offset of window
    (i, j), so ∂Y[n,i,j,c]/∂X[n,u,v,c] = 1 iff (u, v) = (SH·i + p*, SW·j + q*) (ties: only
    the first max, row-major). For each offset (p, q), the outputs whose arg-max is (p, q)
    send g there: dX = Σ_{p,q} unslice_{p,q}( g · [idx == p·WW + q] ), which accumulates the
    gradients of overlapping windows. Shapes: g, idx (N, HO, WO, C) -> dX (N, H, W, C).
    """
    idx, token = res
    window, stride = _config("max_pool2d", window, stride)
    size = token.shape[:2]
    zero = jnp.zeros((), g.dtype)
    dx = None
    for k, (p, q) in enumerate(_offsets(window)):
        piece = jnp.where(idx == k, g, zero)  # (N, HO, WO, C)
        term = _unslice(piece, p, q, size, stride)  # (N, H, W, C)
        dx = term if dx is None else dx + term
    return (dx,)


def max_pool2d_jvp(primals, tangents, window=2, stride=2):
    """dY[n,i,j,c] = dX[n, SH·i + p*, SW·j + q*, c], (p*, q*) the first arg-max of window (i, j).

    Away from ties the max of a window is one fixed entry, Y = X[at (p*, q*)], so it moves
    with that entry's tangent alone: forward mode reads the tangent where the max is (a
    selection of the WH·WW strided slices of dX), the backward sends g back to the same place.
    Ties: the first maximum in row-major window order, as in the backward.
    """
    (x,), (dx,) = primals, tangents
    window, stride = _config("max_pool2d", window, stride)
    out = tuple(_out_size(s, k, st) for s, k, st in zip(x.shape[1:3], window, stride, strict=True))
    offsets = _offsets(window)
    patches = jnp.stack([_slice(x, p, q, out, stride) for p, q in offsets], axis=-1)
    idx = jnp.argmax(patches, axis=-1)  # (N, HO, WO, C): k = p·WW + q of the first max
    zero = jnp.zeros((), dx.dtype)
    dy = None
    for k, (p, q) in enumerate(offsets):
        term = jnp.where(idx == k, _slice(dx, p, q, out, stride), zero)  # (N, HO, WO, C)
        dy = term if dy is None else dy + term
    return jnp.max(patches, axis=-1), dy


# -- avg_pool2d -----------------------------------------------------------------------------
def avg_pool2d_reference(x, window=2, stride=2):
    """x (N, H, W, C) -> (N, HO, WO, C).  Y[n,i,j,c] = mean_{p,q} X[n, SH·i + p, SW·j + q, c]."""
    (wh, ww), (sh, sw) = _config("avg_pool2d", window, stride)
    zero = np.array(0, x.dtype)  # concrete: lax then uses its window-sum primitive
    total = lax.reduce_window(x, zero, lax.add, (1, wh, ww, 1), (1, sh, sw, 1), "VALID")
    return total / (wh * ww)


def avg_pool2d_fwd(x, window=2, stride=2):
    """The map is linear with constant coefficients: the backward needs only X's (H, W)."""
    return avg_pool2d_reference(x, window, stride), (_size_token(x),)


def avg_pool2d_bwd(res, g, window=2, stride=2):
    """dX = Σ_{p,q} unslice_{p,q}(g) / (WH·WW): the transpose of the window sum, scaled.

    ∂Y[n,i,j,c]/∂X[n,u,v,c] = 1/(WH·WW) for every (u, v) = (SH·i + p, SW·j + q) in window
    (i, j), so dX[n,u,v,c] = Σ_{(i,j) ∋ (u,v)} g[n,i,j,c] / (WH·WW). Shapes: g (N, HO, WO, C)
    -> dX (N, H, W, C); overlapping windows add.
    """
    (token,) = res
    window, stride = _config("avg_pool2d", window, stride)
    size = token.shape[:2]
    share = g / (window[0] * window[1])  # (N, HO, WO, C)
    dx = None
    for p, q in _offsets(window):
        term = _unslice(share, p, q, size, stride)  # (N, H, W, C)
        dx = term if dx is None else dx + term
    return (dx,)


def avg_pool2d_jvp(primals, tangents, window=2, stride=2):
    """dY = avg_pool2d(dX): the map is linear with constant coefficients 1/(WH·WW), so its
    JVP is the map itself, applied to the tangent (the backward is its transpose)."""
    (x,), (dx,) = primals, tangents
    return avg_pool2d_reference(x, window, stride), avg_pool2d_reference(dx, window, stride)


# -- samplers -------------------------------------------------------------------------------
def _sample_config(gen):
    window = tuple(int(v) for v in gen.integers(1, 4, size=2))
    stride = tuple(int(v) for v in gen.integers(1, 4, size=2))
    n, c = (int(v) for v in gen.integers(1, 4, size=2))
    h, w = (int(gen.integers(k, k + 6)) for k in window)
    return (n, h, w, c), window, stride


def _sample_max_pool2d(key, dtype):
    """Distinct values: a random permutation of an evenly spaced grid in (−2, 2) plus a jitter of
    at most a quarter of its gap, so any two values differ by >= half the gap (>= 3e-3 at the
    largest sampled size): no window has a tie, even after a finite-difference step. Drawn with
    NumPy (from the key): `jax.random.permutation` would compile a sort for every new shape."""
    gen = _sample.rng(key)
    shape, window, stride = _sample_config(gen)
    size = int(np.prod(shape))
    gap = 4.0 / size
    grid = (np.arange(size) + 0.5) * gap - 2.0  # (−2, 2)
    values = gen.permutation(grid) + gen.uniform(-0.25, 0.25, size) * gap
    return (_sample.host(values.reshape(shape), dtype),), {"window": window, "stride": stride}


def _sample_avg_pool2d(key, dtype):
    gen = _sample.rng(key)
    shape, window, stride = _sample_config(gen)
    return (_sample.normal(key, shape, dtype),), {"window": window, "stride": stride}


max_pool2d = register(
    Op(
        "max_pool2d",
        max_pool2d_reference,
        max_pool2d_fwd,
        max_pool2d_bwd,
        _sample_max_pool2d,
        1,
        _validate("max_pool2d"),
        jvp=max_pool2d_jvp,
    )
)
avg_pool2d = register(
    Op(
        "avg_pool2d",
        avg_pool2d_reference,
        avg_pool2d_fwd,
        avg_pool2d_bwd,
        _sample_avg_pool2d,
        1,
        _validate("avg_pool2d"),
        jvp=avg_pool2d_jvp,
    )
)
