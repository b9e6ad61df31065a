"""GPT weights to and from Hugging Face GPT-2 names: round trips, gradient trees, one block's
forward recomputed by hand (NumPy) from the flat dict, and clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import ops
from funcbp.nn.gpt import GPTConfig, block, from_hf, gpt, to_hf
from tests.helpers import perturb

CONFIG = GPTConfig(vocab=11, context=7, layers=2, heads=2, width=8)


def _params(key, config=CONFIG):
    _, params, _ = gpt(config).init(key, (config.context,), jnp.float64)
    return perturb(params, key, 0.3)


def test_round_trip_and_names(key):
    params = _params(key)
    state = to_hf(CONFIG, params)
    assert len(state) == 2 + 12 * CONFIG.layers + 2
    assert state["transformer.wte.weight"].shape == (11, 8)
    assert state["transformer.h.1.attn.c_attn.weight"].shape == (8, 24)  # (in, out)
    assert state["transformer.h.0.mlp.c_proj.weight"].shape == (32, 8)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    back = from_hf(CONFIG, state)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    # a GPT2Model state (no "transformer." prefix), mask buffers and a tied lm_head load too
    bare = {k.removeprefix("transformer."): v for k, v in state.items()}
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 7, 7)))
    bare["lm_head.weight"] = state["transformer.wte.weight"]
    again = from_hf(CONFIG, bare, dtype=jnp.float32)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(again))


def test_gradient_trees_convert_too(key):
    params = _params(key)
    x = jax.random.randint(key, (2, 5), 0, CONFIG.vocab)
    model = gpt(CONFIG)

    def loss(p):
        return ops.softmax_cross_entropy(model.apply(p, {}, x)[0][:, :-1], x[:, 1:])

    grads = to_hf(CONFIG, jax.grad(loss)(params))
    assert set(grads) == set(to_hf(CONFIG, params))
    np.testing.assert_array_equal(
        grads["transformer.h.1.attn.c_attn.bias"],
        jax.grad(loss)(params)["blocks"][1]["attn"]["qkv"]["b"],
    )


def _np_block(state, i, h, heads):
    """GPT-2's block in NumPy from the HF dict: h + attn(ln_1(h)), then + mlp(ln_2(·))."""
    p = lambda name: state[f"transformer.h.{i}.{name}"]

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * p(f"{name}.weight") + p(f"{name}.bias")

    n, t, w = h.shape
    qkv = ln(h, "ln_1") @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
    q, k, v = (
        a.reshape(n, t, heads, w // heads).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, -1)
    )
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(w // heads)
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    o = (a / a.sum(-1, keepdims=True)) @ v
    h = (
        h
        + o.transpose(0, 2, 1, 3).reshape(n, t, w) @ p("attn.c_proj.weight")
        + p("attn.c_proj.bias")
    )
    m = ln(h, "ln_2") @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias")
    m = 0.5 * m * (1 + np.tanh(np.sqrt(2 / np.pi) * (m + 0.044715 * m**3)))  # GPT-2's gelu_new
    return h + m @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")


def test_one_block_forward_by_hand_from_the_dict(key):
    state = to_hf(CONFIG, _params(key))
    params = from_hf(CONFIG, state)
    h = np.asarray(jax.random.normal(key, (3, 6, CONFIG.width), jnp.float64))
    want = _np_block(state, 1, h, CONFIG.heads)
    layer = block(CONFIG)
    _, _, layer_state = layer.init(key, h.shape[1:], jnp.float64)
    got, _ = layer.apply(params["blocks"][1], layer_state, h)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_errors_name_what_is_wrong(key):
    state = to_hf(CONFIG, _params(key))
    missing = {k: v for k, v in state.items() if "h.1.mlp" not in k}
    with pytest.raises(ValueError, match=r"missing \['transformer.h.1.mlp.c_fc.weight'"):
        from_hf(CONFIG, missing)
    with pytest.raises(ValueError, match=r"unknown \['transformer.h.2.ln_1.weight'\]"):
        from_hf(CONFIG, {**state, "transformer.h.2.ln_1.weight": np.ones(8)})
    bad = {**state, "transformer.wpe.weight": np.ones((9, 8))}
    with pytest.raises(ValueError, match=r"transformer.wpe.weight has shape \(9, 8\), expected"):
        from_hf(CONFIG, bad)
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        from_hf(CONFIG, {**state, "lm_head.weight": np.zeros((11, 8))})
    with pytest.raises(ValueError, match="to_hf"):
        to_hf(GPTConfig(vocab=12, context=7, layers=2, heads=2, width=8), from_hf(CONFIG, state))
