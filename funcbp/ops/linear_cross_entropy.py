"""Chunked linear cross-entropy: mean softmax CE of ``x @ w`` without the N × V logits.

  x (N, D), w (D, V), integer labels (N,) -> L = (1/N) Σ_n (lse(z_n) − z_{n, y_n}),  z = x w.

The output layer of a language model over a large vocabulary: the logits z (N, V) are by far the
largest array of a step (N = 8192 tokens × V = 32768 words is 1 GiB in float32), and autodiff of
``softmax_cross_entropy(x @ w)`` keeps z and its cotangent. Here the N rows are processed in
chunks of ``chunk_size`` rows (the last chunk zero-padded, its padding masked out), so at most
one chunk of logits (chunk_size × V) exists at a time.

The gradient of chunk c needs only that chunk's logits (Liger-Kernel's fused linear
cross-entropy computes it right there):
  dz_c = (softmax(z_c) − onehot(y_c)) / N          (chunk, V), never stored whole
  dx_c = dz_c wᵀ                                    (chunk, D)
  dw  += x_cᵀ dz_c                                  (D, V), accumulated over chunks
and the cotangent g of the scalar loss just scales both: dx = g·dx, dw = g·dw.

Two ways to place that work, both implemented here and measured by
``python -m benchmarks.long_context`` (the numbers are in ``benchmarks/RESULTS.md``):

* **in the forward** (the registered op, as Liger does): one pass over the chunks computes the
  loss *and* dx, dw; the residuals are dx (N, D) and dw (D, V); the backward multiplies by g.
  3 GEMMs of 2·N·D·V FLOPs: exactly autodiff's count.
* **recomputed in the backward** (`linear_cross_entropy_recompute`): the forward keeps only
  the row log-sum-exp (N,), and the backward recomputes each chunk's logits (p = e^{z − lse},
  exact): 4 GEMMs, a third more FLOPs, for residuals of N values instead of N·D + D·V.

Under ``jit(grad)`` both hold one (D, V) accumulator and one chunk of logits at a time, so
their temporary memory is the same to within that accumulator (measured: see RESULTS.md), and
the forward variant does 25% fewer FLOPs: it is the op. The recomputing variant wins only when
the loss is differentiated long after its forward (its residuals are N floats, not D·V).
Outside differentiation (evaluation) the op's primal computes the loss alone, chunk by chunk.

Precision: float16/bfloat16 inputs give float32 logits, softmax and loss (each GEMM accumulates
in float32), dz is rounded to the input dtype for the two gradient GEMMs (as Liger does), and
dw is accumulated over chunks in float32, then cast to w's dtype.

Labels outside [0, V) give a NaN loss row (as `softmax_cross_entropy`); concrete labels are
checked up front.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcbp.ops import _sample
from funcbp.ops._checks import (
    is_concrete,
    require_float,
    require_int,
    require_ndim,
    require_same_dtype,
)
from funcbp.ops._op import Op, register
from funcbp.ops.losses import softmax_cross_entropy_jvp, softmax_cross_entropy_reference

__all__ = ["linear_cross_entropy", "linear_cross_entropy_recompute"]

DEFAULT_CHUNK = 512


def linear_cross_entropy_reference(x, w, labels, chunk_size=DEFAULT_CHUNK):
    """x (N, D), w (D, V), labels int (N,) -> scalar: mean softmax CE of the full logits x w.

    ``chunk_size`` changes how the hand path computes it, not what it computes."""
    del chunk_size
    return softmax_cross_entropy_reference(x @ w, labels)  # via (N, V) logits


# -- chunks -----------------------------------------------------------------------------------
def _acc_dtype(dtype):
    """float32 for half precision inputs, else the input's own float dtype."""
    return jnp.promote_types(dtype, jnp.float32)


