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
    out, _ = model.apply(params, state, x, gradients="autodiff")
    assert jnp.allclose(loss, ops.softmax_cross_entropy.reference(out, y), rtol=1e-14)
    _, _, tape = backprop.serial_forward(model.children, params, state, x)
    dlogits = jax.random.normal(key, out.shape, out.dtype)
    _, dx = model.backward(params, model.forward(params, state, x)[2], dlogits)
    ref_dx = jax.grad(
        lambda xx: jnp.vdot(model.apply(params, state, xx, gradients="autodiff")[0], dlogits)
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


@pytest.mark.parametrize("gradients", ["hand", "autodiff"])
def test_serial_apply_paths_agree(gradients, key):
    model, params, state, x, _ = _setup(11, jnp.float64)
    out, _ = model.apply(params, state, x, gradients=gradients)
    ref, _, _ = model.forward(params, state, x)
    assert jnp.allclose(out, ref, rtol=1e-14, atol=0)
