"""attention: hand VJP vs jax.grad of the reference and finite differences, the causal
convention (checked against a loop written from its definition), residuals, transformations
(jit, vmap, grad of grad) and bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcbp import check
from funcbp.ops.attention import (
    attention,
    attention_bwd,
    attention_fwd,
    attention_reference,
)

TOL = check.TOLERANCE
FEW = settings(max_examples=max(2, settings.default.max_examples // 2))
"""For the expensive properties (each example is a new shape: a new compile)."""


@st.composite
def configs(draw, causal=None, well_conditioned=False):
    """(lead, T, S, D, Dv, causal, seed): random leading dims and sizes, S >= T when causal.

    S >= 2 always: with one key the softmax is constant and dq = dk = 0 exactly (relative errors
    against rounding noise say nothing). ``well_conditioned`` (for float32 against the 1e-5
    bound) also asks T >= 2, S >= 3, D, Dv >= 2: on one query and two keys both float32 paths
    can sit ~1e-5 from the exact value (see the op's sampler).
    """
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    causal = draw(st.booleans()) if causal is None else causal
    lo = 1 if well_conditioned else 0
    t = draw(st.integers(1 + lo, 4))
    s_min = 2 + lo
    s = draw(st.integers(max(t, s_min), t + 3)) if causal else draw(st.integers(s_min, 5))
    d, dv = draw(st.integers(1 + lo, 4)), draw(st.integers(1 + lo, 3))
    return lead, t, s, d, dv, causal, draw(st.integers(0, 2**31 - 1))


def _inputs(cfg, dtype=jnp.float64):
    lead, t, s, d, dv, causal, seed = cfg
    kq, kk, kv, ku = jax.random.split(jax.random.key(seed), 4)
    # Scores of std ≈ 0.5: no saturated softmax, whose tiny gradients FD could not resolve.
    q = 0.7 * jax.random.normal(kq, (*lead, t, d), dtype)
    k = 0.7 * jax.random.normal(kk, (*lead, s, d), dtype)
    v = jax.random.normal(kv, (*lead, s, dv), dtype)
    u = jax.random.normal(ku, (*lead, t, dv), dtype)  # random cotangent, never ones
    return (q, k, v), u, causal


def _loss(fn, causal):
    return lambda q, k, v, u: jnp.sum(fn(q, k, v, causal=causal) * u)


def _grads(fn, arrays, u, causal, jit=True):
    g = jax.grad(_loss(fn, causal), argnums=(0, 1, 2))
    return (jax.jit(g) if jit else g)(*arrays, u)


def _assert_close(a, b, tol, what):
    report = check.compare(a, b, tol=tol, name=what)
    assert report.ok, str(report)


def _loop_attention(q, k, v, causal):
    """The definition, one (query, key) pair at a time in NumPy float64: independent of the op."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    lead, (t, d), s = q.shape[:-2], q.shape[-2:], k.shape[-2]
    out = np.zeros((*lead, t, v.shape[-1]))
    for idx in np.ndindex(*lead):
        for i in range(t):
            keys = [j for j in range(s) if not causal or j <= i + (s - t)]
            scores = np.array([q[idx][i] @ k[idx][j] / math.sqrt(d) for j in keys])
            w = np.exp(scores - scores.max())
            w /= w.sum()
            out[idx][i] = sum(wj * v[idx][j] for wj, j in zip(w, keys, strict=True))
    return out


# -- values -----------------------------------------------------------------------------------
@FEW
@given(cfg=configs())
def test_forward_matches_the_definition(cfg):
    arrays, _, causal = _inputs(cfg)
    want = _loop_attention(*arrays, causal)
    both = jax.jit(lambda *a: (attention(*a, causal=causal), attention_fwd(*a, causal=causal)[0]))
    op_out, fwd_out = both(*arrays)
    _assert_close(op_out, want, 1e-12, "attention forward")
    _assert_close(fwd_out, want, 1e-12, "attention_fwd")


def test_causal_is_aligned_at_the_end_like_a_kv_cache(key):
    """Decoding the last T' queries against the whole cache equals the last T' rows of the
    full causal pass (query i of the suffix sits at absolute position S − T' + i)."""
    kq, kk, kv = jax.random.split(key, 3)
    full_t, d = 7, 3
    q = jax.random.normal(kq, (2, full_t, d))
    k = jax.random.normal(kk, (2, full_t, d))
    v = jax.random.normal(kv, (2, full_t, 4))
    full = attention(q, k, v, causal=True)
    for suffix in (1, 3, full_t):
        part = attention(q[:, -suffix:], k, v, causal=True)
        _assert_close(part, full[:, -suffix:], 1e-13, f"suffix {suffix}")
    # T == S: query 0 sees only key 0, so its output is v_0 exactly.
    np.testing.assert_allclose(full[:, 0], v[:, 0], rtol=1e-14)


def test_residuals_are_small_and_exact(key):
    """Residuals are q, k, v, o and L (..., T) only; exp(s − L) rows sum to 1 and L is the
    log-sum-exp of the visible scores (jax.nn.logsumexp over a NumPy mask)."""
    kq, kk, kv = jax.random.split(key, 3)
    t, s, d = 3, 5, 2
    q, k, v = (jax.random.normal(kk_, (4, n, d)) for kk_, n in ((kq, t), (kk, s), (kv, s)))
    o, res = attention_fwd(q, k, v, causal=True)
    assert [r.shape for r in res] == [q.shape, k.shape, v.shape, o.shape, (4, t)]
    assert res[3] is o
    scores = np.einsum("btd,bsd->bts", np.asarray(q), np.asarray(k)) / math.sqrt(d)
    visible = np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)
    want = jax.nn.logsumexp(jnp.asarray(scores), axis=-1, where=jnp.asarray(visible)[None])
    np.testing.assert_allclose(res[4], want, rtol=1e-14)


