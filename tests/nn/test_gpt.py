"""GPT: every parameter's gradient (hand, explicit engine) vs jax.grad of the references and
finite differences; causality; init; errors; jit; and the tied head's op `unembed`.

Configs are tiny (vocab 7, context 6, 2 layers, 2 heads, width 8): every new shape compiles the
whole model's gradient again.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcbp import backprop, check, ops
from funcbp.nn.gpt import GPTConfig, gpt
from funcbp.ops import REGISTRY
from funcbp.training import make_loss_fn, make_train_step
from tests.helpers import perturb

TINY = GPTConfig(vocab=7, context=6, layers=2, heads=2, width=8)
ONE = GPTConfig(vocab=7, context=6, layers=1, heads=2, width=8)  # for the slower eager tests
seeds = st.integers(0, 2**31 - 1)
FEW = settings(max_examples=2)  # each example compiles the whole model again


def _setup(key, config=TINY, n=3, t=5, dtype=jnp.float64):
    """Model, perturbed params (no γ = 1 / β = 0 / zero bias left), state, ids and targets."""
    model = gpt(config)
    k_init, k_p, k_x, k_y = jax.random.split(key, 4)
    _, params, state = model.init(k_init, (t,), dtype)
    params = perturb(params, k_p, scale=0.3)
    x = jax.random.randint(k_x, (n, t), 0, config.vocab)
    y = jax.random.randint(k_y, (n, t), 0, config.vocab)
    return model, params, state, x, y


def _loss(model, gradients):
    loss_fn = make_loss_fn(model, ops.softmax_cross_entropy, source=gradients)
    return lambda p, s, x, y: loss_fn(p, s, x, y, None, True)[0]


# -- gradients -------------------------------------------------------------------------------
def test_every_param_hand_and_explicit_match_autodiff(key):
    """check_model: hand (custom VJPs under jax.grad) and explicit (no autodiff at all) vs
    jax.grad of the references, leaf by leaf, float64 <= 1e-9 and float32 <= 1e-4."""
    model, params, state, x, y = _setup(key)
    reports = check.check_model(model, params, state, x, y, name="gpt")
    assert {(r.a, r.dtype) for r in reports} == {
        (a, d) for a in ("hand", "explicit") for d in ("float32", "float64")
    }
    n_leaves = len(jax.tree.leaves(params))
    assert n_leaves == 4 + 12 * TINY.layers  # tok, pos, ln_f γ/β; 12 arrays per block
    for r in reports:
        assert r.ok, str(r)
        assert len(r.leaves) == n_leaves
        assert r.worst_rel <= {"float64": 1e-9, "float32": 1e-4}[r.dtype], str(r)
        # every leaf has a real gradient (nothing trivially zero on both sides)
        assert all(leaf.ref_norm > 0 for leaf in r.leaves), str(r)


@FEW
@given(seed=seeds, n=st.integers(1, 3), t=st.integers(1, 6))
def test_directional_derivative_matches_central_differences(seed, n, t):
    """⟨∇L, v⟩ from the hand VJPs vs (L(p + εv) − L(p − εv)) / 2ε of the reference forward,
    float64, along random directions v over *all* params at once (T = 1 … context)."""
    key = jax.random.key(seed)
    model, params, state, x, y = _setup(key, n=n, t=t)
    grad = jax.jit(jax.grad(_loss(model, "hand")))(params, state, x, y)
    loss_ref = jax.jit(_loss(model, "autodiff"))
    eps = 1e-5
    for i in range(3):
        v = perturb(jax.tree.map(jnp.zeros_like, params), jax.random.fold_in(key, i), 1.0)
        shifted = lambda s, v=v: jax.tree.map(lambda p, dp: p + s * eps * dp, params, v)
        fd = (loss_ref(shifted(1.0), state, x, y) - loss_ref(shifted(-1.0), state, x, y)) / (
            2 * eps
        )
        dot = sum(
            jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(v), strict=True)
        )
        assert abs(float(dot) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd))), (dot, fd)


def test_elementwise_finite_differences_on_a_subset(key):
    """A random subset of entries of several leaves (embedding, attention, MLP, final LN) vs
    one-hot central differences of the reference loss, float64."""
    model, params, state, x, y = _setup(key, n=2, t=4)
    grad = jax.jit(jax.grad(_loss(model, "hand")))(params, state, x, y)
    loss_ref = jax.jit(_loss(model, "autodiff"))
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    gflat = jax.tree.leaves(grad)
    rng = np.random.default_rng(0)
    eps = 1e-6
    checked = 0
    for (path, leaf), g in zip(flat, gflat, strict=True):
        name = jax.tree_util.keystr(path)
        wanted = ("tok", "pos", "['qkv']['w']", "['proj']['b']", "['fc']['w']", "['ln_f']['gamma']")
        if not any(s in name for s in wanted):
            continue
        for _ in range(2):
            idx = tuple(int(rng.integers(0, d)) for d in leaf.shape)
            e = jnp.zeros_like(leaf).at[idx].set(eps)
            plus = [lf + e if lf is leaf else lf for _, lf in flat]
            minus = [lf - e if lf is leaf else lf for _, lf in flat]
            fd = (
                loss_ref(treedef.unflatten(plus), state, x, y)
                - loss_ref(treedef.unflatten(minus), state, x, y)
            ) / (2 * eps)
            np.testing.assert_allclose(float(g[idx]), float(fd), rtol=1e-5, atol=1e-9)
            checked += 1
    assert checked >= 12


def test_explicit_engine_equals_jax_grad_unjitted(key):
    """The explicit reverse pass, run eagerly (no jit), equals jax.grad of the references; its
    loss equals the forward's."""
    model, params, state, x, y = _setup(key, ONE, t=6)
    (loss, (_, logits)), grads = backprop.loss_and_grad(
        model, ops.softmax_cross_entropy, params, state, x, y
    )
    want_loss, want = jax.jit(jax.value_and_grad(_loss(model, "autodiff")))(params, state, x, y)
    assert logits.shape == (3, 6, ONE.vocab)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-13)
    report = check.compare(grads, want, tol=1e-9, name="gpt explicit eager")
    assert report.ok, str(report)


