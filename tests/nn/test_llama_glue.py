"""The Llama's glue owns its backward: the fan-out `parallel` (dx of every branch adds up), the
grouped head split (its inverse), `Rope` on q and k (the rotation by −φ, v passed through) and
`CausalAttention` (dense and flash). Each is checked three ways (hand, explicit, autodiff,
float64) and against planted bugs in its backward (every mutant must be caught)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import check, nn
from tests.helpers import perturb


def _fanout_model():
    return nn.serial(
        inp=nn.Dense(6),
        gate_up=nn.parallel(gate=nn.Project(5), up=nn.Project(5)),
        swiglu=nn.SwiGLU(),
        out=nn.Dense(3),
    )


def _attention_model(kind="dense"):
    """Dense -> (q | k | v) with H = 4 query heads over G = 2 kv heads -> RoPE -> attention."""
    return nn.serial(
        inp=nn.Project(32),  # Dh = 32 / (4 + 2·2) = 4
        heads=nn.GroupedSplitHeads(4, 2),
        rope=nn.Rope(100.0),
        attention=nn.CausalAttention(kind=kind, block_size=2),
        merge=nn.MergeHeads(),
        norm=nn.RMSNorm(),
        out=nn.Dense(3),
    )


CASES = {
    "parallel": _fanout_model,
    "attention": _attention_model,
    "flash": lambda: _attention_model("flash"),
}


def _setup(make, key, shape=(5, 7)):
    model = make()
    _, params, state = model.init(key, shape, jnp.float64)
    params = perturb(params, key, 0.3)
    kx, ky = jax.random.split(jax.random.fold_in(key, 1))
    x = jax.random.normal(kx, (2, *shape), jnp.float64)
    y = jax.random.randint(ky, (2, shape[0]), 0, 3)
    return model, params, state, x, y


@pytest.mark.parametrize("case", sorted(CASES))
def test_glue_gradients_agree_three_ways(case, key):
    model, params, state, x, y = _setup(CASES[case], key)
    ref = check.model_gradients(model, params, state, x, y, source="autodiff")
    for source in ("hand", "explicit"):
        got = check.model_gradients(model, params, state, x, y, source=source)
        report = check.compare(got, ref, tol=1e-10, name=f"{case} {source}")
        assert report.ok, str(report)


def test_parallel_params_outputs_and_errors(key):
    model, params, state, x, _ = _setup(_fanout_model, key)
    assert set(params["gate_up"]) == {"gate", "up"}
    assert params["gate_up"]["gate"]["w"].shape == (5, 6)  # (out, in)
    fan = dict(model.children)["gate_up"]
    a, b = fan.apply(params["gate_up"], {}, x[..., :6])[0]
    np.testing.assert_allclose(a, x[..., :6] @ params["gate_up"]["gate"]["w"].T, rtol=1e-13)
    with pytest.raises(ValueError, match="parallel: needs at least two branches"):
        nn.parallel(a=nn.Relu())
    with pytest.raises(ValueError, match="either all positionally or all by name"):
        nn.parallel(nn.Relu(), b=nn.Relu())


def test_grouped_split_is_inverted_by_its_backward(key):
    split = nn.GroupedSplitHeads(4, 2)
    x = jax.random.normal(key, (2, 3, 8 * 5))
    q, k, v = split.apply({}, {}, x)[0]
    assert (q.shape, k.shape, v.shape) == ((2, 4, 3, 5), (2, 2, 3, 5), (2, 2, 3, 5))
    np.testing.assert_array_equal(q[:, 1], x[..., 5:10])  # head 1 = columns 5..9
    np.testing.assert_array_equal(v[:, 1], x[..., 35:40])
    np.testing.assert_array_equal(split.backward({}, None, (q, k, v))[1], x)
    with pytest.raises(ValueError, match="heads 3 must be a multiple of kv_heads 2"):
        nn.GroupedSplitHeads(3, 2)


def _broken(layer, backward):
    return dataclasses.replace(layer, backward=backward)


def _replace(model, name, new):
    children = {n: (new if n == name else c) for n, c in model.children}
    return nn.serial(**children, name=model.name)


def _mutants():
    """(case, a model whose glue backward has a planted bug)."""
    fan_model = _fanout_model()
    fan = dict(fan_model.children)["gate_up"]
    gate, up = (dict(fan.children)[n] for n in ("gate", "up"))

    def first_branch_only(p, tape, dy, tap=None, path=()):  # forgets the fan-out's sum
        dg, dx = gate.backward(p["gate"], tape["gate"], dy[0])
        du, _ = up.backward(p["up"], tape["up"], dy[1])
        return {"gate": dg, "up": du}, dx

    att = _attention_model()
    split, rope = dict(att.children)["heads"], dict(att.children)["rope"]
    swap_kv = _broken(split, lambda p, r, dy: split.backward(p, r, (dy[0], dy[2], dy[1])))
    rope_k_forward = _broken(
        rope, lambda p, r, dy: ({}, (rope.backward(p, r, dy)[1][0], dy[1], dy[2]))
    )  # dk not rotated back
    rope_plus = _broken(  # rotation by +φ instead of −φ: dk = R dk
        rope,
        lambda p, r, dy: ({}, (rope.backward(p, r, dy)[1][0],
                               nn.Rope(100.0).apply({}, {}, dy)[0][1], dy[2])),
    )  # fmt: skip
    return [
        ("parallel", _replace(fan_model, "gate_up", _broken(fan, first_branch_only))),
        ("attention", _replace(att, "heads", swap_kv)),
        ("attention", _replace(att, "rope", rope_k_forward)),
        ("attention", _replace(att, "rope", rope_plus)),
    ]


@pytest.mark.parametrize("i", range(4))
def test_planted_glue_bugs_are_caught(i, key):
    case, bad = _mutants()[i]
    good, params, state, x, y = _setup(CASES[case], key)
    ref = check.model_gradients(good, params, state, x, y, source="autodiff")
    got = check.model_gradients(bad, params, state, x, y, source="explicit")
    assert not check.compare(got, ref, tol=1e-6).ok, case
