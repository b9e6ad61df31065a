"""Mutation testing of the checker: every broken backward of every registered op is flagged.

For each op in `funcbp.ops.REGISTRY`, `funcbp.mutate` derives broken backwards automatically
(flipped sign, doubled, dropped, swapped, copied, transposed cotangents; a skipped batch sum; a
wrong stored residual) and the checker (hand vs autodiff, float64) must flag every one, except
mutants proven EQUIVALENT (their cotangents equal the true ones on every sample tried), which are
listed with the reason. The op's inputs come from its own sampler at a key fixed by the op's name.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcbp.nn  # noqa: F401  (registers the ops defined next to their layers)
from funcbp import check
from funcbp.check import mutate
from funcbp.ops import REGISTRY

NAMES = sorted(REGISTRY)


def _key(name: str):
    return jax.random.key(zlib.crc32(f"mutate:{name}".encode()))


@functools.cache
def _result(name: str) -> mutate.OpMutation:
    return mutate.mutate_op(REGISTRY[name], _key(name))


@pytest.mark.parametrize("name", NAMES)
def test_every_mutant_is_killed_or_equivalent(name):
    result = _result(name)
    op = REGISTRY[name]
    arrays, _, _ = mutate.draw(op, _key(name))
    n_float = sum(check._is_float(a) for a in arrays)
    # at least sign, scale2 and zero for each float argument
    assert result.made >= 3 * n_float >= 3, (name, result.made)
    assert not result.survivors, "\n".join(
        f"{s.name}: {s.description}: checker error {s.error:.2e} <= tol" for s in result.survivors
    )
    for r in result.results:
        if r.killed:
            assert r.error > check.TOLERANCE["float64"], r
        else:
            assert r.equivalent and r.reason, r
    print(f"{name}: {result.killed}/{result.made} killed, {len(result.equivalent)} equivalent")


def test_total_and_known_equivalents():
    results = [_result(n) for n in NAMES]
    made = sum(r.made for r in results)
    killed = sum(r.killed for r in results)
    equivalent = {e.name: e.reason for r in results for e in r.equivalent}
    print(f"mutation score: {killed}/{made} killed, {len(equivalent)} equivalent: {equivalent}")
    assert made - killed == len(equivalent)
    # Equivalent mutants are rare and explained: a residual used only through its sign or its
    # shape (relu/leaky_relu keep y and test y > 0; the embedding keeps its table for its shape).
    assert len(equivalent) <= 0.05 * made, equivalent
    made_names = {r.name for res in results for r in res.results}
    for name, why in (
        ("relu:residual[0]", "sign pattern"),
        ("embedding:residual[1]", "shape/dtype only"),
    ):
        # relu keeps y (a float residual, hence a residual mutant) unless its draw packs bits
        if name in made_names:
            assert name in equivalent, sorted(equivalent)
            assert why in equivalent[name], equivalent[name]
    families = {r.family for res in results for r in res.results}
    assert families == set(mutate.FAMILIES), families


def _one_mutant(op_name, family):
    op = REGISTRY[op_name]
    arrays, static, _ = mutate.draw(op, _key(op_name))
    found = [m for m in mutate.make_mutants(op, arrays, static) if m.family == family]
    assert found, f"{op_name} has no {family} mutant at its sample"
    return found[0]


# One mutant per family, each run through `check.check_op` itself (jitted, as the CLI runs it):
# the fast un-jitted harness above must agree with the real thing.
LITERAL = [
    ("linear", "sign"),
    ("lstm_cell", "scale2"),
    ("dropout", "zero"),
    ("batch_norm", "swap"),
    ("mse", "copy"),
    ("rnn_cell", "transpose"),
    ("linear", "first_only"),
    ("softmax_cross_entropy", "residual"),
]


@pytest.mark.parametrize(("op_name", "family"), LITERAL)
def test_check_op_itself_flags_mutants(op_name, family):
    if op_name not in REGISTRY:
        pytest.skip(f"{op_name} not registered")
    mutant = _one_mutant(op_name, family)
    report = check.check_op(mutant.op, _key(op_name), jnp.float64, "hand", "autodiff")
    assert not report.ok, str(report)
    assert f"{op_name}:{family}" in report.name


def test_equivalent_mutant_passes_check_op_and_equals_true_bwd():
    """An equivalent mutant is not a checker weakness: check_op passes it, and its cotangents
    equal the true backward's (explicit fwd + bwd, no autodiff)."""
    relu = _relu_keeping_y()
    mutant = next(m for m in mutate.make_mutants(*_draw_two(relu)) if m.family == "residual")
    arrays, static, cot = mutate.draw(relu, _key("relu"))
    assert check.check_op(mutant.op, _key("relu"), jnp.float64, "hand", "autodiff").ok
    bad = check.op_gradients(mutant.op, arrays, static, cot, "explicit", jit=False)
    true = check.op_gradients(relu, arrays, static, cot, "explicit", jit=False)
    np.testing.assert_array_equal(np.asarray(bad[0]), np.asarray(true[0]))


