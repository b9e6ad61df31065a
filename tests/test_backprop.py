"""The explicit reverse pass equals jax.grad (hand path) and jax.grad of the references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from funcbp import backprop, check, nn, ops
from tests.helpers import perturb


def _setup(seed, dtype):
    gen = jax.random.key(seed)
    k_sizes, k_init, k_noise, k_x, k_y = jax.random.split(gen, 5)
    sizes_rng = __import__("numpy").random.default_rng(seed)
    n_in = int(sizes_rng.integers(1, 6))
    hidden = [int(h) for h in sizes_rng.integers(1, 7, size=int(sizes_rng.integers(0, 3)))]
    classes = int(sizes_rng.integers(2, 5))
    batch = int(sizes_rng.integers(1, 6))
    activation = str(sizes_rng.choice(["relu", "tanh", "sigmoid", "gelu", "leaky_relu"]))
    model = nn.mlp([*hidden, classes], activation=activation)
    _, params, state = model.init(k_init, (n_in,), dtype)
    params = perturb(params, k_noise)
    x = jax.random.normal(k_x, (batch, n_in), dtype)
    y = jax.random.randint(k_y, (batch,), 0, classes)
    return model, params, state, x, y


@given(st.integers(0, 2**31 - 1))
def test_explicit_engine_matches_jax_grad_float64(seed):
    model, params, state, x, y = _setup(seed, jnp.float64)
    ref = check.model_gradients(model, params, state, x, y, source="autodiff")
    hand = check.model_gradients(model, params, state, x, y, source="hand")
    explicit = check.model_gradients(model, params, state, x, y, source="explicit")
    assert check.compare(hand, ref, tol=1e-10).ok
    assert check.compare(explicit, ref, tol=1e-10).ok
    assert check.compare(explicit, hand, tol=1e-12).ok


@given(st.integers(0, 2**31 - 1))
def test_explicit_engine_matches_jax_grad_float32(seed):
    model, params, state, x, y = _setup(seed, jnp.float32)
    ref = check.model_gradients(model, params, state, x, y, source="autodiff")
    explicit = check.model_gradients(model, params, state, x, y, source="explicit")
    report = check.compare(explicit, ref, tol=1e-5)
    assert report.ok, str(report)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(explicit))


def test_explicit_engine_loss_and_input_gradient(key):
    """Loss value equals the autodiff loss; dL/dx_0 from the walk equals jax.grad wrt x."""
    model, params, state, x, y = _setup(7, jnp.float64)
    (loss, (_, logits)), _ = backprop.loss_and_grad(
        model, ops.softmax_cross_entropy, params, state, x, y
    )
    out, _ = model.apply(params, state, x, source="autodiff")
    assert jnp.allclose(loss, ops.softmax_cross_entropy.reference(out, y), rtol=1e-14)
    _, _, tape = backprop.walk(
        model.children, params, state, x,
        keys=backprop.layer_keys(None, len(params)), train=True, source="explicit",
    )  # fmt: skip
    dlogits = jax.random.normal(key, out.shape, out.dtype)
    _, dx = model.backward(params, model.forward(params, state, x)[2], dlogits)
    ref_dx = jax.grad(
        lambda xx: jnp.vdot(model.apply(params, state, xx, source="autodiff")[0], dlogits)
    )(x)
    assert check.relative_error(dx, ref_dx) < 1e-12
    assert len(tape) == len(params)


def test_explicit_engine_is_jittable_and_uses_no_autodiff(monkeypatch):
    """Poison jax.grad / jax.vjp: the explicit engine must not need them."""
    model, params, state, x, y = _setup(3, jnp.float64)

    def boom(*a, **k):
        raise AssertionError("explicit engine called autodiff")

    monkeypatch.setattr(jax, "grad", boom)
    monkeypatch.setattr(jax, "vjp", boom)
    monkeypatch.setattr(jax, "value_and_grad", boom)
    f = jax.jit(
        lambda p: backprop.loss_and_grad(model, ops.softmax_cross_entropy, p, state, x, y)[1]
    )
    grads = f(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_layer_keys():
    assert backprop.layer_keys(None, 3) == [None, None, None]
    ks = backprop.layer_keys(jax.random.key(0), 3)
    assert len(ks) == 3


@pytest.mark.parametrize("source", ["hand", "autodiff", "explicit"])
def test_serial_apply_sources_agree(source, key):
    model, params, state, x, _ = _setup(11, jnp.float64)
    out, _ = model.apply(params, state, x, source=source)
    ref, _, _ = model.forward(params, state, x)
    assert jnp.allclose(out, ref, rtol=1e-14, atol=0)


def test_check_source_and_paths():
    assert backprop.check_source("explicit") == "explicit"
    with pytest.raises(ValueError, match="fit: source must be one of"):
        backprop.check_source("numeric", "fit: source")
    assert backprop.path_str(("blocks", 3, "attn")) == "blocks.3.attn"
    assert backprop.path_str(()) == "·"


class _Record:
    """A tap that records the order of the walk's calls."""

    def __init__(self):
        self.calls = []

    def enter(self, path, layer, params, x):
        self.calls.append(("enter", path))
        return params, x

    def leave(self, path, layer, y):
        self.calls.append(("leave", path))
        return y

    def backward(self, path, layer, params, residuals, dy, grads):
        self.calls.append(("backward", path))


def test_the_walk_observes_every_leaf_in_order(key):
    """The tap sees each leaf enter/leave in forward order and its backward in reverse order,
    through nested combinators (serial, residual, tie), with paths into the params tree."""
    body = nn.serial(
        tok=nn.Embedding(5, 4),
        res=nn.residual(nn.serial(ln=nn.LayerNorm(), act=nn.Tanh())),
        head=nn.Unembed(5, 4),
    )
    model = nn.tie(body, shared=("head", "table"), to=("tok", "table"))
    _, params, state = model.init(key, (3,), jnp.float64)
    x = jax.random.randint(key, (2, 3), 0, 5)
    tap = _Record()
    backprop.loss_and_grad(model, ops.softmax_cross_entropy, params, state, x, x, tap=tap)
    leaves = [("tok",), ("res", "ln"), ("res", "act"), ("head",)]
    forward = [c for c in tap.calls if c[0] != "backward"]
    assert forward == [(k, p) for p in leaves for k in ("enter", "leave")]
    assert [p for k, p in tap.calls if k == "backward"] == leaves[::-1]