# -- gradients ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(data=st.data())
def test_hand_matches_autodiff(data, dtype):
    cfg = data.draw(configs(well_conditioned=dtype == "float32"))
    arrays, u, causal = _inputs(cfg, jnp.dtype(dtype))
    hand = _grads(attention, arrays, u, causal)
    ref = _grads(attention_reference, arrays, u, causal)
    for g, a in zip(hand, arrays, strict=True):
        assert g.shape == a.shape and g.dtype == a.dtype
    _assert_close(hand, ref, TOL[dtype], f"attention {dtype} {cfg}")


@pytest.mark.parametrize("causal", [True, False])
@FEW
@given(cfg=st.data())
def test_hand_matches_finite_differences(causal, cfg):
    arrays, u, causal = _inputs(cfg.draw(configs(causal=causal)))
    loss = lambda q, k, v: jnp.sum(attention_reference(q, k, v, causal=causal) * u)
    fd = jax.jit(lambda *a: check.finite_difference_grad(loss, a, (0, 1, 2)))(*arrays)
    hand = _grads(attention, arrays, u, causal)
    _assert_close(hand, fd, check.FD_TOLERANCE["float64"], f"attention vs fd causal={causal}")


@pytest.mark.parametrize("t,s", [(2, 5), (4, 4)])
def test_explicit_bwd_equals_jax_grad_of_reference_unjitted(key, t, s):
    """fwd + bwd called by hand, no jit, T != S and T == S, both mask modes."""
    kq, kk, kv, ku = jax.random.split(key, 4)
    q, k = jax.random.normal(kq, (2, 3, t, 3)), jax.random.normal(kk, (2, 3, s, 3))
    v, u = jax.random.normal(kv, (2, 3, s, 2)), jax.random.normal(ku, (2, 3, t, 2))
    for causal in (True, False):
        _, res = attention_fwd(q, k, v, causal=causal)
        explicit = attention_bwd(res, u, causal=causal)
        ref = _grads(attention_reference, (q, k, v), u, causal, jit=False)
        _assert_close(explicit, ref, TOL["float64"], f"explicit causal={causal}")


