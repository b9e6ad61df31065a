"""linear_cross_entropy: chunked loss and gradients (both placements: in the forward, the op;
recomputed in the backward, the alternative) vs jax.grad of softmax-CE over the full logits in
float64 (1e-12), ragged last chunks, invalid labels; the FlashAttention accuracy rule in float32,
bfloat16 and float16 (dW accumulated in float32); no N × V buffer; bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import check, ops
from funcbp.ops.linear_cross_entropy import (
    linear_cross_entropy_bwd,
    linear_cross_entropy_fwd,
    linear_cross_entropy_recompute,
    linear_cross_entropy_reference,
)

EXACT = 1e-12
VARIANTS = {"forward": ops.linear_cross_entropy, "recompute": linear_cross_entropy_recompute}
CASES = [(7, 3, 5, 3), (5, 2, 3, 1), (6, 3, 4, 100)]  # (N, D, V, chunk_size): ragged, 1, > N


def _inputs(n, d, v, key, dtype=jnp.float64):
    kx, kw, ky = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, d), dtype)
    w = (jax.random.normal(kw, (d, v), dtype) * (2 / np.sqrt(d))).astype(dtype)
    return x, w, jax.random.randint(ky, (n,), 0, v)


def _value_and_grads(fn, x, w, y, g):
    """(g·L, d(g·L)/dx, d(g·L)/dw) in one compile; g a random scalar cotangent (never 1)."""
    f = lambda x, w, y: g * fn(x, w, y)
    return jax.jit(lambda x, w, y: (f(x, w, y), *jax.grad(f, argnums=(0, 1))(x, w, y)))(x, w, y)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("n,d,v,chunk", CASES)
def test_matches_autodiff_of_full_logits_float64(variant, n, d, v, chunk, key):
    x, w, y = _inputs(n, d, v, key)
    g = -1.7
    op = VARIANTS[variant]
    hand = _value_and_grads(lambda *a: op(*a, chunk_size=chunk), x, w, y, g)
    ref = _value_and_grads(linear_cross_entropy_reference, x, w, y, g)
    report = check.compare(hand, ref, tol=EXACT, name=f"{variant} N{n} D{d} V{v} chunk {chunk}")
    assert report.ok, str(report)
    for a, b in zip(hand[1:], (x, w), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype


def test_explicit_fwd_bwd_and_the_evaluation_forward(key):
    """fwd + bwd called by hand (no autodiff), and the op outside differentiation (its primal:
    the loss alone, chunked), equal the reference."""
    x, w, y = _inputs(9, 3, 4, key)
    loss, res = linear_cross_entropy_fwd(x, w, y, chunk_size=4)
    dx, dw, dy = linear_cross_entropy_bwd(res, jnp.asarray(0.3), chunk_size=4)
    assert dy is None
    ref = _value_and_grads(linear_cross_entropy_reference, x, w, y, 0.3)
    report = check.compare((0.3 * loss, dx, dw), ref, tol=EXACT, name="explicit")
    assert report.ok, str(report)
    primal = jax.jit(lambda *a: ops.linear_cross_entropy(*a, chunk_size=2))(x, w, y)
    np.testing.assert_allclose(primal, ref[0] / 0.3, rtol=1e-13)


def test_out_of_range_label_under_jit_gives_nan_loss_and_the_reference_gradient(key):
    """Traced labels cannot be checked up front: a label >= V gives a NaN loss (as
    softmax_cross_entropy) and its row gets zero gradient, exactly as jax.grad of the reference."""
    x, w, y = _inputs(6, 3, 4, key)
    y = y.at[2].set(7)
    hand = _value_and_grads(lambda *a: ops.linear_cross_entropy(*a, chunk_size=4), x, w, y, 1.3)
    ref = _value_and_grads(linear_cross_entropy_reference, x, w, y, 1.3)
    assert np.isnan(hand[0]) and np.isnan(ref[0])
    assert np.all(np.asarray(hand[1][2]) == 0)
    report = check.compare(hand[1:], ref[1:], tol=EXACT, name="invalid label")
    assert report.ok, str(report)


# -- the FlashAttention accuracy rule, dW in float32 ---------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_flashattention_rule_low_precision(dtype, key):
    """Against a float64 reference, the op's error (loss, dx, dw) is at most 2× that of
    jax.grad of the reference run in the same dtype (inputs rounded once, used by both)."""
    x, w, y = _inputs(300, 32, 1000, key, jnp.float32)
    low = jnp.dtype(dtype)
    xl, wl = x.astype(low), w.astype(low)
    truth = _value_and_grads(
        linear_cross_entropy_reference, xl.astype(float), wl.astype(float), y, 1.0
    )
    hand = _value_and_grads(lambda *a: ops.linear_cross_entropy(*a, chunk_size=64), xl, wl, y, 1.0)
    auto = _value_and_grads(linear_cross_entropy_reference, xl, wl, y, 1.0)
    err = lambda got: max(check.relative_error(a, b) for a, b in zip(got, truth, strict=True))
    print(f"linear_cross_entropy {dtype}: hand {err(hand):.2e} vs autodiff-{dtype} {err(auto):.2e}")
    assert [a.dtype for a in hand] == [low] * 3
    assert err(hand) <= 2 * err(auto), (err(hand), err(auto))


def test_dw_is_accumulated_in_float32_for_half_inputs(key):
    x, w, y = _inputs(5, 2, 3, key, jnp.bfloat16)
    _, (dx, dw) = jax.eval_shape(lambda *a: linear_cross_entropy_fwd(*a, chunk_size=2), x, w, y)
    assert dw.dtype == jnp.float32 and dx.dtype == jnp.float32


# -- memory --------------------------------------------------------------------------------------
def test_no_n_by_v_buffer_in_gradient_or_evaluation():
    """jit(grad) and the evaluation forward at N = 2048, V = 4096 (compiled only, never run)
    hold less than a quarter of ONE N × V float32 logits buffer; autodiff holds several."""
    n, d, v = 2048, 64, 4096
    x, w = jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32)
    y = jax.ShapeDtypeStruct((n,), jnp.int32)
    loss = lambda x, w, y: ops.linear_cross_entropy(x, w, y, chunk_size=128)
    logits = n * v * 4
    for fn in (jax.grad(loss, argnums=(0, 1)), loss):
        temp = jax.jit(fn).lower(x, w, y).compile().memory_analysis().temp_size_in_bytes
        assert temp < logits / 4, (fn, temp, logits)
    grad_ref = jax.grad(linear_cross_entropy_reference, argnums=(0, 1))
    ref = jax.jit(grad_ref).lower(x, w, y).compile().memory_analysis().temp_size_in_bytes
    assert ref >= logits


# -- bad input -----------------------------------------------------------------------------------
def _bad(x=(4, 3), w=(3, 5), y=(4,), dtypes=("float32", "float32", "int32")):
    return tuple(jnp.zeros(s, dt) for s, dt in zip((x, w, y), dtypes, strict=True))


@pytest.mark.parametrize(
    "arrays,kw,err,match",
    [
        (_bad(w=(2, 5)), {}, ValueError, r"linear_cross_entropy: x has D=3 features but w has 2"),
        (_bad(y=(5,)), {}, ValueError, r"labels must have one entry per row of x, N=4, got 5"),
        (_bad(x=(4,)), {}, ValueError, r"linear_cross_entropy: x must have 2 dims"),
        (_bad(dtypes=("float32",) * 3), {}, TypeError, r"labels must be an integer array"),
        (_bad(dtypes=("float32", "float64", "int32")), {}, TypeError, r"share one dtype"),
        (_bad(), {"chunk_size": 0}, ValueError, r"chunk_size must be a positive int, got 0"),
    ],
)
def test_bad_input(arrays, kw, err, match):
    with pytest.raises(err, match=match):
        ops.linear_cross_entropy(*arrays, **kw)


def test_concrete_out_of_range_labels_are_rejected():
    x, w, _ = _bad()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\).*got values in \[0, 5\]"):
        ops.linear_cross_entropy(x, w, jnp.asarray([0, 1, 5, 2]))
