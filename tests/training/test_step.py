"""The jitted train step: classic update, NaN guard, hand vs autodiff, engines, fused steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcbp import nn, ops
from funcbp import training as train
from funcbp.training.guard import guard
from tests.helpers import perturb, toy_classification, tree_max_abs_diff


def _model_and_batch(dtype=jnp.float32, seed=0):
    data = toy_classification(seed)
    model = nn.mlp([8, data.n_classes], activation="tanh")
    _, params, state = model.init(jax.random.key(seed), data.x_train.shape[1:], dtype)
    params = perturb(params, jax.random.key(seed + 1))
    x = jnp.asarray(data.x_train[:16], dtype)
    y = jnp.asarray(data.y_train[:16])
    return data, model, params, state, x, y


@pytest.mark.parametrize("jit", [False, True])
def test_classic_sgd_step_equals_hand_formula(jit):
    """W ← W − η (dE/dW + λ W) for weights; b ← b − η dE/db (biases are not decayed).

    Un-jitted (op by op) the step equals the formula bit for bit; jitted, XLA may contract
    multiply-adds into FMAs, so it agrees to the last ulp or two."""
    _, model, params, state, x, y = _model_and_batch(jnp.float64)
    lr, wd = 0.1, 0.01
    opt = train.classic_sgd(lr, wd)
    step = train.make_train_step(model, opt, jit=jit)
    new_params, _, _, m = step(params, opt.init(params), state, (x, y), None)
    check = (
        np.testing.assert_array_equal
        if not jit
        else (lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-15, atol=1e-16))
    )
    loss_fn = train.make_loss_fn(model)
    grads = jax.grad(lambda p: loss_fn(p, state, x, y)[0])(params)
    for p, g, q in zip(params, grads, new_params, strict=False):
        if not p:
            continue
        check(q["w"], p["w"] - lr * (g["w"] + wd * p["w"]))
        check(q["b"], p["b"] - lr * g["b"])
    assert bool(jnp.all(m["finite"]))


def test_classic_sgd_decay_all_matches_formula_on_every_param():
    _, model, params, state, x, y = _model_and_batch(jnp.float64)
    lr, wd = 0.05, 0.1
    opt = train.classic_sgd(lr, wd, decay_all=True)
    step = train.make_train_step(model, opt, jit=False)
    new_params, _, _, _ = step(params, opt.init(params), state, (x, y), None)
    loss_fn = train.make_loss_fn(model)
    grads = jax.grad(lambda p: loss_fn(p, state, x, y)[0])(params)
    expect = jax.tree.map(lambda p, g: p - lr * (g + wd * p), params, grads)
    assert tree_max_abs_diff(new_params, expect) == 0.0


def test_all_gradients_use_pre_update_weights():
    """One step updates every layer from gradients of the same (old) params."""
    _, model, params, state, x, y = _model_and_batch(jnp.float64)
    opt = optax.sgd(0.5)
    new_params, _, _, _ = train.make_train_step(model, opt)(
        params, opt.init(params), state, (x, y), None
    )
    loss_fn = train.make_loss_fn(model, source="autodiff")
    grads = jax.grad(lambda p: loss_fn(p, state, x, y)[0])(params)
    expect = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    assert tree_max_abs_diff(new_params, expect) < 1e-14


@pytest.mark.parametrize("where", ["x", "lr"])
def test_nan_guard_keeps_params_and_names_the_tensor(where):
    _, model, params, state, x, y = _model_and_batch()
    lr = float("inf") if where == "lr" else 0.1  # an update that diverges to inf
    opt = optax.sgd(lr)
    if where == "x":
        x = x.at[3, 2].set(jnp.nan)
    step = train.make_train_step(model, opt)
    new_params, new_opt, _, m = step(params, opt.init(params), state, (x, y), None)
    names = train.finite_flag_names(params)
    assert m["finite"].shape == (len(names),) and m["finite"].dtype == jnp.bool_
    flags = {k: bool(v) for k, v in zip(names, m["finite"], strict=True)}
    assert not all(flags.values())
    if where == "x":
        assert flags["input batch x"] is False
    else:
        assert flags["params after the update"] is False and flags["loss"] is True
    assert tree_max_abs_diff(new_params, params) == 0.0  # nothing non-finite was written


def test_hand_and_autodiff_trajectories_agree_over_20_steps():
    data, model, params, state, _, _ = _model_and_batch()
    opt = optax.adam(1e-2)
    runs = {}
    for gradients in ("hand", "autodiff"):
        step = train.make_train_step(model, opt, source=gradients)
        p, o = params, opt.init(params)
        for i in range(20):
            sl = slice((i * 16) % 80, (i * 16) % 80 + 16)
            p, o, _, _ = step(p, o, state, (data.x_train[sl], data.y_train[sl]), None)
        runs[gradients] = p
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(runs["autodiff"]))
    assert tree_max_abs_diff(runs["hand"], runs["autodiff"]) <= 1e-5 * scale


def test_explicit_engine_step_equals_grad_engine():
    _, model, params, state, x, y = _model_and_batch(jnp.float64)
    opt = train.classic_sgd(0.1, 1e-3)
    a = train.make_train_step(model, opt, source="hand")(
        params, opt.init(params), state, (x, y), None
    )
    b = train.make_train_step(model, opt, source="explicit")(
        params, opt.init(params), state, (x, y), None
    )
    assert tree_max_abs_diff(a[0], b[0]) < 1e-14
    assert float(a[3]["loss"]) == pytest.approx(float(b[3]["loss"]), rel=1e-14)


def test_multi_step_equals_sequential_steps():
    data, model, params, state, _, _ = _model_and_batch()
    opt = optax.adam(1e-2)
    raw = train.make_train_step(model, opt, jit=False)
    single = jax.jit(raw)
    multi = train.make_multi_step(raw)
    xs = data.x_train[:64].reshape(4, 16, -1)
    ys = data.y_train[:64].reshape(4, 16)
    keys = jax.random.split(jax.random.key(0), 4)
    p, o = params, opt.init(params)
    losses = []
    for i in range(4):
        p, o, _, m = single(p, o, state, (xs[i], ys[i]), keys[i])
        losses.append(float(m["loss"]))
    pm, _, _, mm = multi(params, opt.init(params), state, (xs, ys), keys)
    assert tree_max_abs_diff(p, pm) < 1e-6
    np.testing.assert_allclose(np.asarray(mm["loss"]), losses, rtol=1e-6)


def test_bad_arguments():
    _, model, *_ = _model_and_batch()
    with pytest.raises(ValueError, match="make_train_step: source must be one of"):
        train.make_train_step(model, optax.sgd(0.1), source="numeric")


def test_step_is_deterministic():
    _, model, params, state, x, y = _model_and_batch()
    opt = optax.adam(1e-2)
    step = train.make_train_step(model, opt)
    a = step(params, opt.init(params), state, (x, y), None)
    b = step(params, opt.init(params), state, (x, y), None)
    assert tree_max_abs_diff(a[0], b[0]) == 0.0


def test_eval_fn_accuracy_matches_numpy():
    data, model, params, state, _, _ = _model_and_batch()
    ev = train.make_eval_fn(model)
    m = ev(params, state, data.x_test, data.y_test)
    out, _ = model.apply(params, state, data.x_test)
    assert float(m["accuracy"]) == pytest.approx(
        float(np.mean(np.argmax(np.asarray(out), -1) == data.y_test))
    )
    assert float(m["loss"]) == pytest.approx(float(ops.softmax_cross_entropy(out, data.y_test)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3e19, -2.5])
def test_guard_flags_exactly_the_non_finite_gradient_leaf(bad, key):
    """Each gradient leaf gets its own flag; a leaf whose squared norm overflows float32 (an
    entry of 3e19) counts as non-finite too; grad_norm is the global 2-norm."""
    _, model, params, _, x, _ = _model_and_batch(jnp.float32)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
    grads = [jnp.asarray(rng.normal(size=leaf.shape), jnp.float32) for leaf in leaves]
    i = int(rng.integers(len(grads)))
    pos = tuple(int(rng.integers(n)) for n in grads[i].shape)
    grads[i] = grads[i].at[pos].set(bad)
    grads = jax.tree.unflatten(treedef, grads)
    flags, norm = jax.jit(guard)(x, jnp.float32(1.0), grads, params)
    names = train.finite_flag_names(params)
    flagged = [n for n, ok in zip(names, np.asarray(flags), strict=True) if not ok]
    path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(params)[0][i][0])
    assert flagged == ([] if bad == -2.5 else [f"gradient {path}"])
    if bad == -2.5:
        expect = np.sqrt(sum(np.sum(np.square(np.float64(g))) for g in jax.tree.leaves(grads)))
        np.testing.assert_allclose(float(norm), expect, rtol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 3e38])
def test_guard_checks_input_and_params_exactly(bad):
    """x and the updated params are flagged for NaN/inf only: 3e38 (whose square or sum would
    overflow) is finite and passes."""
    _, _, params, _, x, _ = _model_and_batch(jnp.float32)
    grads = jax.tree.map(jnp.ones_like, params)
    bad_params = jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(bad), params)
    names = train.finite_flag_names(params)
    for xs, ps, which in [
        (x.at[1, 1].set(bad), params, "input batch x"),
        (x, bad_params, "params after the update"),
    ]:
        flags, _ = guard(xs, jnp.float32(0.5), grads, ps)
        flagged = [n for n, ok in zip(names, np.asarray(flags), strict=True) if not ok]
        assert flagged == ([] if np.isfinite(bad) else [which])
