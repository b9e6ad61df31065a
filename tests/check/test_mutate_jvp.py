"""Mutation testing of the forward-mode check: every broken JVP of every registered op is flagged.

For each op in `funcbp.ops.REGISTRY`, `funcbp.check.mutate_jvp` derives broken JVP rules
(a term's sign flipped, doubled or forgotten; tangents swapped, copied, transposed or not
broadcast; the tangent taken at a wrong primal; a wrong primal output) and the check (hand JVP
vs `jax.jvp` of the reference, float64) must flag every one, except mutants proven EQUIVALENT
(their ``(out, J t)`` equals the true one on every sample tried), which carry the reason. The
op's inputs come from its own sampler at a key fixed by the op's name.
"""

from __future__ import annotations

import functools
import zlib

import jax
import pytest

from funcbp.check import jvp as check_jvp
from funcbp.check import mutate_jvp
from funcbp.ops import REGISTRY

NAMES = sorted(REGISTRY)
AFFINE_IN = {  # (op, argument): the op is affine in it with a constant slope
    ("linear", "b"),
    ("conv2d", "b"),
    ("layer_norm", "beta"),
    ("batch_norm", "beta"),
    ("batch_norm_inference", "beta"),
    ("avg_pool2d", "x"),
    ("dropout", "x"),
    ("embedding", "table"),
    ("rope", "x"),
}
SIGN_OR_ORDER = {("relu", "x"), ("leaky_relu", "x"), ("max_pool2d", "x")}


def _key(name: str):
    return jax.random.key(zlib.crc32(f"mutate_jvp:{name}".encode()))


@functools.cache
def _result(name: str):
    return mutate_jvp.mutate_op(REGISTRY[name], _key(name))


@pytest.mark.parametrize("name", NAMES)
def test_every_jvp_mutant_is_killed_or_equivalent(name):
    result = _result(name)
    arrays, *_ = check_jvp.draw(REGISTRY[name], _key(name))
    n_float = len(check_jvp.float_positions(arrays))
    # sign, scale2, zero and primal for each float argument, and the wrong output
    assert result.made >= 4 * n_float + 1 >= 5, (name, result.made)
    assert not result.survivors, "\n".join(
        f"{s.name}: {s.description}: check error {s.error:.2e} <= tol" for s in result.survivors
    )
    for r in result.results:
        if r.killed:
            assert r.error > check_jvp.JVP_TOLERANCE["float64"], r
        else:
            assert r.equivalent and r.reason, r
    print(f"{name}: {result.killed}/{result.made} killed, {len(result.equivalent)} equivalent")


@pytest.mark.parametrize("name", NAMES)
def test_transpose_identity_alone_flags_every_wrong_tangent(name):
    """Without autodiff or the reference, ⟨J t, c⟩ = ⟨t, Jᵀ c⟩ against the true hand VJP flags
    every killed mutant whose tangent is wrong; a wrong primal output it cannot see."""
    for r in _result(name).results:
        if r.family == "out":
            assert not r.by_transpose, r
        elif r.killed:
            assert r.by_transpose, f"{r.name}: killed by the check but not by the identity"


def test_totals_and_known_equivalents():
    results = [_result(n) for n in NAMES]
    totals = mutate_jvp.counts(results)
    print(f"JVP mutation score: {totals}")
    assert totals["survived"] == 0 and totals["made"] == totals["killed"] + totals["equivalent"]
    equivalent = {e.name: e for r in results for e in r.equivalent}
    # Only wrong-primal mutants of arguments the tangent does not use (or uses by sign/order).
    for name, e in equivalent.items():
        op, arg = name.split(":")[0], e.name.split("(")[1].rstrip(")")
        assert e.family == "primal", e
        if (op, arg) in AFFINE_IN:
            assert "does not depend on the value" in e.reason, e
        else:
            assert (op, arg) in SIGN_OR_ORDER and "sign pattern or order" in e.reason, e
    for op, arg in AFFINE_IN | SIGN_OR_ORDER:
        if op in REGISTRY:
            assert f"{op}:primal({arg})" in equivalent, sorted(equivalent)
    families = {r.family for res in results for r in res.results}
    assert families == set(mutate_jvp.FAMILIES), families
