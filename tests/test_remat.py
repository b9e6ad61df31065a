"""Save vs recompute: `funcbp.remat.remat_model` changes memory, never gradients.

Gradients of rematerialised models (whole model or segments, several policies, hand and autodiff
paths, and the explicit engine's hand-written recompute) equal the plain model's to ~1e-12 in
float64, including a CNN with batch-norm state and a dropout key; the new state is unchanged too.
Memory: a GELU MLP's jitted gradient step needs less temporary memory with segments of two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from funcbp import backprop, check, nn, ops, remat
from funcbp.train import make_loss_fn

TOL = 1e-12


def _mlp(activation="gelu"):
    model = nn.mlp([9, 8, 7, 3], activation=activation)
    _, params, state = model.init(jax.random.key(0), (5,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (6, 5), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (6,), 0, 3).astype(jnp.int32)
    return model, params, state, x, y


def _grads(model, params, state, x, y, gradients, key=None):
    loss_fn = make_loss_fn(model, ops.softmax_cross_entropy, gradients=gradients)
    fn = lambda p: loss_fn(p, state, x, y, key, True)
    return jax.jit(jax.grad(fn, has_aux=True))(params)


def _same(a, b, what):
    report = check.compare(a, b, tol=TOL, name=what)
    assert report.ok, str(report)


VARIANTS = [
    (None, None),
    ("nothing_saveable", None),
    ("nothing_saveable", 1),
    ("nothing_saveable", 2),
    ("dots_saveable", 2),
    ("dots_with_no_batch_dims_saveable", 3),
    (jax.checkpoint_policies.everything_saveable, 4),
]


@pytest.mark.parametrize("gradients", ["hand", "autodiff"])
@pytest.mark.parametrize(("policy", "segment"), VARIANTS)
def test_mlp_gradients_unchanged(policy, segment, gradients):
    model, params, state, x, y = _mlp()
    wrapped = remat.remat_model(model, policy, segment=segment)
    want, _ = _grads(model, params, state, x, y, gradients)
    got, _ = _grads(wrapped, params, state, x, y, gradients)
    _same(got, want, f"remat {policy} segment={segment} {gradients}")
    # same init (params structure) and same forward
    assert jax.tree.structure(
        wrapped.init(jax.random.key(0), (5,), jnp.float64)[1]
    ) == jax.tree.structure(params)
    _same(wrapped.apply(params, state, x)[0], model.apply(params, state, x)[0], "forward")


@pytest.mark.parametrize("segment", [None, 1, 3])
def test_explicit_engine_recompute(segment):
    model, params, state, x, y = _mlp("tanh")
    wrapped = remat.remat_model(model, segment=segment)
    run = lambda m: jax.jit(
        lambda p: backprop.loss_and_grad(m, ops.softmax_cross_entropy, p, state, x, y)[1]
    )(params)
    _same(run(wrapped), run(model), f"explicit remat segment={segment}")
    _same(run(wrapped), _grads(model, params, state, x, y, "autodiff")[0], "explicit vs autodiff")


def test_cnn_with_state_and_dropout_key():
    model = nn.cnn(4, channels=(3, 4), hidden=8, dropout=0.3)
    _, params, state = model.init(jax.random.key(3), (8, 8, 1), jnp.float64)
    x = jax.random.normal(jax.random.key(4), (5, 8, 8, 1), jnp.float64)
    y = jax.random.randint(jax.random.key(5), (5,), 0, 4).astype(jnp.int32)
    key = jax.random.key(6)
    wrapped = remat.remat_model(model, "nothing_saveable", segment=3)
    for gradients in ("hand", "autodiff"):
        want, (want_state, _) = _grads(model, params, state, x, y, gradients, key)
        got, (got_state, _) = _grads(wrapped, params, state, x, y, gradients, key)
        _same(got, want, f"cnn remat {gradients}")
        _same(got_state, want_state, f"cnn remat state {gradients}")
    explicit = lambda m: jax.jit(
        lambda p: backprop.loss_and_grad(m, ops.softmax_cross_entropy, p, state, x, y, key=key)[1]
    )(params)
    _same(explicit(wrapped), explicit(model), "cnn explicit remat")


def test_segments_reduce_temp_memory():
    model = nn.mlp([256, 256, 256, 10], activation="gelu")
    _, params, state = model.init(jax.random.key(0), (256,), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (128, 256), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (128,), 0, 10).astype(jnp.int32)
    variants = {
        "plain": (model, "hand"),
        "segment=2": (remat.remat_model(model, "nothing_saveable", segment=2), "hand"),
        "whole": (remat.remat_model(model, "nothing_saveable"), "hand"),
        "explicit plain": (model, "explicit"),
        "explicit segment=2": (remat.remat_model(model, segment=2), "explicit"),
    }
    rows = {r["label"]: r for r in remat.measure(variants, params, state, x, y, repeats=2)}
    assert rows["segment=2"]["temp_bytes"] < 0.8 * rows["plain"]["temp_bytes"], rows
    assert rows["explicit segment=2"]["temp_bytes"] < 0.8 * rows["explicit plain"]["temp_bytes"]
    # whole-model remat recomputes the forward: more FLOPs than no remat
    assert rows["whole"]["flops"] > 1.1 * rows["plain"]["flops"], rows
    for r in rows.values():
        assert r["seconds"] > 0 and r["min_seconds"] <= r["seconds"]


def test_bad_arguments():
    model, *_ = _mlp()
    with pytest.raises(ValueError, match="policy must be one of"):
        remat.remat_model(model, "save_everything_please")
    with pytest.raises(ValueError, match="segment must be a positive int"):
        remat.remat_model(model, segment=0)
    with pytest.raises(ValueError, match="needs a serial model with children"):
        remat.remat_model(nn.Dense(3), segment=2)
