"""Llama: every parameter's gradient (hand, explicit engine) vs jax.grad of the references
(float64 <= 1e-10), one divergence-report row per leaf, Hugging Face names (round trip,
gradient trees, one block's forward recomputed in NumPy from the flat dict), the KV cache
(cached logits equal the full forward), and clear errors. Configs are tiny: every new shape
compiles the whole model's gradient again."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import check, ops
from funcbp.check import diverge
from funcbp.nn.llama import LlamaConfig, block, from_hf, init_cache, llama, to_hf
from tests.helpers import perturb

TINY = LlamaConfig(vocab=11, context=6, layers=2, width=16, heads=4, kv_heads=2, hidden=24)
TIED = LlamaConfig(vocab=11, context=6, layers=1, width=8, heads=2, kv_heads=1, hidden=12,
                   tie_embeddings=True, attention="flash", block_size=4)  # fmt: skip


def _setup(key, config=TINY, n=2, t=6):
    model = llama(config)
    k_init, k_p, k_x, k_y = jax.random.split(key, 4)
    _, params, state = model.init(k_init, (t,), jnp.float64)
    params = perturb(params, k_p, scale=0.3)  # γ ≠ 1 everywhere
    x = jax.random.randint(k_x, (n, t), 0, config.vocab)
    y = jax.random.randint(k_y, (n, t), 0, config.vocab)
    return model, params, state, x, y


@pytest.mark.parametrize("config", [TINY, TIED], ids=["untied-dense", "tied-flash"])
def test_hand_and_explicit_match_autodiff_float64(config, key):
    model, params, state, x, y = _setup(key, config)
    reports = check.check_model(model, params, state, x, y, name="llama", dtypes=("float64",))
    n_leaves = len(jax.tree.leaves(params))
    per_block = 7  # 2 norms, qkv, o, gate, up, down
    assert n_leaves == 2 + (not config.tie_embeddings) + per_block * config.layers
    for r in reports:
        assert r.worst_rel <= 1e-10, str(r)
        assert len(r.leaves) == n_leaves and all(leaf.ref_norm > 0 for leaf in r.leaves)


def test_divergence_report_has_one_row_per_leaf(key):
    model, params, state, x, y = _setup(key)
    report = diverge.divergence_report(model, params, state, x, y)
    assert report.ok, str(report)
    paths = [r.path for r in report.rows]
    # the loss; tok; 12 leaves a block (attn: norm qkv heads rope attention merge o;
    # mlp: norm gate up swiglu down); norm, head
    assert len(paths) == 1 + 1 + 12 * TINY.layers + 2, paths
    for leaf in ("blocks.1.attn.rope", "blocks.0.mlp.gate_up.up", "blocks.0.attn.attention"):
        assert leaf in paths


def test_round_trip_names_and_gradient_trees(key):
    model, params, state, x, y = _setup(key)
    hf = to_hf(TINY, params)
    assert len(hf) == 1 + 9 * TINY.layers + 2
    assert hf["model.layers.1.self_attn.q_proj.weight"].shape == (16, 16)  # (out, in)
    assert hf["model.layers.1.self_attn.k_proj.weight"].shape == (8, 16)  # G·Dh = 2·4
    assert hf["model.layers.0.mlp.down_proj.weight"].shape == (16, 24)
    back = from_hf(TINY, hf)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    loss = lambda p: ops.softmax_cross_entropy(model.apply(p, state, x)[0], y)
    grads = jax.jit(jax.grad(loss))(params)
    ghf = to_hf(TINY, grads)
    assert set(ghf) == set(hf)
    qkv = grads["blocks"][1]["attn"]["qkv"]["w"]
    np.testing.assert_array_equal(ghf["model.layers.1.self_attn.v_proj.weight"], qkv[24:])
    tied = to_hf(TIED, _setup(key, TIED)[1])
    assert "lm_head.weight" not in tied
    from_hf(TIED, {**tied, "lm_head.weight": tied["model.embed_tokens.weight"]})


def _np_block(hf, i, h, c: LlamaConfig):
    """A Llama decoder layer in NumPy from the HF dict, as transformers computes it."""
    p = lambda name: hf[f"model.layers.{i}.{name}.weight"]
    rms = lambda x, w: w * x / np.sqrt(np.mean(x**2, -1, keepdims=True) + c.eps)
    n, t, _ = h.shape
    dh, rep = c.head_dim, c.heads // c.kv_heads
    heads = lambda a, k: a.reshape(n, t, k, dh).transpose(0, 2, 1, 3)
    a = rms(h, p("input_layernorm"))
    q = heads(a @ p("self_attn.q_proj").T, c.heads)
    k = heads(a @ p("self_attn.k_proj").T, c.kv_heads)
    v = heads(a @ p("self_attn.v_proj").T, c.kv_heads)
    inv_freq = 1.0 / c.rope_theta ** (np.arange(0, dh, 2) / dh)
    emb = np.concatenate([np.outer(np.arange(t), inv_freq)] * 2, -1)  # (T, Dh)
    rot = lambda x: np.concatenate([-x[..., dh // 2 :], x[..., : dh // 2]], -1)
    q, k = (x * np.cos(emb) + rot(x) * np.sin(emb) for x in (q, k))
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)  # repeat_kv
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    o = ((w / w.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(n, t, -1)
    h = h + o @ p("self_attn.o_proj").T
    a = rms(h, p("post_attention_layernorm"))
    g, u = a @ p("mlp.gate_proj").T, a @ p("mlp.up_proj").T
    return h + (g / (1 + np.exp(-g)) * u) @ p("mlp.down_proj").T


def test_one_block_forward_by_hand_from_the_dict(key):
    hf = to_hf(TINY, _setup(key)[1])
    params = from_hf(TINY, hf)
    h = np.asarray(jax.random.normal(key, (2, 5, TINY.width), jnp.float64))
    layer = block(TINY)
    _, _, state = layer.init(key, h.shape[1:], jnp.float64)
    got, _ = layer.apply(params["blocks"][1], state, h)
    np.testing.assert_allclose(got, _np_block(hf, 1, h, TINY), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", [TINY, TIED], ids=["dense", "flash"])
def test_kv_cache_logits_equal_the_full_forward(config, key):
    """Prefill 3 positions, then one token at a time: every logit equals the uncached forward
    of the whole sequence (float64); the cache's position advances."""
    model, params, state, x, _ = _setup(key, config)
    full, _ = model.apply(params, state, x)
    step = jax.jit(lambda p, c, ids: model.apply(p, c, ids))
    cache = init_cache(config, model, 2, 6, jnp.float64)
    logits, cache = step(params, cache, x[:, :3])
    outs = [logits]
    for t in range(3, 6):
        logits, cache = step(params, cache, x[:, t : t + 1])
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-12, atol=1e-12)
    assert int(cache["blocks"][0]["attn"]["attention"]["pos"]) == 6
    assert int(cache["blocks"][0]["attn"]["rope"]["pos"]) == 6


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="heads 4 must be a multiple of kv_heads 3"):
        LlamaConfig(vocab=5, context=4, width=16, heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="an even head size"):
        LlamaConfig(vocab=5, context=4, width=12, heads=4, kv_heads=2)
    with pytest.raises(ValueError, match="attention must be one of"):
        LlamaConfig(vocab=5, context=4, attention="sparse")
    with pytest.raises(TypeError, match="config must be a LlamaConfig"):
        llama({"vocab": 5})
    hf = to_hf(TINY, llama(TINY).init(jax.random.key(0), (4,), jnp.float32)[1])
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.mlp.up_proj.weight'\]"):
        from_hf(TINY, {k: v for k, v in hf.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(ValueError, match="q_proj.weight has shape"):
        from_hf(TINY, {**hf, "model.layers.0.self_attn.q_proj.weight": np.zeros((3, 3))})