def _chunks(x, labels, chunk_size):
    """x (N, D) -> (nc, C, D) and labels -> (nc, C), zero-padded; the padding's row weight is 0.

    Returns (xc, yc, weight) with weight (nc, C) = 1/N on real rows, 0 on padded ones."""
    n = x.shape[0]
    c = min(chunk_size, n)
    nc = -(-n // c)
    pad = nc * c - n
    xc = jnp.pad(x, ((0, pad), (0, 0))).reshape(nc, c, x.shape[1])  # (nc, C, D)
    yc = jnp.pad(labels, (0, pad)).reshape(nc, c)  # (nc, C)
    rows = np.arange(nc * c).reshape(nc, c)
    weight = jnp.asarray(np.where(rows < n, 1.0 / n, 0.0), _acc_dtype(x.dtype))  # (nc, C)
    return xc, yc, weight


def _chunk_loss(x_c, w, y_c, weight_c):
    """One chunk: logits z (C, V) in the accumulator dtype, their row lse (C,), the hit mask
    (C, V) of the labels, the valid-label mask (C,) and the chunk's weighted loss sum."""
    acc = _acc_dtype(x_c.dtype)
    z = jnp.matmul(x_c, w, preferred_element_type=acc)  # (C, V)
    m = lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))  # (C, 1)
    lse = m[:, 0] + jnp.log(jnp.sum(jnp.exp(z - m), axis=-1))  # (C,)
    hit = lax.broadcasted_iota(y_c.dtype, z.shape, 1) == y_c[:, None]  # (C, V)
    valid = (y_c >= 0) & (y_c < w.shape[1])  # (C,)
    z_y = jnp.sum(jnp.where(hit, z, jnp.zeros((), acc)), axis=-1)  # (C,)
    nll = jnp.where(valid, lse - z_y, jnp.nan)  # (C,): NaN for an out-of-range label
    loss = jnp.sum(jnp.where(weight_c > 0, nll * weight_c, jnp.zeros((), acc)))
    return z, lse, hit, valid, loss


def _chunk_grads(x_c, w, z, lse, hit, valid, weight_c):
    """dz = (p − onehot)·weight (C, V), rounded to the input dtype; dx_c = dz wᵀ (C, D) and
    x_cᵀ dz (D, V), both accumulated in the accumulator dtype."""
    acc = _acc_dtype(x_c.dtype)
    dz = jnp.exp(z - lse[:, None]) - hit.astype(acc)  # (C, V): p − onehot
    scale = jnp.where(valid, weight_c, jnp.zeros((), acc))  # (C,): 0 for invalid and padding
    dz = (dz * scale[:, None]).astype(x_c.dtype)  # (C, V)
    dx_c = jnp.matmul(dz, w.T, preferred_element_type=acc)  # (C, D)
    dw_c = jnp.matmul(x_c.T, dz, preferred_element_type=acc)  # (D, V)
    return dx_c, dw_c


def _unchunk(dxc, n):
    """(nc, C, D) -> (N, D): drop the padded rows."""
    return dxc.reshape(-1, dxc.shape[-1])[:n]


# -- the op: gradients in the forward ---------------------------------------------------------
def linear_cross_entropy_primal(x, w, labels, chunk_size=DEFAULT_CHUNK):
    """The loss alone, chunk by chunk (evaluation: no gradient work, no N × V logits)."""
    xc, yc, weight = _chunks(x, labels, chunk_size)

    def step(total, chunk):
        x_c, y_c, weight_c = chunk
        return total + _chunk_loss(x_c, w, y_c, weight_c)[-1], None

    total, _ = lax.scan(step, jnp.zeros((), weight.dtype), (xc, yc, weight))
    return total.astype(x.dtype)


