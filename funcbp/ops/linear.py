"""Linear map ``Y = X W + b``: the fully connected layer of the classic derivation."""

from __future__ import annotations

import jax.numpy as jnp

from funcbp.ops import _sample
from funcbp.ops._checks import require_float, require_ndim, require_same_dtype
from funcbp.ops._op import Op, register
from funcbp.ops._precision import acc_dtype, acc_sum

__all__ = ["linear"]


def _lift(b, ndim):
    """Bias ``(O,)`` -> ``(1, ..., 1, O)`` with ``ndim`` dims (explicit: no rank promotion)."""
    return b.reshape((1,) * (ndim - 1) + b.shape)


def linear_reference(x, w, b):
    """x: (..., I), w: (I, O), b: (O,) -> (..., O).  Y = X W + b."""
    y = x @ w  # (..., O)
    return y + _lift(b, y.ndim)


def linear_fwd(x, w, b):
    """Forward; keeps X (needed for dW) and W (needed for dX). b is not needed by the backward."""
    return linear_reference(x, w, b), (x, w)


def linear_bwd(res, dy):
    """dX = dY Wᵀ;  dW = Σ_batch Xᵀ dY;  db = Σ_batch dY.

    With Y_nj = Σ_i X_ni W_ij + b_j over flattened leading dims n:
      ∂L/∂X_ni = Σ_j dY_nj W_ij          -> dX = dY Wᵀ            (..., I)
      ∂L/∂W_ij = Σ_n X_ni dY_nj          -> dW = Xᵀ dY = Σ_n x_n ⊗ dy_n   (I, O)
      ∂L/∂b_j  = Σ_n dY_nj               -> db = Σ_batch dY       (O,)
    Leading dims are flattened so dW is one GEMM whatever the batch rank. Both products are
    written as contractions (einsum) rather than with ``w.T``/``x.T``: a materialised transpose
    of W is a weight-sized temporary, which at small batch made the whole train step need one
    weight matrix more than autodiff's (benchmarks/RESULTS.md, "MLP sweep: the linear and
    softmax-CE backward forms"). dW and db are sums over the batch: accumulated in float32 for
    half inputs (`funcbp.ops._precision`).
    """
    x, w = res
    dx = jnp.einsum("...o,io->...i", dy, w)  # dY Wᵀ  (..., I)
    x2 = x.reshape(-1, x.shape[-1])  # (N, I)
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, O)
    dw = jnp.einsum("ni,no->io", x2, dy2, preferred_element_type=acc_dtype(x2, dy2))  # Xᵀ dY
    db = acc_sum(dy2, 0)  # (O,)
    return dx, dw, db


def linear_jvp(primals, tangents):
    """dY = dX W + X dW + db: the product rule, term by term (Y is bilinear in X and W).

    Y_nj = Σ_i X_ni W_ij + b_j, so a step (dX, dW, db) moves Y by
      dY_nj = Σ_i dX_ni W_ij + Σ_i X_ni dW_ij + db_j        (..., O)
    (the second-order term dX dW is dropped). Each term is one of the VJP's maps read forwards:
    dX = dY Wᵀ is the transpose of dX ↦ dX W, dW = Xᵀ dY of dW ↦ X dW, db = Σ dY of db ↦ 1 db.
    """
    x, w, b = primals
    dx, dw, db = tangents
    dy = dx @ w + x @ dw  # (..., O)
    return linear_reference(x, w, b), dy + _lift(db, dy.ndim)


def _validate(x, w, b):
    op = "linear"
    for name, a in (("x", x), ("w", w), ("b", b)):
        require_float(op, name, a)
    require_ndim(op, "x", x, (1, None), "(..., in)")
    require_ndim(op, "w", w, 2, "(in, out)")
    require_ndim(op, "b", b, 1, "(out,)")
    if x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"linear: x has {x.shape[-1]} features but w expects {w.shape[0]} "
            f"(x {tuple(x.shape)}, w {tuple(w.shape)})"
        )
    if b.shape[0] != w.shape[1]:
        raise ValueError(
            f"linear: b has {b.shape[0]} entries but w has {w.shape[1]} outputs "
            f"(w {tuple(w.shape)}, b {tuple(b.shape)})"
        )
    require_same_dtype(op, x=x, w=w, b=b)


def _sample_linear(key, dtype):
    gen = _sample.rng(key)
    n_in, n_out = (int(v) for v in gen.integers(1, 7, size=2))
    lead = _sample.batch_shape(gen, max_dims=2)
    kx, kw, kb = _sample.split3(key)
    x = _sample.normal(kx, (*lead, n_in), dtype)
    w = _sample.normal(kw, (n_in, n_out), dtype)
    b = _sample.normal(kb, (n_out,), dtype)
    return (x, w, b), {}


linear = register(
    Op(
        "linear",
        linear_reference,
        linear_fwd,
        linear_bwd,
        _sample_linear,
        3,
        _validate,
        jvp=linear_jvp,
    )
)
