"""`compute_in`: a built model rewritten to compute in bfloat16 with float32 masters — same
params, float32 output and gradients, hand == explicit, hand close to autodiff."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import backprop, check, nn, ops
from funcbp.nn.gpt import GPTConfig, gpt
from funcbp.nn.precision import compute_in
from funcbp.nn.remat import remat_segments
from funcbp.training import make_loss_fn

BF16 = jnp.bfloat16


def _models():
    tiny_gpt = GPTConfig(vocab=11, context=6, layers=1, heads=2, width=8, remat=1)
    ids = jax.random.randint(jax.random.key(3), (3, 6), 0, 11)
    return {
        "mlp": (nn.mlp([8, 4]), jax.random.normal(jax.random.key(1), (5, 6), jnp.float32),
                jnp.arange(5) % 4),
        "cnn": (nn.cnn(4, channels=(2, 3), hidden=5),
                jax.random.normal(jax.random.key(2), (4, 8, 8, 1), jnp.float32), jnp.arange(4)),
        "gpt (tied, remat segments)": (gpt(tiny_gpt), ids, ids),
    }  # fmt: skip


STRICT = {"xla_allow_excess_precision": False}  # every op rounds to bf16, as written


def _grads(model, params, state, x, y, source):
    if source == "explicit":
        fn = lambda p: backprop.loss_and_grad(model, ops.softmax_cross_entropy, p, state, x, y,
                                              key=jax.random.key(9))[1]  # fmt: skip
    else:
        loss_fn = make_loss_fn(model, source=source)
        fn = jax.grad(lambda p: loss_fn(p, state, x, y, jax.random.key(9))[0])
    return jax.jit(fn, compiler_options=STRICT)(params)


@pytest.mark.parametrize(
    "name", ["mlp", pytest.param("cnn", marks=pytest.mark.slow),
             pytest.param("gpt (tied, remat segments)", marks=pytest.mark.slow)],
)  # fmt: skip
def test_compute_in_bf16(name):
    """Same params; float32 output and gradients; the explicit engine equals the hand path
    (every op rounding as written); hand and autodiff, both in bf16, within a few percent."""
    model, x, y = _models()[name]
    low = compute_in(model, BF16)
    shape = tuple(x.shape[1:])
    _, params, state = model.init(jax.random.key(0), shape, jnp.float32)
    _, params_low, state_low = low.init(jax.random.key(0), shape, jnp.float32)
    assert jax.tree.structure(params) == jax.tree.structure(params_low)
    pairs = zip(jax.tree.leaves(params), jax.tree.leaves(params_low), strict=True)
    assert all(np.array_equal(a, b) for a, b in pairs)
    out, _ = low.apply(params, state, x, key=jax.random.key(9), train=True)
    assert out.dtype == jnp.float32
    hand, auto, explicit = (_grads(low, params, state, x, y, s)
                            for s in ("hand", "autodiff", "explicit"))  # fmt: skip
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(hand))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(explicit))
    assert check.compare(explicit, hand, tol=1e-6).ok  # the same hand rules, same roundings
    assert check.compare(hand, auto, tol=0.1).ok  # bf16 vs bf16: a few percent at most


def test_an_activation_between_layers_is_bf16():
    model = compute_in(nn.serial(nn.Dense(4), nn.Relu()), BF16)
    inner = model.children[0][1]
    _, params, state = model.init(jax.random.key(0), (3,), jnp.float32)
    x = jnp.ones((2, 3), jnp.float32)
    y, _ = inner.apply(params, state, x)
    assert y.dtype == BF16
    assert compute_in(model, None) is model


def test_a_combinator_without_rebuild_is_a_clear_error():
    import dataclasses

    broken = dataclasses.replace(nn.serial(nn.Dense(2), nn.Relu()), rebuild=None, name="odd")
    with pytest.raises(TypeError, match="serial combinator odd has no rebuild"):
        compute_in(broken, BF16)


def test_remat_segments_survive_the_rewrite():
    model = remat_segments(nn.mlp([4, 4, 2]), 2)
    low = compute_in(model, BF16)
    assert low.children[0][1].name == model.name


CHUNKED = GPTConfig(vocab=11, context=6, layers=1, heads=2, width=8, head="chunked")


def test_compute_in_bf16_with_the_fused_chunked_head():
    """The chunked head hands ``(x, E)`` to the fused loss in bf16 (a tuple output is not cast
    to float32); `unembed_cross_entropy` accumulates logits, softmax and loss in float32, so the
    loss and float32 gradients stay within a few percent of the float32 model's."""
    model, ids = gpt(CHUNKED), jax.random.randint(jax.random.key(3), (3, 6), 0, 11)
    low = compute_in(model, BF16)
    _, params, state = model.init(jax.random.key(0), (6,), jnp.float32)
    out, _ = low.apply(params, state, ids)
    assert isinstance(out, tuple) and out[0].dtype == BF16

    def loss_and_grads(m, source):
        fn = make_loss_fn(m, ops.unembed_cross_entropy, source=source)
        (loss, _), g = jax.value_and_grad(fn, has_aux=True)(params, state, ids, ids)
        return loss, g

    (l32, g32), (l16, g16), (_, ga) = (
        loss_and_grads(model, "hand"), loss_and_grads(low, "hand"), loss_and_grads(low, "autodiff")
    )  # fmt: skip
    assert l16.dtype == jnp.float32 and np.isfinite(l16)
    assert abs(float(l16) - float(l32)) < 0.02 * abs(float(l32))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
    assert check.compare(g16, g32, tol=0.1).ok  # bf16 compute vs float32: a few percent
    assert check.compare(g16, ga, tol=0.1).ok  # hand vs autodiff, both in bf16


def test_the_explicit_engine_forms_the_fused_loss_as_the_hand_path_does():
    low = compute_in(gpt(CHUNKED), BF16)
    ids = jax.random.randint(jax.random.key(4), (2, 6), 0, 11)
    _, params, state = low.init(jax.random.key(0), (6,), jnp.float32)
    fn = make_loss_fn(low, ops.unembed_cross_entropy, source="hand")
    (loss, _), hand = jax.value_and_grad(fn, has_aux=True)(params, state, ids, ids)
    (loss_x, _), explicit = backprop.loss_and_grad(
        low, ops.unembed_cross_entropy, params, state, ids, ids
    )
    assert loss_x.dtype == jnp.float32 and float(loss_x) == pytest.approx(float(loss), rel=1e-6)
    assert check.compare(explicit, hand, tol=1e-6).ok  # the same rules, the same roundings
