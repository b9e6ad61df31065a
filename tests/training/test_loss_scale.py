"""Dynamic loss scaling (jmp's rule) and its composition with the NaN guard: a skipped step is
counted, not a failure — unless the scale cannot be lowered any more."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcbp import nn
from funcbp.nn.precision import compute_in
from funcbp.training import FitConfig, finite_flag_names, fit, make_train_step
from funcbp.training.loop import _first_bad_step
from funcbp.training.loss_scale import adjust, dynamic_loss_scale
from funcbp.training.precision import Policy, get_policy, wrap_optimizer
from tests.helpers import toy_classification


def _adjusted(finite_steps, period=3, scale=8.0, minimum=1.0):
    s, good = jnp.float32(scale), jnp.int32(0)
    seen = []
    for finite in finite_steps:
        s, good = adjust(s, good, jnp.bool_(finite), period=period, factor=2.0, minimum=minimum)
        seen.append((float(s), int(good)))
    return seen


def test_the_rule_grows_after_period_finite_steps_and_halves_on_a_bad_one():
    assert _adjusted([True] * 7) == [(8, 1), (8, 2), (16, 0), (16, 1), (16, 2), (32, 0), (32, 1)]
    assert _adjusted([True, True, False, True]) == [(8, 1), (8, 2), (4, 0), (4, 1)]
    assert _adjusted([False] * 5, scale=4.0) == [(2, 0), (1, 0), (1, 0), (1, 0), (1, 0)]


def test_the_wrapper_skips_a_non_finite_update_and_counts_it():
    opt = dynamic_loss_scale(optax.adam(0.1), initial=1024.0, period=2000)
    params = {"w": jnp.ones(3, jnp.float32)}
    state = opt.init(params)
    bad = {"w": jnp.array([1.0, jnp.inf, 0.0], jnp.float32)}
    updates, new = opt.update(bad, state, params)
    assert np.all(np.asarray(updates["w"]) == 0)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new.inner, state.inner))
    assert (float(new.scale), int(new.good), int(new.skipped)) == (512.0, 0, 1)
    updates, new = opt.update({"w": jnp.ones(3, jnp.float32)}, new, params)
    assert np.all(np.asarray(updates["w"]) != 0) and int(new.good) == 1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="dynamic_loss_scale: needs period >= 1"):
        dynamic_loss_scale(optax.sgd(1.0), period=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        get_policy("f8")
    assert wrap_optimizer(optax.sgd(1.0), "bf16") is not None


def _f16_step(initial, minimum):
    model = compute_in(nn.mlp([16, 3]), jnp.float16)
    data = toy_classification(n_train=32, features=6)
    _, params, state = model.init(jax.random.key(0), (6,), jnp.float32)
    opt = dynamic_loss_scale(optax.sgd(0.1), initial=initial, minimum=minimum)
    step = make_train_step(model, opt)
    batch = (jnp.asarray(data.x_train[:8], jnp.float32), jnp.asarray(data.y_train[:8]))
    opt_state = opt.init(params)
    new_params, new_opt, _, metrics = step(params, opt_state, state, batch, None)
    return params, opt_state, new_params, new_opt, metrics


def test_an_overflowing_float16_backward_is_skipped_and_the_scale_halved():
    """S = 2³⁰ makes the float16 cotangent of the logits overflow: the step is skipped (params
    unchanged), S halves, the loss itself stays finite."""
    params, _, new_params, new_opt, m = _f16_step(2.0**30, 1.0)
    assert bool(m["skipped"]) and float(m["loss_scale"]) == 2.0**30
    assert not bool(np.all(m["finite"][2:-1])) and bool(np.all(m["finite"][:2]))
    assert float(new_opt.scale) == 2.0**29 and int(new_opt.skipped) == 1
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new_params, params))
    _, _, moved, ok_opt, m = _f16_step(2.0**10, 1.0)
    assert not bool(m["skipped"]) and bool(np.all(m["finite"])) and int(ok_opt.good) == 1
    assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), moved, params))


def test_at_the_minimum_scale_a_non_finite_step_is_a_failure():
    params, opt_state, _, new_opt, m = _f16_step(2.0**30, 2.0**30)
    assert not bool(m["skipped"])
    assert float(new_opt.scale) == float(opt_state.scale)  # the guard kept the old state
    names, flags = finite_flag_names(params), np.asarray([m["finite"]])
    step, tensors = _first_bad_step(flags, names, np.asarray([False]))  # what fit raises for
    assert step == 0 and tensors and all(t.startswith("gradient") for t in tensors)
    assert _first_bad_step(flags, names, np.asarray([True])) is None


@pytest.mark.slow
def test_fit_in_float16_counts_skipped_steps_and_trains():
    data = toy_classification(n_train=128, features=6)
    policy = Policy("f16", jnp.float16, loss_scale=2.0**30)  # overflows: a few steps skipped
    result = fit(nn.mlp([16, 3]), data, optax.adam(1e-2), FitConfig(4, 16, precision=policy))
    h = result.history
    assert sum(h["skipped_steps"]) >= 10 and h["skipped_steps"][-1] == 0
    assert h["loss_scale"][-1] < 2.0**30
    assert h["test_accuracy"][-1] > 0.8
