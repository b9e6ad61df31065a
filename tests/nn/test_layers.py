"""Layers: shapes, init scaling, train/eval behaviour, and whole-model gradient checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import check, nn, ops
from tests.helpers import perturb


def _init(model, shape, dtype=jnp.float64, seed=0):
    return model.init(jax.random.key(seed), shape, dtype)


def test_dense_shapes_and_he_scaling():
    out, p, s = _init(nn.Dense(512), (256,), jnp.float32)
    assert out == (512,) and p["w"].shape == (256, 512) and p["b"].shape == (512,) and s == {}
    assert float(jnp.std(p["w"])) == pytest.approx(np.sqrt(2 / 256), rel=0.03)
    _, p, _ = _init(nn.Dense(512, init=nn.init.lecun_normal()), (256,), jnp.float32)
    assert float(jnp.std(p["w"])) == pytest.approx(np.sqrt(1 / 256), rel=0.03)
    assert p["w"].dtype == jnp.float32


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: nn.Dense(0), "positive int"),
        (lambda: nn.Dense(3, init=nn.init.variance_scaling(-1.0)), "gain must be > 0"),
        (lambda: nn.init.normal(-0.1), "std must be >= 0"),
        (lambda: nn.mlp([]), "non-empty"),
        (lambda: nn.mlp([4, 2], activation="swish"), "activation"),
        (lambda: nn.serial(), "at least one"),
        (lambda: nn.Dropout(1.0), r"\[0, 1\)"),
        (lambda: nn.BatchNorm(momentum=1.5), "momentum"),
        (lambda: nn.Embedding(0, 3), "vocab"),
        (lambda: nn.Conv2D(8, kernel=0), "kernel"),
    ],
)
def test_bad_layer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_serial_rejects_non_layers_and_mixed_children():
    with pytest.raises(TypeError, match="child 1 is str, not a Layer"):
        nn.serial(nn.Relu(), "relu")
    with pytest.raises(ValueError, match="either all positionally or all by name"):
        nn.serial(nn.Relu(), act=nn.Tanh())
    with pytest.raises(TypeError, match="must be a callable init"):
        nn.Dense(3, init="xavier")


def test_source_switch_is_validated():
    model = nn.mlp([3])
    _, p, s = _init(model, (2,))
    with pytest.raises(ValueError, match="source must be one of"):
        model.apply(p, s, jnp.ones((1, 2)), source="numeric")


def test_flatten_forward_and_backward(key):
    layer = nn.Flatten()
    out, _, _ = layer.init(key, (3, 4, 2), jnp.float64)
    x = jax.random.normal(key, (5, 3, 4, 2))
    y, _, res = layer.forward({}, {}, x)
    assert out == (24,) and y.shape == (5, 24)
    _, dx = layer.backward({}, res, y)
    np.testing.assert_array_equal(dx, x)


def test_batchnorm_train_updates_running_stats_and_eval_uses_them(key):
    layer = nn.BatchNorm(momentum=0.8)
    _, p, s = layer.init(key, (4,), jnp.float64)
    x = 3.0 + 2.0 * jax.random.normal(key, (16, 4))
    y_train, s1 = layer.apply(p, s, x, train=True)
    mean, var = x.mean(0), x.var(0)
    np.testing.assert_allclose(s1["mean"], 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(s1["var"], 0.8 + 0.2 * var * 16 / 15, rtol=1e-12)  # unbiased
    np.testing.assert_allclose(y_train.mean(0), 0.0, atol=1e-12)  # batch statistics
    y_eval, s2 = layer.apply(p, s1, x, train=False)
    assert s2 is s1  # eval leaves state alone
    expect = (x - s1["mean"][None]) / jnp.sqrt(s1["var"][None] + 1e-5)
    np.testing.assert_allclose(y_eval, expect, rtol=1e-12)
    assert not np.allclose(y_eval, y_train)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_explicit_backward_matches_autodiff(train, key):
    layer = nn.BatchNorm()
    _, p, s = layer.init(key, (3,), jnp.float64)
    p = perturb(p, key)
    s = {"mean": jnp.array([0.1, -0.2, 0.3]), "var": jnp.array([0.5, 1.5, 2.0])}
    x = jax.random.normal(key, (6, 2, 3))
    dy = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    _, _, res = layer.forward(p, s, x, train=train)
    grads, dx = layer.backward(p, res, dy)

    def f(p, x):
        return jnp.vdot(layer.apply(p, s, x, train=train, source="autodiff")[0], dy)

    gp, gx = jax.grad(f, argnums=(0, 1))(p, x)
    assert check.compare((grads, dx), (gp, gx), tol=1e-10).ok


def test_dropout_layer_modes(key):
    layer = nn.Dropout(0.5)
    x = jax.random.normal(key, (8, 10))
    y, _ = layer.apply({}, {}, x, train=False)
    np.testing.assert_array_equal(y, x)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        layer.apply({}, {}, x, train=True)
    y, _ = layer.apply({}, {}, x, key=key, train=True)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2 * x[kept])
    y2, _ = layer.apply({}, {}, x, key=key, train=True, source="autodiff")
    np.testing.assert_array_equal(y, y2)  # same key, same mask on both paths


def test_embedding_layer_repeated_ids_accumulate(key):
    layer = nn.Embedding(5, 3)
    out, p, _ = layer.init(key, (4,), jnp.float64)
    assert out == (4, 3)
    ids = jnp.array([[1, 1, 4, 1]])
    dy = jax.random.normal(key, (1, 4, 3))
    _, _, res = layer.forward(p, {}, ids)
    grads, dx = layer.backward(p, res, dy)
    assert dx is None
    np.testing.assert_allclose(grads["table"][1], dy[0, [0, 1, 3]].sum(0), rtol=1e-12)
    np.testing.assert_array_equal(grads["table"][0], 0.0)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: nn.Conv2D(4, 3, stride=2, padding="SAME"), (7, 7, 2)),
        (lambda: nn.Conv2D(3, (2, 3), padding="VALID"), (6, 5, 1)),
        (lambda: nn.MaxPool2D(2), (5, 6, 3)),
        (lambda: nn.AvgPool2D(3, 2), (7, 7, 2)),
    ],
)
def test_conv_and_pool_output_shapes_match_apply(layer, shape, key):
    layer = layer()
    out, p, s = layer.init(key, shape, jnp.float64)
    y, _ = layer.apply(p, s, jax.random.normal(key, (2, *shape)))
    assert y.shape == (2, *out)


def _model_check(model, shape, y, key, dtypes=("float64", "float32")):
    _, p, s = model.init(jax.random.key(0), shape, jnp.float64)
    p = perturb(p, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (y.shape[0], *shape))
    reports = check.check_model(model, p, s, x, y, key=key, dtypes=dtypes)
    assert {r.a for r in reports} == {"hand", "explicit"}
    for r in reports:
        assert r.ok, str(r)
    return reports


def test_cnn_whole_model_gradients(key):
    y = jnp.array([0, 3, 9, 1])
    reports = _model_check(nn.cnn(10, channels=(4, 6), hidden=16, dropout=0.3), (8, 8, 1), y, key)
    assert max(r.worst_rel for r in reports if r.dtype == "float64") < 1e-9


def test_relu_layer_keeping_bits_checks_on_every_engine(key):
    """nn.Relu(residual) for every residual, through hand and explicit engines, vs autodiff."""
    model = nn.serial(
        nn.Dense(9),
        nn.Relu("bits"),
        nn.Dense(9),
        nn.Relu("input"),
        nn.Dense(9),
        nn.Relu(),
        nn.Dense(3),
    )
    _model_check(model, (5,), jnp.array([0, 2, 1, 1, 2, 0]), key)
    with pytest.raises(ValueError, match="relu: residual must be one of"):
        nn.Relu("mask")  # at construction, before any work


@pytest.mark.parametrize("cell", [nn.LSTM, nn.RNN])
@pytest.mark.parametrize("sequences", [True, False])
def test_recurrent_whole_model_gradients(cell, sequences, key):
    model = nn.serial(cell(5, return_sequences=sequences), nn.Dense(3))
    y = jnp.array([[0, 2, 1, 1], [2, 2, 0, 1]]) if sequences else jnp.array([0, 2])
    _model_check(model, (4, 3), y, key)


def test_layernorm_embedding_model_gradients(key):
    model = nn.serial(nn.Embedding(7, 6), nn.LayerNorm(), nn.Gelu(approximate=True), nn.Dense(7))
    _, p, s = model.init(jax.random.key(0), (5,), jnp.float64)
    p = perturb(p, jax.random.key(1))
    ids = jax.random.randint(key, (3, 5), 0, 7)
    y = jax.random.randint(jax.random.fold_in(key, 1), (3, 5), 0, 7)
    for r in check.check_model(model, p, s, ids, y):
        assert r.ok, str(r)


def test_loss_op_choice_mse(key):
    model = nn.mlp([4, 2], activation="sigmoid")
    _, p, s = model.init(key, (3,), jnp.float64)
    x = jax.random.normal(key, (5, 3))
    t = jax.random.normal(jax.random.fold_in(key, 1), (5, 2))
    for r in check.check_model(model, p, s, x, t, loss=ops.mse):
        assert r.ok, str(r)
