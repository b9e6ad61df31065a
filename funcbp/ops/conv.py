"""2-D convolution (cross-correlation, as in every deep-learning library), NHWC / HWIO.

``Y = conv2d(X, W, b)`` with X ``(N, H, W, C)``, W ``(KH, KW, C, O)``, b ``(O,)`` ->
Y ``(N, HO, WO, O)``.  The backward is derived by hand (see `conv2d_bwd`): dX is a transposed
convolution of dY with the flipped kernel, dW a correlation of X with dY. `conv2d_reference`
is the plain `lax.conv_general_dilated` ground truth; the custom-VJP forward and backward run
one of two formulations of the same maps, chosen per call by a static size rule (`use_gemm`):

* **gemm** (im2col): P = the KH·KW shifted (strided) slices of the padded X concatenated on the
  channel axis (no gather), (N·HO·WO, K = KH·KW·C). Y = P·W₂, dW₂ = Pᵀ·dY, dP = dY·W₂ᵀ with
  dX = col2im(dP) (each tap's slice of dP padded back to its place and summed: one fused pass).
  Three GEMMs; the backward's P is the forward's (XLA merges the two in a jitted step).
* **lax**: `lax.conv_general_dilated` for Y, dX (transposed conv) and dW (correlation).

The rule (`use_gemm`) comes from measurements on a 2-core CPU with jax 0.10.2
(``benchmarks/conv_study.py``; the numbers and their reading are in benchmarks/RESULTS.md,
"conv2d: the gemm/lax size rule"): gemm pays for few input channels, 1×1 kernels and whole
train steps with a moderate im2col matrix P, and loses for many taps or P > 16 MiB.

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
from funcbp.ops._precision import acc_dtype, acc_sum

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


# -- the two formulations --------------------------------------------------------------------
# Both compute the same three maps for any stride and padding; `use_gemm` picks one per call.
# Shapes: X (N,H,W,C), W (KH,KW,C,O), dY (N,HO,WO,O), K = KH·KW·C; pads ((h_lo, h_hi), (w_lo,
# w_hi)); strides (SH, SW).
def _patches(x, kh, kw, strides, pads, out_hw):
    """im2col: P[n,i,j,(p·KW + q)·C + c] = Xp[n, SH·i + p, SW·j + q, c] -> (N, HO, WO, K).

    Built from KH·KW strided slices of the zero-padded X concatenated on the channel axis (no
    gather), so the column order (p, q, c) is that of ``W.reshape(K, O)``.
    """
    (sh, sw), ((h_lo, h_hi), (w_lo, w_hi)), (ho, wo) = strides, pads, out_hw
    n, c = x.shape[0], x.shape[3]
    zero = jnp.zeros((), x.dtype)
    xp = lax.pad(x, zero, ((0, 0, 0), (h_lo, h_hi, 0), (w_lo, w_hi, 0), (0, 0, 0)))
    cols = [
        lax.slice(
            xp, (0, p, q, 0), (n, p + sh * (ho - 1) + 1, q + sw * (wo - 1) + 1, c), (1, sh, sw, 1)
        )  # (N, HO, WO, C): the input under kernel tap (p, q) for every output position
        for p in range(kh)
        for q in range(kw)
    ]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=3)  # (N, HO, WO, K)


def _y_gemm(x, w, strides, pads, out_hw):
    """Y = P · W₂ (one GEMM, (N·HO·WO, K) × (K, O)), W₂ = W.reshape(K, O)."""
    kh, kw, c, o = w.shape
    p = _patches(x, kh, kw, strides, pads, out_hw)  # (N, HO, WO, K)
    return lax.dot_general(p, w.reshape(kh * kw * c, o), (((3,), (0,)), ((), ())))


def _dw_gemm(x, w, dy, strides, pads):
    """dW₂ = Pᵀ · dY (one GEMM contracting N·HO·WO), reshaped to (KH, KW, C, O)."""
    kh, kw, c, o = w.shape
    ho, wo = dy.shape[1:3]
    k = kh * kw * c
    p = _patches(x, kh, kw, strides, pads, (ho, wo)).reshape(-1, k)  # (N·HO·WO, K)
    # 2-D Pᵀ·dY: XLA's CPU dot runs the transposed operand in place; a 3-axis contraction of
    # the 4-D arrays made it copy P into (K, N·HO·WO) first (measured 1.2–1.25× slower).
    dw = lax.dot_general(
        p, dy.reshape(-1, o), (((0,), (0,)), ((), ())), preferred_element_type=acc_dtype(p, dy)
    )  # (K, O), float32 for half inputs (`funcbp.ops._precision`)
    return dw.reshape(w.shape)


def _dx_gemm(x, w, dy, strides, pads):
    """col2im: dP = dY · W₂ᵀ (one GEMM), then each tap's slice of dP is added back where it
    was read: dXp[n, SH·i + p, SW·j + q, c] += dP[n,i,j,(p,q,c)].

    Tap (p, q) as `lax.pad` of dP[..., p, q, :] (N,HO,WO,C): interior padding SH − 1 puts row i
    at SH·i, low padding p shifts it; cropping dXp to [lo, lo + H) is folded into the edges:
    low p − lo, high H + lo − p − SH·(HO − 1) − 1 (negative edges crop). Rows: (p − lo) +
    SH·(HO − 1) + 1 + (H + lo − p − SH·(HO − 1) − 1) = H. The KH·KW pads and adds fuse into one
    pass over dP.
    """
    kh, kw, c, o = w.shape
    (sh, sw), ((h_lo, _), (w_lo, _)) = strides, pads
    h, wd = x.shape[1:3]
    n, ho, wo = dy.shape[:3]
    dp = lax.dot_general(dy, w.reshape(kh * kw * c, o), (((3,), (1,)), ((), ())))  # (N,HO,WO,K)
    dp = dp.reshape(n, ho, wo, kh, kw, c)
    zero = jnp.zeros((), dy.dtype)
    dx = None
    for p in range(kh):
        for q in range(kw):
            config = (
                (0, 0, 0),
                (p - h_lo, h + h_lo - p - sh * (ho - 1) - 1, sh - 1),
                (q - w_lo, wd + w_lo - q - sw * (wo - 1) - 1, sw - 1),
                (0, 0, 0),
            )
            tap = lax.pad(dp[:, :, :, p, q, :], zero, config)  # (N, H, W, C)
            dx = tap if dx is None else dx + tap
    return dx


def _y_lax(x, w, strides, pads):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DN)  # (N,HO,WO,O)


def _remainders(x_shape, k_hw, strides, pads, out_hw):
    """r = (Hp − KH) mod SH per spatial dim: padded rows/cols after the last window."""
    return [
        size + lo + hi - k - s * (out - 1)
        for size, (lo, hi), k, s, out in zip(x_shape[1:3], pads, k_hw, strides, out_hw, strict=True)
    ]


def _dx_lax(x, w, dy, strides, pads):
    """Transposed convolution: dY dilated by the stride, correlated with the flipped kernel."""
    kh, kw = w.shape[:2]
    rest = _remainders(x.shape, (kh, kw), strides, pads, dy.shape[1:3])
    w_flip = jnp.flip(w, axis=(0, 1)).swapaxes(2, 3)  # (KH, KW, O, C)
    dx_pads = [
        (k - 1 - lo, k - 1 - hi + r) for k, (lo, hi), r in zip((kh, kw), pads, rest, strict=True)
    ]
    return lax.conv_general_dilated(
        dy, w_flip, (1, 1), dx_pads, lhs_dilation=strides, dimension_numbers=_DN
    )  # (N, H, W, C)


def _dw_lax(x, w, dy, strides, pads):
    """Correlation of Xp with dY dilated by the stride (C as batch, N contracted)."""
    rest = _remainders(x.shape, w.shape[:2], strides, pads, dy.shape[1:3])
    dw_pads = [(lo, hi - r) for (lo, hi), r in zip(pads, rest, strict=True)]
    return lax.conv_general_dilated(
        x,
        dy,
        (1, 1),
        dw_pads,
        rhs_dilation=strides,
        dimension_numbers=("CHWN", "IHWO", "HWNC"),
        preferred_element_type=acc_dtype(x, dy),
    )  # (KH, KW, C, O), float32 for half inputs


GEMM_MAX_PATCH_BYTES = 16 * 2**20
"""`use_gemm`: the largest im2col matrix P (N·HO·WO·KH·KW·C elements, in bytes) it builds."""


def use_gemm(x_shape, w_shape, out_hw, itemsize) -> bool:
    """The static size rule (measured, see the module docstring): the GEMM formulation iff

    * the kernel is 1×1 (P is X itself, or a strided slice of it: conv2d *is* one GEMM), or
    * P fits in `GEMM_MAX_PATCH_BYTES` and either C ≤ 8 (lax's convolutions are slow on few
      input channels) or the kernel has at most 9 taps, C ≤ 64 and O ≥ 32 (enough output
      channels to pay for writing P and reading dP once each; many taps or wide inputs: the
      lax kernels win).

    ``x_shape`` (N, H, W, C), ``w_shape`` (KH, KW, C, O), ``out_hw`` (HO, WO), ``itemsize``
    bytes per element.
    """
    n, c = x_shape[0], x_shape[3]
    kh, kw, _, o = w_shape
    taps = kh * kw
    if taps == 1:
        return True
    if n * out_hw[0] * out_hw[1] * taps * c * itemsize > GEMM_MAX_PATCH_BYTES:
        return False
    return c <= 8 or (taps <= 9 and c <= 64 and o >= 32)


def _geometry(x, w, stride, padding):
    """``(strides, pads, (HO, WO))`` of a call."""
    strides = _strides(stride)
    pads = _pads(padding, x.shape[1:3], w.shape[:2], strides)
    out_hw = tuple(
        (size + lo + hi - k) // s + 1
        for size, (lo, hi), k, s in zip(x.shape[1:3], pads, w.shape[:2], strides, strict=True)
    )
    return strides, pads, out_hw


_METHODS = ("gemm", "lax")


def _plan(method, x, w, out_hw) -> tuple[str, str, str]:
    """The formulation of (Y, dX, dW): ``method`` "gemm"/"lax" for all three, a triple of them,
    or None for the size rule `use_gemm`."""
    if method is None:
        gemm = use_gemm(x.shape, w.shape, out_hw, jnp.dtype(x.dtype).itemsize)
        method = "gemm" if gemm else "lax"
    plan = (method,) * 3 if isinstance(method, str) else tuple(method)
    if len(plan) != 3 or any(m not in _METHODS for m in plan):
        raise ValueError(
            f"conv2d: method must be 'gemm', 'lax', a triple of them or None, got {method!r}"
        )
    return plan


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


def conv2d_fwd(x, w, b, stride=1, padding="SAME", *, method=None):
    """Keeps X (dW correlates X with dY) and W (dX convolves dY with W); b is not needed.

    The im2col matrix P that the GEMM forward builds is not kept (K/C = KH·KW times the size of
    X): the backward rebuilds it from X with the same ops, which XLA merges with the forward's
    copy (CSE) when both run in one jitted step, and an un-jitted or rematerialised backward
    pays one cheap copy pass instead of holding 9× X. ``method``: "gemm", "lax" or None (the
    size rule `use_gemm`); for benchmarks and tests only.
    """
    strides, pads, out_hw = _geometry(x, w, stride, padding)
    if _plan(method, x, w, out_hw)[0] == "gemm":
        y = _y_gemm(x, w, strides, pads, out_hw)  # (N, HO, WO, O)
    else:
        y = _y_lax(x, w, strides, pads)
    return y + b.reshape(1, 1, 1, -1), (x, w)


def conv2d_bwd(res, dy, stride=1, padding="SAME", *, method=None):
    """dX = dY ⋆ᵀ W (transposed conv, flipped kernel);  dW = X ⋆ dY;  db = Σ_{n,i,j} dY.

    Shapes: X (N,H,W,C), W (KH,KW,C,O), dY (N,HO,WO,O). Per spatial dim (shown for H; W alike)
    with padding (lo, hi), Hp = H + lo + hi and HO = ⌊(Hp − KH)/SH⌋ + 1, the rows of Xp that
    the last window does not reach are r = (Hp − KH) mod SH, so Hp = SH·(HO − 1) + KH + r.

    Forward: Y[n,i,j,o] = b[o] + Σ_{p,q,c} Xp[n, SH·i + p, SW·j + q, c] W[p,q,c,o].

    db[o] = Σ_{n,i,j} dY[n,i,j,o].

    GEMM formulation (`use_gemm`). With P the im2col matrix of X (`_patches`, rows (n,i,j),
    columns (p,q,c)) the forward is Y = P W₂ + b, W₂ = W.reshape(K, O), a linear map, so
      dW₂ = Pᵀ dY                       (`_dw_gemm`),
      dP  = dY W₂ᵀ,  dX = im2colᵀ(dP)   (`_dx_gemm`: col2im, each dP entry added back to the
                                         Xp entry it was copied from, then Xp cropped to X).

    lax formulation (the same maps as convolutions, run by `lax.conv_general_dilated`):

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
    strides, pads, out_hw = _geometry(x, w, stride, padding)
    _, dx_method, dw_method = _plan(method, x, w, out_hw)
    db = acc_sum(dy, (0, 1, 2))  # (O,)
    dw = (_dw_gemm if dw_method == "gemm" else _dw_lax)(x, w, dy, strides, pads)  # (KH,KW,C,O)
    if dx_method == dw_method == "gemm":
        # dW before dP: P (K/C times X, shared with the forward) is freed before dP (as big)
        # is made. Without this ordering hint XLA kept both alive: the CNN step's temp memory
        # 22.3 MiB, with it 20.4 MiB (autodiff's: 20.7 MiB); its speed is unchanged.
        dw, dy = lax.optimization_barrier((dw, dy))
    dx = (_dx_gemm if dx_method == "gemm" else _dx_lax)(x, w, dy, strides, pads)  # (N, H, W, C)
    return dx, dw, db