def test_tied_table_gradient_is_the_sum_of_both_uses(key):
    """The token table's gradient equals (embedding use) + (head use), each found by jax.grad
    of the references with the other use held fixed."""
    model, params, state, x, y = _setup(key, ONE)
    loss = _loss(model, "autodiff")
    tied = jax.jit(jax.grad(loss))(params, state, x, y)["tok"]["table"]

    def untied(tok_in, tok_out):
        # the same model written out by hand on the references, the head reading tok_out
        h = ops.embedding.autodiff(x, tok_in) + ops.embedding.autodiff(
            jnp.arange(x.shape[1]), params["pos"]["table"]
        ).reshape(1, x.shape[1], -1)
        for b in params["blocks"]:
            a, m = b["attn"], b["mlp"]
            z = ops.layer_norm.autodiff(h, a["ln"]["gamma"], a["ln"]["beta"], ONE.eps)
            qkv = ops.linear.autodiff(z, a["qkv"]["w"], a["qkv"]["b"])
            n, t, _ = qkv.shape
            q, k, v = jnp.split(qkv.reshape(n, t, 3 * ONE.heads, -1).transpose(0, 2, 1, 3), 3, 1)
            o = ops.attention.autodiff(q, k, v, causal=True).transpose(0, 2, 1, 3)
            h = h + ops.linear.autodiff(o.reshape(n, t, -1), a["proj"]["w"], a["proj"]["b"])
            z = ops.layer_norm.autodiff(h, m["ln"]["gamma"], m["ln"]["beta"], ONE.eps)
            z = ops.gelu.autodiff(ops.linear.autodiff(z, m["fc"]["w"], m["fc"]["b"]), True)
            h = h + ops.linear.autodiff(z, m["proj"]["w"], m["proj"]["b"])
        hf = ops.layer_norm.autodiff(h, params["ln_f"]["gamma"], params["ln_f"]["beta"], ONE.eps)
        return ops.softmax_cross_entropy.autodiff(hf @ tok_out.T, y)

    tok = params["tok"]["table"]
    np.testing.assert_allclose(untied(tok, tok), loss(params, state, x, y), rtol=1e-12)
    g_in, g_out = jax.jit(jax.grad(untied, argnums=(0, 1)))(tok, tok)
    assert float(jnp.linalg.norm(g_in)) > 0 and float(jnp.linalg.norm(g_out)) > 0
    np.testing.assert_allclose(tied, g_in + g_out, rtol=1e-10, atol=1e-14)


