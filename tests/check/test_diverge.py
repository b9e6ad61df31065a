"""The divergence report names exactly the layer with a planted bug, and none in clean models.

Bugs are planted at the op level: a layer built with `nn.op_layer` from ``op.with_bwd(bad)``,
``bad`` one of `funcbp.mutate`'s automatic mutants of that op (flipped sign, dropped term, skipped
batch sum, wrong stored residual ...). Clean models: an MLP, the CNN (8×8×1, with batch norm and
dropout) and, where registered, the GPT — every row agrees in float64 and float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcbp import nn, ops
from funcbp.check import diverge, mutate
from funcbp.nn.init import variance_scaling

ONE = settings(max_examples=max(1, settings.default.max_examples // 6))


def _dense_init(width):
    def init(key, input_shape, dtype):
        w = variance_scaling(1.0)(key, (input_shape[-1], width), dtype)
        b = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (width,), dtype)
        return (*input_shape[:-1], width), {"w": w, "b": b}

    return init


def _linear_mutants(n, i, o):
    k = jax.random.split(jax.random.key(0), 3)
    arrays = (
        jax.random.normal(k[0], (n, i)),
        jax.random.normal(k[1], (i, o)),
        jax.random.normal(k[2], (o,)),
    )
    return {m.name.split(":", 1)[1]: m for m in mutate.make_mutants(ops.linear, arrays, {})}


def _mlp_with(bad_op, position, widths=(6, 5, 4, 3)):
    """Dense/tanh stack; the Dense at ``position`` (an index into the layers) uses ``bad_op``."""
    layers = []
    for j, w in enumerate(widths):
        op = bad_op if len(layers) == position else ops.linear
        layers.append(
            nn.op_layer(
                f"dense{j}" + ("_bad" if op is bad_op else ""), op, _dense_init(w), ("w", "b")
            )
        )
        if j < len(widths) - 1:
            layers.append(nn.Tanh())
    return nn.serial(*layers, name="planted")


def _batch(key, n, features, classes):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, features), jnp.float64)
    y = jax.random.randint(ky, (n,), 0, classes).astype(jnp.int32)
    return x, y


# (mutant of linear, index of the Dense layer that gets it): every Dense position is covered
PLANTED = [
    ("sign(w)", 6),
    ("zero(x)", 2),
    ("scale2(b)", 4),
    ("first_only(b)", 0),
    ("residual[1]", 2),
    ("residual[0]", 6),
]


@pytest.mark.parametrize(("mutant", "position"), PLANTED)
@ONE
@given(seed=st.integers(0, 2**31 - 1))
def test_planted_bug_is_named(mutant, position, seed):
    n = 5
    bad = _linear_mutants(n, 4, 4)[mutant].op
    model = _mlp_with(bad, position)
    _, params, state = model.init(jax.random.key(seed), (7,), jnp.float64)
    x, y = _batch(jax.random.key(seed ^ 1), n, 7, 3)
    report = diverge.divergence_report(model, params, state, x, y, dtype="float64")
    # at position 0, dL/dx of the first layer is the input's gradient: compared too
    assert report.first_divergence == diverge.Divergence(
        position, model.children[position][1].name
    ), str(report)
    # every row above the planted layer agrees, and the local check isolates it
    rows = {r.index: r for r in report.rows}
    assert all(rows[i].ok for i in rows if i > position)
    bad_row = rows[position]
    local = [e for e in (bad_row.local_dparams, bad_row.local_dx) if e is not None]
    assert max(local) > bad_row.tol
    for i in rows:
        if i > position and i < len(model.children):
            assert all(
                e is None or e <= rows[i].tol for e in (rows[i].local_dparams, rows[i].local_dx)
            )


def test_planted_bug_with_grad_hand_path():
    """``source="hand"`` (jax.grad through the custom VJPs) finds the same layer."""
    bad = _linear_mutants(4, 4, 4)["sign(b)"].op
    model = _mlp_with(bad, 2)
    _, params, state = model.init(jax.random.key(1), (7,), jnp.float64)
    x, y = _batch(jax.random.key(2), 4, 7, 3)
    report = diverge.divergence_report(model, params, state, x, y, source="hand")
    assert report.first_divergence == diverge.Divergence(2, "dense1_bad"), str(report)
    assert all(r.local_dx is None for r in report.rows)


def _cnn_with_bad_conv(bad):
    from funcbp.ops.conv import conv2d

    def init(key, input_shape, dtype):
        w = variance_scaling(2.0)(key, (3, 3, input_shape[-1], 4), dtype)
        b = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (4,), dtype)
        out = jax.eval_shape(
            lambda x: conv2d.reference(x, w, b), jnp.zeros((1, *input_shape), dtype)
        )
        return out.shape[1:], {"w": w, "b": b}

    bad_conv = nn.op_layer("conv_bad", conv2d.with_bwd(bad), init, ("w", "b"))
    return nn.serial(
        nn.Conv2D(3, 3),
        nn.Relu(),
        bad_conv,
        nn.Relu(),
        nn.MaxPool2D(2),
        nn.Flatten(),
        nn.Dense(10),
        name="cnn_planted",
    )


@pytest.mark.parametrize("family", ["sign", "first_only", "residual"])
def test_planted_conv_bug_in_a_cnn(family):
    from funcbp.ops.conv import conv2d

    k = jax.random.split(jax.random.key(3), 3)
    sample = (
        jax.random.normal(k[0], (2, 8, 8, 3)),
        jax.random.normal(k[1], (3, 3, 3, 4)),
        jax.random.normal(k[2], (4,)),
    )
    mutant = next(
        m
        for m in mutate.make_mutants(conv2d, sample, {})
        if m.family == family and (not m.args or m.args[0] == 1)
    )  # the kernel's cotangent, or a residual
    model = _cnn_with_bad_conv(mutant.op.bwd)
    _, params, state = model.init(jax.random.key(4), (8, 8, 1), jnp.float64)
    x = jax.random.normal(jax.random.key(5), (6, 8, 8, 1), jnp.float64)
    y = jax.random.randint(jax.random.key(6), (6,), 0, 10).astype(jnp.int32)
    report = diverge.divergence_report(model, params, state, x, y)
    assert report.first_divergence == diverge.Divergence(2, "conv_bad"), str(report)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_clean_cnn_and_mlp_agree_everywhere(dtype):
    for model, shape in (
        (nn.cnn(10, channels=(4, 6), hidden=16), (8, 8, 1)),
        (nn.mlp([16, 12, 10], activation="gelu"), (64,)),
    ):
        _, params, state = model.init(jax.random.key(7), shape, jnp.float64)
        x = jax.random.normal(jax.random.key(8), (8, *shape), jnp.float64)
        y = jax.random.randint(jax.random.key(9), (8,), 0, 10).astype(jnp.int32)
        report = diverge.divergence_report(
            model, params, state, x, y, key=jax.random.key(10), dtype=dtype
        )
        assert report.ok, str(report)
        assert report.dtype == dtype
        assert [r.index for r in report.rows] == list(range(len(model.children), -1, -1))
        assert report.rows[0].name == "softmax_cross_entropy"
        # the activation gradients are real (not all zero) down to the input
        assert report.rows[-1].dx is not None and report.rows[-1].dx_norm > 0
        assert np.isfinite(report.loss)


def test_bad_arguments():
    model = nn.mlp([3])
    _, params, state = model.init(jax.random.key(0), (2,), jnp.float64)
    x, y = _batch(jax.random.key(1), 3, 2, 3)
    with pytest.raises(ValueError, match="source must be 'explicit' or 'hand'"):
        diverge.divergence_report(model, params, state, x, y, source="jvp")


def test_planted_bug_in_the_loss():
    k = jax.random.split(jax.random.key(12), 2)
    sample = (jax.random.normal(k[0], (4, 3)), jax.nn.softmax(jax.random.normal(k[1], (4, 3))))
    mutant = next(
        m
        for m in mutate.make_mutants(ops.softmax_cross_entropy, sample, {})
        if m.name.endswith("scale2(logits)")
    )
    model = nn.mlp([5, 3], activation="tanh")
    _, params, state = model.init(jax.random.key(13), (4,), jnp.float64)
    x, y = _batch(jax.random.key(14), 6, 4, 3)
    report = diverge.divergence_report(model, params, state, x, y, loss=mutant.op)
    n = len(model.children)
    assert report.first_divergence == diverge.Divergence(n, mutant.op.name), str(report)


def test_gpt_gets_one_row_per_leaf_inside_every_block():
    """The GPT is a composition: its report has a row for each leaf layer of each block
    (paths into the params tree), and a bug planted in one block's MLP projection is named."""
    from funcbp.nn.gpt import GPTConfig, gpt

    config = GPTConfig(vocab=7, context=5, layers=2, heads=2, width=8)
    model = gpt(config)
    _, params, state = model.init(jax.random.key(0), (5,), jnp.float64)
    x = jax.random.randint(jax.random.key(1), (3, 5), 0, 7)
    report = diverge.divergence_report(model, params, state, x, x)
    assert report.ok, str(report)
    paths = [r.path for r in report.rows]
    assert len(paths) == 1 + 2 + 2 * 10 + 2  # loss; tok, pos; 10 leaves a block; ln_f, head
    assert "blocks.1.attn.qkv" in paths and "blocks.0.mlp.gelu" in paths


