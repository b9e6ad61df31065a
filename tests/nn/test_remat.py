"""Save vs recompute: `funcbp.nn.remat` / `remat_segments` change memory, never gradients.

Gradients of rematerialised models (whole model or segments, several policies, hand and autodiff
paths, and the explicit engine's hand-written recompute) equal the plain model's to ~1e-12 in
float64, including a CNN with batch-norm state and a dropout key; the new state is unchanged too.
Memory: a GELU MLP's jitted gradient step needs less temporary memory with segments of two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from benchmarks import remat
from funcbp import backprop, check, nn, ops
from funcbp.training import make_loss_fn

TOL = 1e-12


def remat_model(model, policy=None, *, segment=None):
    return nn.remat(model, policy) if segment is None else nn.remat_segments(model, segment, policy)


def _mlp(activation="gelu"):
    model = nn.mlp([9, 8, 7, 3], activation=activation)
    _, params, state = model.init(jax.random.key(0), (5,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (6, 5), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (6,), 0, 3).astype(jnp.int32)
    return model, params, state, x, y


def _grads(model, params, state, x, y, gradients, key=None):
    loss_fn = make_loss_fn(model, ops.softmax_cross_entropy, source=gradients)
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
    wrapped = remat_model(model, policy, segment=segment)
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
    wrapped = remat_model(model, segment=segment)
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
    wrapped = remat_model(model, "nothing_saveable", segment=3)
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
        "segment=2": (remat_model(model, "nothing_saveable", segment=2), "hand"),
        "whole": (remat_model(model, "nothing_saveable"), "hand"),
        "explicit plain": (model, "explicit"),
        "explicit segment=2": (remat_model(model, segment=2), "explicit"),
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
        remat_model(model, "save_everything_please")
    with pytest.raises(ValueError, match="segment must be a positive int"):
        remat_model(model, segment=0)
    with pytest.raises(ValueError, match="segments need a serial model; dense3 is a leaf"):
        remat_model(nn.Dense(3), segment=2)


# -- per op: Op.remat, op_layer(remat=True), LSTM/RNN(remat=True) ------------------------------
@pytest.mark.parametrize("name", sorted(ops.REGISTRY))
def test_every_op_remat_gives_the_same_gradients(name, key):
    """``op.remat`` (keep inputs, re-run fwd in the backward) against the op's own hand VJP
    (float64, to 1e-12) and against autodiff of the reference (float32 and float64, the usual
    tolerances), on the hand path and the explicit fwd/bwd path."""
    op = ops.REGISTRY[name]
    assert op.remat.name == f"{name}.remat" and op.remat is op.remat  # built once
    arrays, static = op.sample(key, jnp.float64)
    out = jax.eval_shape(lambda *a: op.reference(*a, **static), *arrays)
    cot = check.random_cotangent(jax.random.fold_in(key, 1), out)
    want = check.op_gradients(op, arrays, static, cot, "hand")
    for source in ("hand", "explicit"):
        got = check.op_gradients(op.remat, arrays, static, cot, source)
        _same(got, want, f"{name}.remat {source} vs {name} hand")
    for dtype in ("float32", "float64"):
        report = check.check_op(op.remat, jax.random.fold_in(key, 2), dtype)
        assert report.ok, str(report)


@pytest.mark.parametrize("name", ["layer_norm", "lstm_cell", "attention"])
def test_op_remat_is_differentiable_twice(name, key):
    """Reverse-over-reverse through the recomputing backward (the optimization barrier
    included) equals the reference's second derivative."""
    op = ops.REGISTRY[name]
    arrays, static = op.sample(key, jnp.float64)
    first = [i for i, a in enumerate(arrays) if jnp.issubdtype(a.dtype, jnp.floating)]

    def grad_norm(f):
        def loss(*a):
            return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(f(*a, **static)))

        return lambda *a: jnp.sum(jnp.square(jax.grad(loss, argnums=first[0])(*a)))

    got = jax.grad(grad_norm(op.remat.hand), argnums=first)(*arrays)
    want = jax.grad(grad_norm(op.reference), argnums=first)(*arrays)
    _same(got, want, f"{name}.remat second order")


def _layer_grads(model, params, x, engine):
    if engine == "explicit":

        def f(p):
            y, _, tape = model.forward(p, {}, x)
            return model.backward(p, tape, jnp.cos(y))
    else:

        def f(p):
            g = jax.grad(
                lambda p, x: jnp.sum(jnp.sin(model.apply(p, {}, x, source=engine)[0])),
                argnums=(0, 1),
            )
            return g(p, x)

    return jax.jit(f)(params)


@pytest.mark.parametrize("engine", ["hand", "autodiff", "explicit"])
@pytest.mark.parametrize(
    "make",
    [
        lambda r: nn.LSTM(5, remat=r),
        lambda r: nn.RNN(4, remat=r, return_sequences=False),
        lambda r: nn.op_layer(
            "ln",
            ops.layer_norm,
            lambda k, s, d: (
                s,
                {"gamma": 1 + jax.random.normal(k, s[-1:], d), "beta": jnp.ones(s[-1:], d)},
            ),
            ("gamma", "beta"),
            remat=r,
        ),
    ],
    ids=["lstm", "rnn", "layer_norm"],
)
def test_layer_remat_gives_the_same_gradients(make, engine, key):
    plain, wrapped = make(False), make(True)
    _, params, _ = plain.init(jax.random.fold_in(key, 0), (6, 3), jnp.float64)
    x = jax.random.normal(jax.random.fold_in(key, 1), (2, 6, 3), jnp.float64)
    _same(
        _layer_grads(wrapped, params, x, engine),
        _layer_grads(plain, params, x, engine),
        f"{wrapped.name} {engine}",
    )
    _same(wrapped.apply(params, {}, x)[0], plain.apply(params, {}, x)[0], "forward")


def test_lstm_remat_halves_temporary_memory():
    """The compiled gradient of an LSTM keeps 7 (N, H) arrays per step; with remat 2."""
    rows = {r["label"]: r for r in remat.measure_ops(repeats=1)}
    lstm = [k for k in rows if k.startswith("LSTM") and not k.endswith("remat")][0]
    assert rows[lstm + ", remat"]["temp_bytes"] < 0.55 * rows[lstm]["temp_bytes"], rows
    assert rows[lstm + ", remat"]["flops"] > rows[lstm]["flops"]  # the recomputed forward
    for r in rows.values():
        assert r["grad_rel_diff"] < 1e-6, r