def test_masked_keys_get_no_gradient_and_large_scores_stay_finite(key):
    kq, kk, kv, ku = jax.random.split(key, 4)
    t = 4
    # Scores of magnitude ~1e3 in float32: a naive exp would overflow.
    q = 300.0 * jax.random.normal(kq, (t, 3), jnp.float32)
    k = 300.0 * jax.random.normal(kk, (t, 3), jnp.float32)
    v = jax.random.normal(kv, (t, 2), jnp.float32)
    u = jax.random.normal(ku, (t, 2), jnp.float32).at[1:].set(0.0)  # only row 0 is used
    dq, dk, dv = _grads(attention, (q, k, v), u, True)
    for g in (dq, dk, dv):
        assert np.all(np.isfinite(g))
    # Row 0 sees key 0 only: keys 1.. get exactly zero gradient, dv_0 = u_0.
    assert np.all(np.asarray(dk[1:]) == 0) and np.all(np.asarray(dv[1:]) == 0)
    np.testing.assert_allclose(dv[0], u[0], rtol=1e-6)
    ref = _grads(attention_reference, (q, k, v), u, True)
    _assert_close((dq, dk, dv), ref, 1e-4, "large scores float32")


@FEW
@given(cfg=configs())
def test_jit_equals_eager(cfg):
    arrays, u, causal = _inputs(cfg)
    fwd = lambda *a: attention(*a, causal=causal)
    _assert_close(jax.jit(fwd)(*arrays), fwd(*arrays), 1e-12, "forward jit vs eager")
    jitted = _grads(attention, arrays, u, causal, jit=True)
    eager = _grads(attention, arrays, u, causal, jit=False)
    _assert_close(jitted, eager, 1e-12, "grads jit vs eager")


@FEW
@given(cfg=configs(), n=st.integers(2, 3))
def test_vmap_over_an_extra_leading_axis(cfg, n):
    """vmap of per-member grads == grads of the op on the stacked (n, ...) arrays: the members
    are independent, so the batched op's VJP splits into the members' VJPs."""
    lead, t, s, d, dv, causal, seed = cfg
    arrays, u, _ = _inputs(((n, *lead), t, s, d, dv, causal, seed))
    per_member = jax.jit(jax.vmap(jax.grad(_loss(attention, causal), argnums=(0, 1, 2))))
    _assert_close(per_member(*arrays, u), _grads(attention, arrays, u, causal), 1e-12, "vmap")
    ref = jax.vmap(jax.grad(_loss(attention_reference, causal), argnums=(0, 1, 2)))
    _assert_close(per_member(*arrays, u), jax.jit(ref)(*arrays, u), TOL["float64"], "vmap ref")


@FEW
@given(cfg=configs())
def test_reverse_over_reverse(cfg):
    """∇ ⟨∇L, w⟩ (grad of grad through the hand bwd) == the same through the reference."""
    arrays, u, causal = _inputs(cfg)
    w = check.random_cotangent(jax.random.key(cfg[-1] ^ 0xC0FFEE), arrays)

    def hvp(fn):
        g = jax.grad(_loss(fn, causal), argnums=(0, 1, 2))

        def directional(q, k, v):
            return sum(jnp.vdot(a, b) for a, b in zip(g(q, k, v, u), w, strict=True))

        return jax.jit(jax.grad(directional, argnums=(0, 1, 2)))(*arrays)

    _assert_close(hvp(attention), hvp(attention_reference), 1e-9, "attention HVP")


# -- bad input ----------------------------------------------------------------------------------
def _bad(q=(2, 3, 4), k=(2, 5, 4), v=(2, 5, 6), dtypes=("float64",) * 3):
    return tuple(jnp.zeros(sh, dt) for sh, dt in zip((q, k, v), dtypes, strict=True))


@pytest.mark.parametrize(
    "arrays,causal,err,match",
    [
        (_bad(q=(4,)), True, ValueError, r"attention: q must have at least 2 dims"),
        (_bad(k=(5,)), False, ValueError, r"attention: k must have at least 2 dims"),
        (_bad(v=(2, 5, 6), k=(3, 5, 4)), False, ValueError, r"attention: .*identical leading"),
        (_bad(k=(2, 5, 3)), True, ValueError, r"attention: q has feature size D=4 but k has 3"),
        (_bad(v=(2, 6, 6)), True, ValueError, r"attention: k has S=5 keys but v has 6"),
        (_bad(k=(2, 0, 4), v=(2, 0, 6)), False, ValueError, r"attention: at least one key"),
        (_bad(dtypes=("float64", "float32", "float64")), True, TypeError, r"attention: .*dtype"),
        (_bad(dtypes=("int32",) * 3), True, TypeError, r"attention: q must be a floating"),
        (_bad(), 1, TypeError, r"attention: causal must be a Python bool, got 1"),
        (_bad(q=(2, 6, 4)), True, ValueError, r"attention: causal=True needs S >= T.*T=6.*S=5"),
    ],
)
def test_bad_input(arrays, causal, err, match):
    with pytest.raises(err, match=match):
        attention(*arrays, causal=causal)
    with pytest.raises(err, match=match):
        jax.jit(lambda *a: attention(*a, causal=causal))(*arrays)


