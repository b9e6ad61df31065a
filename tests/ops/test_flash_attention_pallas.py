"""The optional Pallas forward kernel of flash_attention, run in Pallas interpret mode on CPU
(float32): the same output and log-sum-exp as the op's jnp forward (grouped heads, ragged
blocks, S > T, non-causal), fully masked key blocks never loaded, and its residuals give the
exact gradient through the op's backward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import check
from funcbp.ops.attention import attention_reference
from funcbp.ops.flash_attention import flash_attention_bwd, flash_attention_fwd
from funcbp.ops.flash_attention_pallas import flash_attention_pallas_forward

CASES = [
    # (q lead, kv lead, T, S, D, Dv, causal, block_size)
    ((2, 4), (2, 2), 7, 9, 3, 2, True, 3),  # GQA, ragged T and S, S > T
    ((4,), (2,), 5, 3, 2, 2, False, 2),  # non-causal, S < T
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[2]}S{c[3]}b{c[7]}")
def test_pallas_forward_equals_the_op_forward_and_gives_its_gradient(case, key):
    q_lead, kv_lead, t, s, d, dv, causal, block = case
    kq, kk, kv, ku = jax.random.split(key, 4)
    q = 0.7 * jax.random.normal(kq, (*q_lead, t, d), jnp.float32)
    k = 0.7 * jax.random.normal(kk, (*kv_lead, s, d), jnp.float32)
    v = jax.random.normal(kv, (*kv_lead, s, dv), jnp.float32)
    u = jax.random.normal(ku, (*q_lead, t, dv), jnp.float32)
    static = {"causal": causal, "block_size": block}
    o, lse = flash_attention_pallas_forward(q, k, v, **static, interpret=True)
    want_o, (*_, want_lse) = flash_attention_fwd(q, k, v, **static)
    assert check.relative_error(o, want_o) <= 1e-6
    assert check.relative_error(lse, want_lse) <= 1e-6
    loss = lambda q, k, v: jnp.vdot(attention_reference(q, k, v, causal), u)

    @jax.jit
    def both(q, k, v, o, lse):
        grads = flash_attention_bwd((q, k, v, o, lse), u, **static)
        return grads, jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    grads, ref = both(q, k, v, o, lse)
    report = check.compare(grads, ref, tol=check.TOLERANCE["float32"], name="pallas residuals")
    assert report.ok, str(report)


def test_pallas_forward_never_loads_fully_masked_blocks():
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q, k = jax.random.normal(kq, (8, 4)), jax.random.normal(kk, (8, 4))
    v = jax.random.normal(kv, (8, 3)).at[6:].set(jnp.nan)  # the last key block
    o, _ = flash_attention_pallas_forward(q, k, v, causal=True, block_size=2, interpret=True)
    assert np.isfinite(o[:6]).all() and np.isnan(o[6:]).all()