def test_planted_bug_deep_inside_a_residual_block_is_named():
    """A transformer block whose MLP projection has a broken backward: the first divergence is
    that leaf, by its path, and every row after it (closer to the loss) agrees."""
    from funcbp.nn.gpt import GPTConfig, block

    config = GPTConfig(vocab=7, context=5, layers=2, heads=2, width=8)
    bad = _linear_mutants(4, 32, 8)["scale2(w)"].op
    ok = block(config)
    mlp = nn.residual(
        nn.serial(
            ln=nn.LayerNorm(),
            fc=nn.Dense(32),
            gelu=nn.Gelu(True),
            proj=nn.op_layer("dense_bad", bad, _dense_init(8), ("w", "b")),
        )
    )
    broken = nn.serial(attn=dict(ok.children)["attn"], mlp=mlp)
    model = nn.serial(inp=nn.Dense(8), blocks=nn.serial(ok, broken), out=nn.Dense(3))
    _, params, state = model.init(jax.random.key(2), (5, 6), jnp.float64)
    x = jax.random.normal(jax.random.key(3), (3, 5, 6), jnp.float64)
    y = jax.random.randint(jax.random.key(4), (3, 5), 0, 3)
    report = diverge.divergence_report(model, params, state, x, y)
    first = report.first_divergence
    row = next(r for r in report.rows if r.index == first.index)
    assert (row.path, first.name) == ("blocks.1.mlp.proj", "dense_bad"), str(report)
    assert all(r.ok for r in report.rows if r.index > first.index)