def test_jitted_train_steps_agree_across_sources(key):
    """One jitted AdamW step: hand and explicit give the same params (autodiff is compared with
    both in the gradient tests)."""
    model, params, state, x, y = _setup(key)
    opt = optax.adamw(1e-2)
    results = []
    for source in ("hand", "explicit"):
        step = make_train_step(model, opt, source=source)
        p, _, _, m = step(params, opt.init(params), state, (x, y), None)
        assert bool(jnp.all(m["finite"]))
        results.append((p, float(m["loss"]), float(m["grad_norm"])))
    (p0, l0, g0), *rest = results
    for p, loss, gnorm in rest:
        assert loss == pytest.approx(l0, rel=1e-13) and gnorm == pytest.approx(g0, rel=1e-9)
        assert check.compare(p, p0, tol=1e-9).ok


# -- forward ---------------------------------------------------------------------------------
def test_logits_are_causal_and_paths_agree(key):
    """Position t's logits do not depend on tokens after t; hand, autodiff and the explicit
    forward compute the same logits, jitted and not."""
    model, params, state, x, _ = _setup(key, t=6)
    logits, _ = model.apply(params, state, x)
    assert logits.shape == (3, 6, TINY.vocab) and logits.dtype == jnp.float64
    changed = x.at[:, 4:].set((x[:, 4:] + 1) % TINY.vocab)
    logits2, _ = jax.jit(lambda p, s, i: model.apply(p, s, i))(params, state, changed)
    np.testing.assert_allclose(logits2[:, :4], logits[:, :4], rtol=1e-12, atol=1e-14)
    assert not np.allclose(logits2[:, 4:], logits[:, 4:])
    auto, _ = model.apply(params, state, x, source="autodiff")
    explicit, _, tape = model.forward(params, state, x)
    np.testing.assert_allclose(auto, logits, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(explicit, logits, rtol=1e-10, atol=1e-13)
    assert set(tape) == {"tok", "pos", "blocks", "ln_f", "head"}
    assert set(tape["blocks"][1]["attn"]) == {"ln", "qkv", "heads", "attention", "merge", "proj"}
    # the head is tied: logits = LN_f(h) Eᵀ with E the token table
    hf = tape["head"][0]  # unembed keeps its input: the final layer norm's output
    np.testing.assert_allclose(logits, hf @ params["tok"]["table"].T, rtol=1e-10, atol=1e-13)


def test_init_follows_gpt2_practice(key):
    config = GPTConfig(vocab=50, context=16, layers=3, heads=4, width=64)
    out_shape, params, state = gpt(config).init(key, (10,), jnp.float32)
    assert out_shape == (10, 50) and jax.tree.leaves(state) == []  # no state anywhere
    assert params["tok"]["table"].shape == (50, 64) and params["pos"]["table"].shape == (16, 64)
    assert len(params["blocks"]) == 3 and params["head"] == {}  # the head is tied to tok
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    a, m = params["blocks"][1]["attn"], params["blocks"][1]["mlp"]
    assert a["qkv"]["w"].shape == (64, 192) and m["fc"]["w"].shape == (64, 256)
    assert m["proj"]["w"].shape == (256, 64)
    for p in (a["qkv"]["b"], a["proj"]["b"], m["fc"]["b"], m["proj"]["b"], a["ln"]["beta"]):
        assert not np.any(p)
    for p in (a["ln"]["gamma"], m["ln"]["gamma"]):
        np.testing.assert_array_equal(p, 1.0)
    np.testing.assert_allclose(np.std(params["tok"]["table"]), 0.02, rtol=0.1)
    np.testing.assert_allclose(np.std(m["fc"]["w"]), 0.02, rtol=0.1)
    residual_std = 0.02 / math.sqrt(2 * config.layers)
    np.testing.assert_allclose(np.std(m["proj"]["w"]), residual_std, rtol=0.1)
    np.testing.assert_allclose(np.std(a["proj"]["w"]), residual_std, rtol=0.15)


def test_bad_config_and_inputs_raise_clear_errors(key):
    with pytest.raises(ValueError, match="width 10 must be divisible by heads 4"):
        GPTConfig(vocab=5, context=4, heads=4, width=10)
    with pytest.raises(ValueError, match="layers must be a positive int"):
        GPTConfig(vocab=5, context=4, layers=0)
    with pytest.raises(TypeError, match="GPTConfig"):
        gpt({"vocab": 5})
    model = gpt(TINY)
    with pytest.raises(ValueError, match=r"PositionEmbedding: input must be \(T, 8\).*T <= 6"):
        model.init(key, (7,), jnp.float32)
    _, params, state = model.init(key, (6,), jnp.float32)
    with pytest.raises(ValueError, match=r"PositionEmbedding: x must be \(N, T, 8\) with 1 <= T"):
        model.apply(params, state, jnp.zeros((2, 7), jnp.int32))
    with pytest.raises(TypeError, match="embedding: ids must be an integer array"):
        model.apply(params, state, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"PositionEmbedding: x must be \(N, T, 8\)"):
        model.forward(params, state, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="source must be one of"):
        model.apply(params, state, jnp.zeros((2, 3), jnp.int32), source="both")
    with pytest.raises(ValueError, match="remat must be an int >= 0"):
        GPTConfig(vocab=5, context=4, remat=-1)


# -- the head's op: unembed ----------------------------------------------------------------
@settings(max_examples=3)
@given(seed=seeds)
def test_unembed_hand_matches_autodiff_and_fd(seed):
    op = REGISTRY["unembed"]
    key = jax.random.key(seed)
    for dtype, b in (
        ("float64", "autodiff"),
        ("float32", "autodiff"),
        ("float64", "fd"),
        ("float64", "explicit"),
    ):
        report = check.check_op(op, key, dtype, "hand", b)
        assert report.ok, str(report)


def test_unembed_values_and_errors(key):
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (2, 3, 4))
    table = jax.random.normal(k2, (5, 4))
    out = jax.jit(ops.unembed)(x, table)
    np.testing.assert_allclose(out, np.einsum("ntd,vd->ntv", x, table), rtol=1e-12)
    g = jax.random.normal(k3, out.shape)
    dx, dtable = jax.grad(lambda a, t: jnp.vdot(ops.unembed(a, t), g), argnums=(0, 1))(x, table)
    np.testing.assert_allclose(dx, np.einsum("ntv,vd->ntd", g, table), rtol=1e-12)
    np.testing.assert_allclose(dtable, np.einsum("ntv,ntd->vd", g, x), rtol=1e-12)
    with pytest.raises(ValueError, match="unembed: x has 3 features but the table's rows have 4"):
        ops.unembed(jnp.ones((2, 3)), table)
    with pytest.raises(ValueError, match=r"unembed: table must have 2 dims \(V, D\)"):
        ops.unembed(x, jnp.ones(4))
    with pytest.raises(TypeError, match="unembed: arrays must share one dtype"):
        ops.unembed(x.astype(jnp.float32), table)


@pytest.mark.parametrize(
    "kw", [{"attention": "flash", "block_size": 4}, {"head": "chunked", "attention": "flash"}]
)
def test_long_context_options_keep_every_gradient(kw, key):
    """Blockwise attention (ragged blocks: T = 5, block 4) and the chunked tied head give the
    same gradients three ways; the chunked head outputs (h, E) for its fused loss."""
    config = GPTConfig(vocab=7, context=6, layers=1, heads=2, width=8, **kw)
    model, params, state, x, y = _setup(key, config)
    loss = ops.unembed_cross_entropy if config.head == "chunked" else ops.softmax_cross_entropy
    for r in check.check_model(model, params, state, x, y, loss=loss, dtypes=("float64",)):
        assert r.ok and r.worst_rel < 1e-9, str(r)
    out, _ = model.apply(params, state, x)
    if config.head == "chunked":
        h, table = out
        assert h.shape == (3, 5, 8) and table is params["tok"]["table"]
    with pytest.raises(ValueError, match="attention must be one of"):
        GPTConfig(vocab=7, context=6, attention="sparse")