def test_non_causal_allows_fewer_keys_than_queries():
    q, k, v = _bad(q=(2, 6, 4))
    assert attention(q, k, v, causal=False).shape == (2, 6, 6)


def test_list_input_is_rejected():
    q, k, v = _bad()
    with pytest.raises(TypeError, match=r"attention: q must be an array, got list"):
        attention(q.tolist(), k, v)


# -- grouped heads (GQA / MQA) ------------------------------------------------------------------
GROUPED = [
    # (batch, H, G, T, S, causal): GQA, MQA (G = 1), S > T, non-causal with S < T
    ((2,), 4, 2, 3, 5, True),
    ((), 3, 1, 4, 4, True),
    ((1,), 6, 3, 4, 2, False),
]


def _grouped_inputs(key, batch, h, g, t, s, dtype=jnp.float64):
    kq, kk, kv, ku = jax.random.split(key, 4)
    q = 0.7 * jax.random.normal(kq, (*batch, h, t, 3), dtype)
    k = 0.7 * jax.random.normal(kk, (*batch, g, s, 3), dtype)
    v = jax.random.normal(kv, (*batch, g, s, 2), dtype)
    return (q, k, v), jax.random.normal(ku, (*batch, h, t, 2), dtype)


@pytest.mark.parametrize("batch,h,g,t,s,causal", GROUPED)
def test_grouped_heads_equal_repeated_kv_heads(key, batch, h, g, t, s, causal):
    """Query head i uses kv head i // (H/G): the op equals ordinary multi-head attention on k, v
    repeated H/G times along the head axis, and dk, dv are that attention's dk, dv summed over
    each group of H/G heads; hand == jax.grad of the reference to 1e-12 (float64)."""
    (q, k, v), u = _grouped_inputs(key, batch, h, g, t, s)
    r = h // g
    rep = lambda a: jnp.repeat(a, r, axis=-3)
    fold = lambda a: a.reshape(*a.shape[:-3], g, r, *a.shape[-2:]).sum(axis=-3)

    @jax.jit
    def everything(q, k, v, u):
        fwd = attention(q, k, v, causal=causal), attention(q, rep(k), rep(v), causal=causal)
        dq, dk, dv = jax.grad(_loss(attention, causal), argnums=(0, 1, 2))(q, rep(k), rep(v), u)
        explicit = attention_bwd(attention_fwd(q, k, v, causal=causal)[1], u, causal=causal)
        return fwd, (dq, fold(dk), fold(dv)), explicit

    (out, out_rep), repeated, explicit = everything(q, k, v, u)
    _assert_close(out, out_rep, 1e-13, "grouped forward vs repeated")
    hand = _grads(attention, (q, k, v), u, causal)
    _assert_close(hand, repeated, 1e-12, "grouped vs repeated")
    ref = _grads(attention_reference, (q, k, v), u, causal)
    _assert_close(hand, ref, 1e-12, "grouped hand vs autodiff")
    _assert_close(explicit, ref, 1e-12, "grouped explicit vs autodiff")


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((2, 3, 4, 4), (2, 2, 5, 4), (2, 2, 5, 6)), r"q's H=3 heads must be a multiple of .*G=2"),
        (((2, 4, 4, 4), (3, 2, 5, 4), (3, 2, 5, 6)), r"identical leading dims before the head"),
        (((4, 4, 4), (2, 2, 5, 4), (2, 2, 5, 6)), r"q with 3 dims and k with 4"),
        (((2, 4, 4, 4), (2, 2, 5, 4), (2, 1, 5, 6)), r"k and v must have identical leading"),
    ],
)
def test_grouped_heads_bad_input_names_the_shapes(shapes, match):
    q, k, v = (jnp.zeros(sh) for sh in shapes)
    with pytest.raises(ValueError, match=match) as info:
        attention(q, k, v, causal=False)
    assert f"q {shapes[0]}, k {shapes[1]}, v {shapes[2]}" in str(info.value)
