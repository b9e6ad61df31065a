"""SwiGLU's gate: ``y = silu(a) ⊙ b``, silu(a) = a σ(a) (Shazeer 2020; Llama's MLP).

In a Llama MLP, ``a = x W_gate`` and ``b = x W_up`` are two projections of the same input, and
``down(silu(a) ⊙ b)`` is the block's output. The projections are `funcbp.ops.unembed`-style
GEMMs with their own hand VJPs; this op is the elementwise part between them.

Derivative of silu (σ' = σ(1 − σ)):  silu'(a) = σ(a) + a σ(a)(1 − σ(a)) = σ(a)(1 + a(1 − σ(a))).

Backward (`swiglu_bwd`), elementwise:  da = g ⊙ b ⊙ silu'(a),  db = g ⊙ silu(a).
Forward mode (`swiglu_jvp`): the product rule, dy = silu'(a) ⊙ b ⊙ da + silu(a) ⊙ db.

Residuals: (a, b), the op's inputs: the GEMMs that produced them keep nothing of them, but a
stored σ(a) would be a third array of the same size; σ(a) is recomputed (one exp per element).

Precision: for float16/bfloat16 inputs σ and the products run in float32 and are cast back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcbp.ops import _sample
from funcbp.ops._checks import require_float, require_same_dtype
from funcbp.ops._op import Op, register

__all__ = ["swiglu"]


def _compute_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def swiglu_reference(a, b):
    """a, b: (...) same shape -> (...).  y = a σ(a) ⊙ b."""
    return a * jax.nn.sigmoid(a) * b


def swiglu_fwd(a, b):
    """Forward; keeps a and b (σ(a) is recomputed in the backward: see the module)."""
    c = _compute_dtype(a.dtype)
    ac = a.astype(c)
    return (ac * jax.nn.sigmoid(ac) * b.astype(c)).astype(a.dtype), (a, b)


def swiglu_primal(a, b):
    """The forward outside differentiation: `swiglu_fwd`'s output (its precision rule)."""
    return swiglu_fwd(a, b)[0]


def swiglu_bwd(res, g):
    """da = g ⊙ b ⊙ σ(a)(1 + a(1 − σ(a)));  db = g ⊙ a σ(a).

    y_i = s(a_i) b_i with s(a) = a σ(a) touches one a and one b per entry (a diagonal
    Jacobian): ∂y_i/∂b_i = s(a_i), and ∂y_i/∂a_i = s'(a_i) b_i with
    s'(a) = σ(a) + a σ'(a) = σ(a) + a σ(a)(1 − σ(a)) = σ(a)(1 + a(1 − σ(a))).
    """
    a, b = res
    c = _compute_dtype(a.dtype)
    ac, bc, gc = a.astype(c), b.astype(c), g.astype(c)
    sig = jax.nn.sigmoid(ac)
    da = gc * bc * sig * (1 + ac * (1 - sig))
    db = gc * ac * sig
    return da.astype(a.dtype), db.astype(b.dtype)


def swiglu_jvp(primals, tangents):
    """dy = σ(a)(1 + a(1 − σ(a))) ⊙ b ⊙ da + a σ(a) ⊙ db: y = s(a) ⊙ b is a product, so each
    factor's tangent times the other (the slope s'(a) of `swiglu_bwd`)."""
    (a, b), (da, db) = primals, tangents
    c = _compute_dtype(a.dtype)
    ac, bc = a.astype(c), b.astype(c)
    sig = jax.nn.sigmoid(ac)
    silu = ac * sig
    dy = sig * (1 + ac * (1 - sig)) * bc * da.astype(c) + silu * db.astype(c)
    return (silu * bc).astype(a.dtype), dy.astype(a.dtype)


def _validate(a, b):
    op = "swiglu"
    require_float(op, "a", a)
    require_float(op, "b", b)
    if a.shape != b.shape:
        raise ValueError(
            f"swiglu: a (the gate) and b (the up projection) must have one shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    require_same_dtype(op, a=a, b=b)


def _sample_swiglu(key, dtype):
    """a, b of one random shape (0-3 dims); a of scale 2 reaches σ's tails."""
    gen = _sample.rng(key)
    shape = _sample.batch_shape(gen, max_dims=3, max_size=5)
    ka, kb, _ = _sample.split3(key)
    return (_sample.normal(ka, shape, dtype, 2.0), _sample.normal(kb, shape, dtype)), {}


swiglu = register(
    Op(
        "swiglu",
        swiglu_reference,
        swiglu_fwd,
        swiglu_bwd,
        _sample_swiglu,
        2,
        _validate,
        primal=swiglu_primal,
        jvp=swiglu_jvp,
    )
)
