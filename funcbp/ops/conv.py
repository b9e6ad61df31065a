"""2-D convolution (cross-correlation, as in every deep-learning library), NHWC / HWIO.

``Y = conv2d(X, W, b)`` with X ``(N, H, W, C)``, W ``(KH, KW, C, O)``, b ``(O,)`` ->
Y ``(N, HO, WO, O)``.  The backward is derived by hand (see `conv2d_bwd`): dX is a transposed
convolution of dY with the flipped kernel, dW a correlation of X with dY; both are run by
`lax.conv_general_dilated`, used only as a kernel for those formulas.

``stride``: an int or a pair ``(SH, SW)``, each >= 1.
``padding``: ``"SAME"`` (output ``ceil(H / SH)``, the extra row/col of an odd total padding goes
to the high side, as in `lax.padtype_to_pads`), ``"VALID"`` (no padding), an int ``p`` (``p``
zeros on every side), a pair of ints ``(ph, pw)`` (symmetric per spatial dim), or a pair of
``(lo, hi)`` pairs ``((ph_lo, ph_hi), (pw_lo, pw_hi))``. Explicit paddings are >= 0.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from funcbp.ops import _sample
from funcbp.ops._checks import require_float, require_ndim, require_same_dtype
from funcbp.ops._op import Op, register

__all__ = ["conv2d"]

_DN = ("NHWC", "HWIO", "NHWC")
"""Dimension numbers of the forward: x NHWC, w HWIO, y NHWC."""


# -- static configuration -------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pair(op, name, value) -> tuple[int, int]:
    """An int or a pair of ints -> ``(a, b)``; a clear error otherwise."""
    if _is_int(value):
        return value, value
    if isinstance(value, tuple | list) and len(value) == 2 and all(_is_int(v) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")


def _strides(stride) -> tuple[int, int]:
    sh, sw = _pair("conv2d", "stride", stride)
    if sh < 1 or sw < 1:
        raise ValueError(f"conv2d: stride must be >= 1, got {stride!r}")
    return sh, sw


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    """ "SAME": output ceil(size / s); total padding split low = total // 2, high = the rest."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _pads(padding, spatial, kernel, strides) -> tuple[tuple[int, int], tuple[int, int]]:
    """Any accepted ``padding`` -> explicit ``((h_lo, h_hi), (w_lo, w_hi))``, all >= 0."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return (0, 0), (0, 0)
        if mode == "SAME":
            (h, w), (kh, kw), (sh, sw) = spatial, kernel, strides
            return _same_pads(h, kh, sh), _same_pads(w, kw, sw)
        raise ValueError(
            f"conv2d: padding must be 'SAME', 'VALID', an int or pairs of ints, got {padding!r}"
        )
    if _is_int(padding):
        pads = ((padding, padding), (padding, padding))
    elif isinstance(padding, tuple | list) and len(padding) == 2:
        if all(_is_int(p) for p in padding):
            pads = tuple((p, p) for p in padding)
        else:
            pads = tuple(_pair("conv2d", "padding (per spatial dim)", p) for p in padding)
    else:
        raise TypeError(
            "conv2d: padding must be 'SAME', 'VALID', an int, a pair of ints or a pair of "
            f"(lo, hi) pairs, got {padding!r}"
        )
    if any(p < 0 for pair in pads for p in pair):
        raise ValueError(f"conv2d: padding must be >= 0, got {padding!r}")
    return pads


# -- conv2d ---------------------------------------------------------------------------------
def conv2d_reference(x, w, b, stride=1, padding="SAME"):
    """x (N, H, W, C), w (KH, KW, C, O), b (O,) -> (N, HO, WO, O).

    Y[n,i,j,o] = b[o] + Σ_{p,q,c} Xp[n, SH·i + p, SW·j + q, c] · W[p,q,c,o],  Xp = X zero-padded.
    String paddings go to `lax.conv_general_dilated` as they are (its own "SAME" rule), so the
    reference does not share this module's padding arithmetic.
    """
    strides = _strides(stride)
    if isinstance(padding, str):
        pads = padding.upper()
    else:
        pads = _pads(padding, x.shape[1:3], w.shape[:2], strides)
    y = lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DN)  # (N, HO, WO, O)
    return y + b.reshape(1, 1, 1, -1)


def conv2d_fwd(x, w, b, stride=1, padding="SAME"):
    """Keeps X (dW correlates X with dY) and W (dX convolves dY with W); b is not needed."""
    return conv2d_reference(x, w, b, stride, padding), (x, w)


def conv2d_bwd(res, dy, stride=1, padding="SAME"):
    """dX = dY ⋆ᵀ W (transposed conv, flipped kernel);  dW = X ⋆ dY;  db = Σ_{n,i,j} dY.

    Shapes: X (N,H,W,C), W (KH,KW,C,O), dY (N,HO,WO,O). Per spatial dim (shown for H; W alike)
    with padding (lo, hi), Hp = H + lo + hi and HO = ⌊(Hp − KH)/SH⌋ + 1, the rows of Xp that
    the last window does not reach are r = (Hp − KH) mod SH, so Hp = SH·(HO − 1) + KH + r.

    Forward: Y[n,i,j,o] = b[o] + Σ_{p,q,c} Xp[n, SH·i + p, SW·j + q, c] W[p,q,c,o].

    db[o] = Σ_{n,i,j} dY[n,i,j,o].

    dX: Xp[n,u,v,c] is used by every (i, p) with SH·i + p = u, so
      dXp[n,u,v,c] = Σ_{i,j,p,q,o: SH·i+p=u, SW·j+q=v} dY[n,i,j,o] W[p,q,c,o].
    Dilate dY by the stride (D[SH·i] = dY[i], zeros between; length SH·(HO−1)+1); then
      dXp[u] = Σ_p D[u − p] W[p] = Σ_{p'} D[u − KH + 1 + p'] Wf[p']  with Wf[p'] = W[KH−1−p'],
    a stride-1 correlation of D, padded by KH−1 in front, with the flipped kernel whose in/out
    channels are swapped: Wf (KH,KW,O,C). dX = dXp[lo : lo + H]: the crop is folded into the
    padding of D, which is therefore (KH − 1 − lo, KH − 1 − hi + r). The r extra rows at the
    end get no gradient from Y and must still appear in dX (as zeros): that is the +r. Check:
    SH·(HO−1)+1 + 2(KH−1) − lo − hi + r − KH + 1 = Hp − lo − hi = H rows.  Pads may be
    negative (lo > KH − 1): XLA then crops, which is exactly the fold-in.
    => lax.conv_general_dilated(dY, Wf, 1, those pads, lhs_dilation=(SH, SW)) -> (N,H,W,C).

    dW[p,q,c,o] = Σ_{n,i,j} Xp[n, SH·i + p, SW·j + q, c] dY[n,i,j,o]: a correlation of Xp
    (window offsets p, q) with dY dilated by the stride, summing over n. As a convolution,
    C plays the batch, N the contracted feature, dY the kernel (I = N, O = O) with
    rhs_dilation = (SH, SW); its output spatial size is Hp − SH·(HO−1) = KH + r, so X is
    padded (lo, hi − r) to drop the r rows no window uses (hi − r < 0 crops X itself) ->
    output (KH, KW, C, O) laid out "HWNC" (batch C, feature O).
    """
    x, w = res
    (sh, sw) = strides = _strides(stride)
    kh, kw = w.shape[:2]
    pads = _pads(padding, x.shape[1:3], (kh, kw), strides)
    ho, wo = dy.shape[1:3]
    rest = [
        size + lo + hi - k - s * (out - 1)  # r: rows/cols after the last window, < s
        for size, (lo, hi), k, s, out in zip(
            x.shape[1:3], pads, (kh, kw), strides, (ho, wo), strict=True
        )
    ]

    w_flip = jnp.flip(w, axis=(0, 1)).swapaxes(2, 3)  # (KH, KW, O, C)
    dx_pads = [
        (k - 1 - lo, k - 1 - hi + r) for k, (lo, hi), r in zip((kh, kw), pads, rest, strict=True)
    ]
    dx = lax.conv_general_dilated(
        dy, w_flip, (1, 1), dx_pads, lhs_dilation=(sh, sw), dimension_numbers=_DN
    )  # (N, H, W, C)

    dw_pads = [(lo, hi - r) for (lo, hi), r in zip(pads, rest, strict=True)]
    dw = lax.conv_general_dilated(
        x, dy, (1, 1), dw_pads, rhs_dilation=(sh, sw), dimension_numbers=("CHWN", "IHWO", "HWNC")
    )  # (KH, KW, C, O)

    db = dy.sum(axis=(0, 1, 2))  # (O,)
    return dx, dw, db


def _validate(x, w, b, stride=1, padding="SAME"):
    op = "conv2d"
    for name, a in (("x", x), ("w", w), ("b", b)):
        require_float(op, name, a)
    require_ndim(op, "x", x, 4, "(N, H, W, C)")
    require_ndim(op, "w", w, 4, "(KH, KW, C, O)")
    require_ndim(op, "b", b, 1, "(O,)")
    if x.shape[3] != w.shape[2]:
        raise ValueError(
            f"conv2d: x has {x.shape[3]} channels but w expects {w.shape[2]} "
            f"(x {tuple(x.shape)} NHWC, w {tuple(w.shape)} HWIO)"
        )
    if b.shape[0] != w.shape[3]:
        raise ValueError(
            f"conv2d: b has {b.shape[0]} entries but w has {w.shape[3]} output channels "
            f"(w {tuple(w.shape)}, b {tuple(b.shape)})"
        )
    require_same_dtype(op, x=x, w=w, b=b)
    strides = _strides(stride)
    pads = _pads(padding, x.shape[1:3], w.shape[:2], strides)
    for dim, size, (lo, hi), k in zip("HW", x.shape[1:3], pads, w.shape[:2], strict=True):
        if size + lo + hi < k:
            raise ValueError(
                f"conv2d: kernel {dim} size {k} is larger than the padded input "
                f"({size} + {lo} + {hi} = {size + lo + hi}) for x {tuple(x.shape)}, "
                f"w {tuple(w.shape)}, padding {padding!r}"
            )


def _sample_padding(gen, kh, kw):
    """One of the accepted padding forms, chosen at random (explicit ones may be asymmetric)."""
    form = int(gen.integers(0, 5))
    if form == 0:
        return "SAME"
    if form == 1:
        return "VALID"
    if form == 2:
        return int(gen.integers(0, 3))
    if form == 3:
        return (int(gen.integers(0, kh + 1)), int(gen.integers(0, kw + 1)))
    return tuple((int(gen.integers(0, k + 1)), int(gen.integers(0, k + 1))) for k in (kh, kw))


def _sample_conv2d(key, dtype):
    gen = _sample.rng(key)
    n, c, o = (int(v) for v in gen.integers(1, 4, size=3))
    kh, kw = (int(v) for v in gen.integers(1, 4, size=2))
    stride = tuple(int(v) for v in gen.integers(1, 4, size=2))
    padding = _sample_padding(gen, kh, kw)
    # Any H >= KH is valid whatever the padding (odd and even sizes, uneven strides alike).
    h, w_ = (int(gen.integers(k, k + 6)) for k in (kh, kw))
    kx, kw_key, kb = _sample.split3(key)
    x = _sample.normal(kx, (n, h, w_, c), dtype)
    w = _sample.normal(kw_key, (kh, kw, c, o), dtype, scale=1.0 / (kh * kw * c) ** 0.5)
    b = _sample.normal(kb, (o,), dtype)
    return (x, w, b), {"stride": stride, "padding": padding}


conv2d = register(
    Op("conv2d", conv2d_reference, conv2d_fwd, conv2d_bwd, _sample_conv2d, 3, _validate)
)