def _draw_two(op):
    arrays, static, _ = mutate.draw(op, _key(op.name))
    return op, arrays, static


def _relu_keeping_y():
    """relu whose sampler always keeps y (``residual="output"``): a float residual to mutate."""
    relu = REGISTRY["relu"]

    def sample(key, dtype):
        arrays, _ = relu.sample(key, dtype)
        return arrays, {"residual": "output"}

    return dataclasses.replace(relu, sample=sample)


def test_transpose_mutant_on_a_square_weight():
    """linear with a square weight: dW → dWᵀ is flagged (the classic transposed-formula bug)."""
    op = REGISTRY["linear"]
    k1, k2, k3, k4 = jax.random.split(jax.random.key(11), 4)
    x = jax.random.normal(k1, (3, 4), jnp.float64)
    w = jax.random.normal(k2, (4, 4), jnp.float64)
    b = jax.random.normal(k3, (4,), jnp.float64)
    cot = jax.random.normal(k4, (3, 4), jnp.float64)
    mutant = next(m for m in mutate.make_mutants(op, (x, w, b), {}) if m.family == "transpose")
    got = check.op_gradients(mutant.op, (x, w, b), {}, cot, "hand", jit=False)
    ref = check.op_gradients(op, (x, w, b), {}, cot, "autodiff", jit=False)
    report = check.compare(got, ref, tol=check.TOLERANCE["float64"])
    assert not report.ok and report.leaves[0].ok and not report.leaves[1].ok, str(report)


def test_no_mutant_touches_integer_or_key_arguments():
    for name in ("embedding", "dropout", "softmax_cross_entropy"):
        if name not in REGISTRY:
            continue
        op, arrays, static = _draw_two(REGISTRY[name])
        non_float = {i for i, a in enumerate(arrays) if not check._is_float(a)}
        for m in mutate.make_mutants(op, arrays, static):
            assert not set(m.args) & non_float, (m.name, non_float)


def test_mutant_cotangents_keep_shapes_and_dtypes():
    """A mutant changes values only: shapes/dtypes stay right, so flags come from the numbers."""
    for name in ("linear", "lstm_cell", "attention"):
        op, arrays, static = _draw_two(REGISTRY[name])
        _, _, cot = mutate.draw(op, _key(name))
        for m in mutate.make_mutants(op, arrays, static):
            grads = jax.eval_shape(
                lambda *a, m=m, s=static, u=cot: check.op_gradients(
                    m.op, a, s, u, "explicit", jit=False
                ),
                *arrays,
            )
            for a, g in zip(arrays, grads, strict=True):
                if g is not None:
                    assert (g.shape, g.dtype) == (a.shape, a.dtype), (m.name, g, a.shape)
