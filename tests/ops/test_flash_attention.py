"""flash_attention: blockwise forward and FlashAttention-2 backward vs jax.grad of the materialised
reference (float64, 1e-12) over grouped heads, ragged block remainders, S > T and one-block
cases; the FlashAttention accuracy rule in float32 and bfloat16; fully masked blocks never
computed; no T × S buffer in the compiled gradient; bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import check, ops
from funcbp.ops.attention import attention_reference
from funcbp.ops.flash_attention import flash_attention_bwd, flash_attention_fwd

EXACT = 1e-12

CASES = [
    # (q lead, kv lead, T, S, D, Dv, causal, block_size)
    ((2, 4), (2, 2), 7, 9, 3, 2, True, 3),  # GQA, ragged T and S, S > T, 3×3 blocks
    ((3,), (1,), 5, 5, 4, 3, True, 2),  # MQA, T = S ragged
    ((), (), 6, 8, 3, 3, False, 4),  # no head axis, non-causal, ragged S
    ((2,), (1,), 4, 5, 2, 2, True, 1),  # one query and one key per block
]


def _inputs(case, key, dtype=jnp.float64):
    q_lead, kv_lead, t, s, d, dv, causal, block = case
    kq, kk, kv, ku = jax.random.split(key, 4)
    q = 0.7 * jax.random.normal(kq, (*q_lead, t, d), dtype)
    k = 0.7 * jax.random.normal(kk, (*kv_lead, s, d), dtype)
    v = jax.random.normal(kv, (*kv_lead, s, dv), dtype)
    u = jax.random.normal(ku, (*q_lead, t, dv), dtype)  # random cotangent, never ones
    return (q, k, v), u, {"causal": causal, "block_size": block}


def _grad(fn, q, k, v, u):
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * u), argnums=(0, 1, 2))(q, k, v)


def _assert_close(a, b, tol, what):
    report = check.compare(a, b, tol=tol, name=what)
    assert report.ok, str(report)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[2]}S{c[3]}b{c[7]}")
def test_forward_and_grads_match_the_reference_float64(case, key):
    """Forward (outside and inside differentiation), hand gradients and the explicit fwd + bwd
    all equal the materialised reference and jax.grad of it to 1e-12 relative (one compile)."""
    arrays, u, static = _inputs(case, key)
    causal = static["causal"]
    flash = lambda q, k, v: ops.flash_attention(q, k, v, **static)
    ref = lambda q, k, v: attention_reference(q, k, v, causal)

    @jax.jit
    def everything(q, k, v, u):
        out, res = flash_attention_fwd(q, k, v, **static)
        return (
            (flash(q, k, v), out, ref(q, k, v)),
            _grad(flash, q, k, v, u),
            flash_attention_bwd(res, u, **static),
            _grad(ref, q, k, v, u),
        )

    (primal, out, want), hand, explicit, expected = everything(*arrays, u)
    _assert_close(primal, want, EXACT, "primal forward")
    _assert_close(out, want, EXACT, "fwd")
    _assert_close(hand, expected, EXACT, f"hand vs autodiff {case}")
    _assert_close(explicit, expected, EXACT, f"explicit vs autodiff {case}")
    for g, a in zip(explicit, arrays, strict=True):
        assert g.shape == a.shape and g.dtype == a.dtype


def test_residuals_are_q_k_v_o_and_the_row_logsumexp(key):
    arrays, _, static = _inputs(CASES[0], key)
    o, res = flash_attention_fwd(*arrays, **static)
    q = arrays[0]
    assert [r.shape for r in res] == [a.shape for a in arrays] + [o.shape, q.shape[:-1]]
    _, (*_, lse_attention) = ops.attention.fwd(*arrays, causal=True)
    _assert_close(res[4], lse_attention, EXACT, "log-sum-exp")


# -- the FlashAttention accuracy rule -----------------------------------------------------------
def _rule_errors(dtype, key):
    """(hand error, reference error) vs the float64 reference, over output and gradients."""
    case = ((2, 4), (2, 2), 40, 56, 16, 16, True, 16)  # GQA, S > T, ragged T
    (q, k, v), u, static = _inputs(case, key, jnp.float32)
    low = [a.astype(dtype) for a in (q, k, v, u)]  # inputs rounded once, used by all three
    high = [a.astype(jnp.float64) for a in low]
    ref = lambda q, k, v: attention_reference(q, k, v, True)
    flash = lambda q, k, v: ops.flash_attention(q, k, v, **static)

    def both(fn, arrays):
        return jax.jit(lambda q, k, v, u: (fn(q, k, v), *_grad(fn, q, k, v, u)))(*arrays)

    truth = both(ref, high)
    err = lambda got: max(check.relative_error(g, t) for g, t in zip(got, truth, strict=True))
    return err(both(flash, low)), err(both(ref, low))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_flashattention_rule_low_precision(dtype, key):
    """Against a float64 reference, the hand path's error (output and every gradient) is at
    most 2× that of jax.grad of the reference run in the same dtype."""
    hand, reference = _rule_errors(jnp.dtype(dtype), key)
    print(f"flash_attention {dtype}: hand {hand:.2e} vs autodiff-{dtype} {reference:.2e}")
    assert hand <= 2 * reference, (hand, reference)


# -- blocks: skipped, never materialised -------------------------------------------------------
def test_fully_masked_blocks_are_never_computed():
    """NaN values in the last KV block (keys 6, 7) reach only the rows that see it: were any
    fully masked block (query block i < 3, KV block 3) computed, 0 · NaN would spread NaN into
    its rows, as it does for the materialised op. Backward: dq stays finite on those rows."""
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q, k = jax.random.normal(kq, (8, 4)), jax.random.normal(kk, (8, 4))
    v = jax.random.normal(kv, (8, 3)).at[6:].set(jnp.nan)
    flash = lambda q, k, v: ops.flash_attention(q, k, v, causal=True, block_size=2)

    @jax.jit
    def run(q, k, v):
        o, vjp = jax.vjp(flash, q, k, v)
        return o, vjp(jnp.ones_like(o).at[6:].set(0.0))[0], ops.attention(q, k, v, causal=True)

    o, dq, materialised = run(q, k, v)
    assert np.isfinite(o[:6]).all() and np.isnan(o[6:]).all()
    assert np.isnan(materialised).all()
    assert np.isfinite(dq[:6]).all()


def test_gradient_holds_no_t_by_s_buffer():
    """jit(grad) temporaries at T = S = 1024 stay below a quarter of ONE T × S float32 buffer
    (the materialised rule keeps several). Compiled only, never run."""
    t, block = 1024, 64
    x = jax.ShapeDtypeStruct((2, t, 16), jnp.float32)
    loss = lambda q, k, v: jnp.sum(ops.flash_attention(q, k, v, block_size=block))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < t * t * 4 / 4, temp


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "block_size,err,match",
    [
        (0, ValueError, r"flash_attention: block_size must be a positive int, got 0"),
        (2.0, ValueError, r"flash_attention: block_size must be a positive int, got 2.0"),
        (True, ValueError, r"flash_attention: block_size must be a positive int, got True"),
    ],
)
def test_bad_block_size(block_size, err, match):
    q = jnp.zeros((2, 3, 4))
    with pytest.raises(err, match=match):
        ops.flash_attention(q, q, q, block_size=block_size)


def test_bad_shapes_name_the_op_and_shapes():
    q, k = jnp.zeros((2, 3, 4, 4)), jnp.zeros((2, 2, 5, 4))
    with pytest.raises(ValueError, match=r"flash_attention: q's H=3 heads .*G=2.*q \(2, 3, 4, 4\)"):
        ops.flash_attention(q, k, k)
    with pytest.raises(ValueError, match=r"flash_attention: causal=True needs S >= T"):
        ops.flash_attention(jnp.zeros((2, 6, 4)), jnp.zeros((2, 5, 4)), jnp.zeros((2, 5, 4)))