def linear_cross_entropy_fwd(x, w, labels, chunk_size=DEFAULT_CHUNK):
    """Loss and, in the same pass over chunks, dL/dx (N, D) and dL/dw (D, V) for g = 1: the
    residuals (dw accumulated in the accumulator dtype; float32 for half inputs). Each
    chunk's logits are dropped before the next chunk is computed."""
    xc, yc, weight = _chunks(x, labels, chunk_size)

    def step(carry, chunk):
        total, dw = carry
        x_c, y_c, weight_c = chunk
        z, lse, hit, valid, loss = _chunk_loss(x_c, w, y_c, weight_c)  # z: (C, V)
        dx_c, dw_c = _chunk_grads(x_c, w, z, lse, hit, valid, weight_c)
        return (total + loss, dw + dw_c), dx_c

    init = (jnp.zeros((), weight.dtype), jnp.zeros(w.shape, weight.dtype))
    (total, dw), dxc = lax.scan(step, init, (xc, yc, weight))  # dxc: (nc, C, D)
    return total.astype(x.dtype), (_unchunk(dxc, x.shape[0]), dw)


def linear_cross_entropy_bwd(res, g, chunk_size=DEFAULT_CHUNK):
    """dx = g·dx₁,  dw = g·dw₁  (dx₁, dw₁: the gradients for g = 1 from the forward).

    With z = x w and L = (1/N) Σ_n (lse(z_n) − z_{n,y_n}):  ∂L/∂z_nk = (p_nk − [k = y_n]) / N
    (softmax minus one-hot), so dx = dz wᵀ and dw = xᵀ dz = Σ_chunks x_cᵀ dz_c: the sum over
    rows splits over chunks exactly. L is linear in nothing but its own scale, so the VJP for
    cotangent g is g times the g = 1 gradient."""
    dx, dw = res  # (N, D) in x's dtype or wider, (D, V) accumulator dtype
    return (g * dx).astype(g.dtype), (g.astype(dw.dtype) * dw).astype(g.dtype), None


# -- the alternative: recompute the logits in the backward ------------------------------------
def linear_cross_entropy_recompute_fwd(x, w, labels, chunk_size=DEFAULT_CHUNK):
    """Loss; keeps x, w, labels and the row log-sum-exp (N,) only."""
    xc, yc, weight = _chunks(x, labels, chunk_size)

    def step(total, chunk):
        x_c, y_c, weight_c = chunk
        _, lse, *_, loss = _chunk_loss(x_c, w, y_c, weight_c)
        return total + loss, lse

    total, lse = lax.scan(step, jnp.zeros((), weight.dtype), (xc, yc, weight))  # lse (nc, C)
    return total.astype(x.dtype), (x, w, labels, lse)


def linear_cross_entropy_recompute_bwd(res, g, chunk_size=DEFAULT_CHUNK):
    """The same dz, dx, dw as `linear_cross_entropy_bwd`, each chunk's logits recomputed:
    z_c = x_c w and p = exp(z_c − lse_c) (exact, no max or sum needed again)."""
    x, w, labels, lse = res
    xc, yc, weight = _chunks(x, labels, chunk_size)
    acc = weight.dtype

    def step(dw, chunk):
        x_c, y_c, weight_c, lse_c = chunk
        z = jnp.matmul(x_c, w, preferred_element_type=acc)  # (C, V)
        hit = lax.broadcasted_iota(y_c.dtype, z.shape, 1) == y_c[:, None]  # (C, V)
        valid = (y_c >= 0) & (y_c < w.shape[1])  # (C,)
        dx_c, dw_c = _chunk_grads(x_c, w, z, lse_c, hit, valid, weight_c * g.astype(acc))
        return dw + dw_c, dx_c

    dw, dxc = lax.scan(step, jnp.zeros(w.shape, acc), (xc, yc, weight, lse))
    return _unchunk(dxc, x.shape[0]).astype(x.dtype), dw.astype(w.dtype), None


