"""Unembedding ``logits = x Eᵀ``: a language model's output head tied to its token embedding.

A GPT reads its token table ``E`` (V, D) twice: ``embedding(ids, E)`` at the bottom and, at the
top, scores every vocabulary entry against the final hidden state by a dot product with its
row, ``logits_v = ⟨x, E_v⟩``. Writing the head as its own op (rather than ``linear(x, Eᵀ, 0)``)
keeps the table in its stored (V, D) layout in both directions: no transposed copy in the
forward and no transpose of ``dW`` back in the backward, and no zero bias to carry.
"""

from __future__ import annotations

from funcbp.ops import _sample
from funcbp.ops._checks import require_float, require_ndim, require_same_dtype
from funcbp.ops._op import Op, register
from funcbp.ops._precision import acc_matmul

__all__ = ["unembed"]


def unembed_reference(x, table):
    """x: (..., D), table: (V, D) -> logits (..., V).  logits_nv = Σ_d x_nd E_vd."""
    return x @ table.T  # (..., V)


def unembed_fwd(x, table):
    """Forward; keeps x (needed for dE) and the table (needed for dx). Both are alive anyway:
    x is the final hidden state, the table is a parameter, so nothing new is stored."""
    return unembed_reference(x, table), (x, table)


def unembed_bwd(res, g):
    """dx = g E;  dE = Σ_batch gᵀ x.

    With logits_nv = Σ_d x_nd E_vd over flattened leading dims n:
      ∂L/∂x_nd = Σ_v g_nv E_vd           -> dx = g E              (..., D)
      ∂L/∂E_vd = Σ_n g_nv x_nd           -> dE = gᵀ x = Σ_n g_n ⊗ x_n   (V, D)
    (the transpose of linear's dW = Xᵀ dY, because the weight is stored as Eᵀ's transpose).
    Leading dims are flattened so dE is one GEMM whatever the batch rank.
    """
    x, table = res
    dx = g @ table  # (..., D)
    x2 = x.reshape(-1, x.shape[-1])  # (N, D)
    g2 = g.reshape(-1, g.shape[-1])  # (N, V)
    dtable = acc_matmul(g2.T, x2)  # (V, D), float32 for half inputs (`ops._precision`)
    return dx, dtable


def unembed_jvp(primals, tangents):
    """dlogits = dx Eᵀ + x dEᵀ: the product rule for logits_nv = Σ_d x_nd E_vd (bilinear).

    Each term is a forward GEMM of the same shape as the op's own (..., V); the backward's
    dx = g E and dE = gᵀ x are their transposes.
    """
    (x, table), (dx, dtable) = primals, tangents
    return unembed_reference(x, table), dx @ table.T + x @ dtable.T  # (..., V)


def _validate(x, table):
    op = "unembed"
    require_float(op, "x", x)
    require_float(op, "table", table)
    require_ndim(op, "x", x, (1, None), "(..., D)")
    require_ndim(op, "table", table, 2, "(V, D)")
    if x.shape[-1] != table.shape[1]:
        raise ValueError(
            f"unembed: x has {x.shape[-1]} features but the table's rows have {table.shape[1]} "
            f"(x {tuple(x.shape)}, table {tuple(table.shape)})"
        )
    require_same_dtype(op, x=x, table=table)


def _sample_unembed(key, dtype):
    gen = _sample.rng(key)
    n_vocab, dim = (int(v) for v in gen.integers(1, 7, size=2))
    lead = _sample.batch_shape(gen, max_dims=2)
    kx, kt, _ = _sample.split3(key)
    x = _sample.normal(kx, (*lead, dim), dtype)
    table = _sample.normal(kt, (n_vocab, dim), dtype)
    return (x, table), {}


unembed = register(
    Op(
        "unembed",
        unembed_reference,
        unembed_fwd,
        unembed_bwd,
        _sample_unembed,
        2,
        _validate,
        jvp=unembed_jvp,
    )
)
