"""Combinators and glue layers own their backward: residual, tie, serial with named children,
head split/merge, position embedding. Each is checked three ways (hand, explicit, autodiff)
and against planted bugs in its backward (the mutants must be caught)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import check, nn
from tests.helpers import perturb


def _check(model, params, state, x, y, tol=1e-10):
    ref = check.model_gradients(model, params, state, x, y, source="autodiff")
    for source in ("hand", "explicit"):
        got = check.model_gradients(model, params, state, x, y, source=source)
        report = check.compare(got, ref, tol=tol, name=f"{model.name} {source}")
        assert report.ok, str(report)


def _data(key, shape, classes=3, n=4):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, *shape), jnp.float64)
    y = jax.random.randint(ky, (n, *shape[:-1]), 0, classes)
    return x, y


def _residual_model():
    return nn.serial(
        inp=nn.Dense(6),
        res=nn.residual(nn.serial(ln=nn.LayerNorm(), fc=nn.Dense(6), act=nn.Tanh())),
        out=nn.Dense(3),
    )


def _tied_model():
    body = nn.serial(tok=nn.Embedding(5, 4), act=nn.Tanh(), head=nn.Unembed(5, 4))
    return nn.tie(body, shared=("head", "table"), to=("tok", "table"))


def _heads_model():
    return nn.serial(
        inp=nn.Dense(12),
        attn=nn.MultiHeadAttention(12, 2, init=nn.init.normal(0.5)),
        pos=nn.PositionEmbedding(5, 12, init=nn.init.normal(0.5)),
        out=nn.Dense(3),
    )


def _setup(make, key, shape, integer=False):
    model = make()
    _, params, state = model.init(key, shape, jnp.float64)
    params = perturb(params, key, 0.3)
    if integer:
        x = jax.random.randint(key, (4, *shape), 0, 5)
        y = jax.random.randint(jax.random.fold_in(key, 1), (4, *shape), 0, 5)
    else:
        x, y = _data(key, shape)
    return model, params, state, x, y


CASES = {
    "residual": (_residual_model, (4, 5), False),
    "tie": (_tied_model, (6,), True),
    "heads": (_heads_model, (5, 7), False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_combinator_gradients_agree_three_ways(case, key):
    make, shape, integer = CASES[case]
    _check(*_setup(make, key, shape, integer))


def test_named_children_give_readable_paths(key):
    model, params, *_ = _setup(_residual_model, key, (4, 5))
    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert "['res']['fc']['w']" in paths and "['inp']['b']" in paths
    tied, tparams, *_ = _setup(_tied_model, key, (6,), True)
    assert tparams["head"] == {} and tparams["tok"]["table"].shape == (5, 4)


def test_split_and_merge_heads_are_inverses(key):
    x = jax.random.normal(key, (2, 5, 12))
    split, merge = nn.SplitHeads(2, 3), nn.MergeHeads()
    q, k, v = split.apply({}, {}, x)[0]
    assert q.shape == (2, 2, 5, 2)
    np.testing.assert_array_equal(
        jnp.concatenate([merge.apply({}, {}, a)[0] for a in (q, k, v)], -1), x
    )
    _, dx = split.backward({}, None, (q, k, v))
    np.testing.assert_array_equal(dx, x)  # its backward is its inverse
    _, dq = merge.backward({}, 2, merge.apply({}, {}, q)[0])
    np.testing.assert_array_equal(dq, q)


def _broken(layer, backward):
    return dataclasses.replace(layer, backward=backward)


def _replace_child(model, name, new):
    """A serial with the child ``name`` replaced (same params)."""
    children = {n: (new if n == name else c) for n, c in model.children}
    return nn.serial(**children, name=model.name)


def _mutants():
    """(case, a model whose combinator/glue backward has a planted bug)."""
    res = _residual_model()
    branch = dict(res.children)["res"]  # residual(inner)
    inner = dict(branch.children)[None]
    no_skip = _broken(branch, lambda p, t, dy, tap=None, path=(): inner.backward(p, t, dy))
    skip_only = _broken(
        branch, lambda p, t, dy, tap=None, path=(): (inner.backward(p, t, dy)[0], dy)
    )
    tied = _tied_model()
    one_use = _broken(
        tied,
        lambda p, t, dy, tap=None, path=(): (
            {**tied.backward(p, t, dy)[0], "tok": {"table": jnp.zeros_like(p["tok"]["table"])}},
            None,
        ),
    )
    heads = _heads_model()
    mha = dict(heads.children)["attn"]
    split = dict(mha.children)["heads"]
    bad_split = _broken(split, lambda p, r, dy: split.backward(p, r, (dy[1], dy[0], dy[2])))
    merge = dict(mha.children)["merge"]
    bad_merge = _broken(merge, lambda p, h, dy: ({}, merge.backward(p, h, dy)[1] * 1.5))
    pos = dict(heads.children)["pos"]
    no_sum = _broken(pos, lambda p, r, dy: ({"table": pos.backward(p, r, dy[:1])[0]["table"]}, dy))
    return [
        ("residual", _replace_child(res, "res", no_skip)),
        ("residual", _replace_child(res, "res", skip_only)),
        ("tie", one_use),
        ("heads", _replace_child(heads, "attn", _replace_child(mha, "heads", bad_split))),
        ("heads", _replace_child(heads, "attn", _replace_child(mha, "merge", bad_merge))),
        ("heads", _replace_child(heads, "pos", no_sum)),
    ]  # fmt: skip


@pytest.mark.parametrize("i", range(6))
def test_planted_combinator_bugs_are_caught(i, key):
    case, bad = _mutants()[i]
    make, shape, integer = CASES[case]
    good, params, state, x, y = _setup(make, key, shape, integer)
    ref = check.model_gradients(good, params, state, x, y, source="autodiff")
    got = check.model_gradients(bad, params, state, x, y, source="explicit")
    assert not check.compare(got, ref, tol=1e-6).ok, case