# -- validation and samples -------------------------------------------------------------------
def linear_cross_entropy_jvp(primals, tangents, chunk_size=DEFAULT_CHUNK):
    """dz = dx w + x dw (the product rule of z = x w), then the softmax-CE rule
    (`funcbp.ops.losses.softmax_cross_entropy_jvp`): dL = (1/N) Σ_n ⟨p_n, dz_n⟩ − dz_n[y_n].

    Forward mode is not chunked: it forms the (N, V) tangent dz (one pass of a JVP needs the
    whole row ⟨p_n, dz_n⟩), like `jax.jvp` of the reference does.
    """
    x, w, labels = primals
    dx, dw, dlabels = tangents
    z = x @ w  # (N, V)
    dz = dx @ w + x @ dw  # (N, V)
    return softmax_cross_entropy_jvp((z, labels), (dz, dlabels))


def _validate_for(op):
    def validate(x, w, labels, chunk_size=DEFAULT_CHUNK):
        require_float(op, "x", x)
        require_float(op, "w", w)
        require_int(op, "labels", labels)
        require_ndim(op, "x", x, 2, "(N, D)")
        require_ndim(op, "w", w, 2, "(D, V)")
        require_ndim(op, "labels", labels, 1, "(N,)")
        shapes = f"(x {tuple(x.shape)}, w {tuple(w.shape)}, labels {tuple(labels.shape)})"
        if x.shape[1] != w.shape[0]:
            raise ValueError(
                f"{op}: x has D={x.shape[1]} features but w has {w.shape[0]} rows {shapes}"
            )
        if labels.shape[0] != x.shape[0]:
            raise ValueError(
                f"{op}: labels must have one entry per row of x, N={x.shape[0]}, got "
                f"{labels.shape[0]} {shapes}"
            )
        if x.shape[0] == 0 or w.shape[1] == 0:
            raise ValueError(f"{op}: need N >= 1 rows and V >= 1 classes {shapes}")
        require_same_dtype(op, x=x, w=w)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"{op}: chunk_size must be a positive int, got {chunk_size!r}")
        if is_concrete(labels):
            lab = np.asarray(labels)
            if lab.min() < 0 or lab.max() >= w.shape[1]:
                raise ValueError(
                    f"{op}: labels must lie in [0, {w.shape[1]}) for V={w.shape[1]} classes, "
                    f"got values in [{lab.min()}, {lab.max()}]"
                )

    return validate


def _sample_lce(key, dtype):
    """N rows in 2..9, D in 1..4, V in 2..6, chunks of 1..4 rows (several, the last ragged)."""
    gen = _sample.rng(key)
    n, d, v = int(gen.integers(2, 10)), int(gen.integers(1, 5)), int(gen.integers(2, 7))
    kx, kw, _ = _sample.split3(key)
    x = _sample.normal(kx, (n, d), dtype)
    w = _sample.normal(kw, (d, v), dtype)
    labels = _sample.host(gen.integers(0, v, size=n), jnp.int32)
    return (x, w, labels), {"chunk_size": int(gen.integers(1, 5))}


linear_cross_entropy = register(
    Op(
        "linear_cross_entropy",
        linear_cross_entropy_reference,
        linear_cross_entropy_fwd,
        linear_cross_entropy_bwd,
        _sample_lce,
        3,
        _validate_for("linear_cross_entropy"),
        primal=linear_cross_entropy_primal,
        jvp=linear_cross_entropy_jvp,
    )
)

linear_cross_entropy_recompute = Op(
    "linear_cross_entropy_recompute",
    linear_cross_entropy_reference,
    linear_cross_entropy_recompute_fwd,
    linear_cross_entropy_recompute_bwd,
    _sample_lce,
    3,
    _validate_for("linear_cross_entropy_recompute"),
    primal=linear_cross_entropy_primal,
    jvp=linear_cross_entropy_jvp,
)
"""The same op with the logits recomputed in the backward (not registered: measured beside
`linear_cross_entropy` by the benchmark, checked by tests/ops/test_linear_cross_entropy.py)."""