def conv2d_jvp(primals, tangents, stride=1, padding="SAME"):
    """dY = P(dX) W₂ + P(X) dW₂ + db: the product rule on the im2col form Y = P(X) W₂ + b.

    Y[n,i,j,o] = b[o] + Σ_{p,q,c} Xp[n, SH·i + p, SW·j + q, c] W[p,q,c,o] is bilinear in X and
    W, and both zero-padding and im2col are linear (P(X + dX) = P(X) + P(dX)), so a step
    (dX, dW, db) moves Y by
      dY[n,i,j,o] = Σ_{p,q,c} (dXp[n, SH·i+p, SW·j+q, c] W[p,q,c,o]
                              + Xp[n, SH·i+p, SW·j+q, c] dW[p,q,c,o]) + db[o]
    i.e. two forward convolutions with the same stride and padding (N, HO, WO, O): forward mode
    runs the forward map on the tangents, with no transposed convolution (the backward's two
    maps are the transposes of these). Both terms use the GEMM formulation, whatever the size
    rule: P(X) is shared with Y, and when JAX transposes this rule (reverse mode of
    ``forward_mode``) it meets only slices, pads and GEMMs. JAX's own transpose of
    `lax.conv_general_dilated` in the kernel made XLA CPU (jax 0.10.2) abort in its algebraic
    simplifier ("Window dimensions do not match RHS shape") for some strided shapes, e.g.
    x (2, 2, 4, 1), w (2, 2, 1, 1), stride (3, 2), padding 1 — `jax.grad` of the reference too.
    """
    x, w, b = primals
    dx, dw, db = tangents
    strides, pads, out_hw = _geometry(x, w, stride, padding)
    y = _y_gemm(x, w, strides, pads, out_hw)  # (N, HO, WO, O)
    dy = _y_gemm(dx, w, strides, pads, out_hw) + _y_gemm(x, dw, strides, pads, out_hw)
    return y + b.reshape(1, 1, 1, -1), dy + db.reshape(1, 1, 1, -1)


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
    Op(
        "conv2d",
        conv2d_reference,
        conv2d_fwd,
        conv2d_bwd,
        _sample_conv2d,
        3,
        _validate,
        jvp=conv2d_jvp,
    )
)
