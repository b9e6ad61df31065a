"""The precision report: each op's hand VJP in bf16 vs autodiff in bf16, both against float64,
held to FlashAttention's rule — and a planted loss of precision is caught."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from funcbp import cli, ops
from funcbp.check.precision import RULE, check_precision, check_registry_precision


@pytest.mark.parametrize("op", [ops.linear, ops.layer_norm, ops.softmax_cross_entropy])
def test_ops_meet_the_rule_in_bf16(op, key):
    report = check_precision(op, key, jnp.bfloat16, draws=2)
    assert report.ok, report
    assert report.dtype == "bfloat16" and {r.name for r in report.rows} >= {"out"}
    assert all(r.hand < 0.05 and r.autodiff < 0.05 for r in report.rows)  # bf16-sized errors


def _coarse_bwd(res, dy):
    """linear's backward with dX rounded through float8: correct, but needlessly imprecise."""
    dx, dw, db = ops.REGISTRY["linear"].bwd(res, dy)
    return dx.astype(jnp.float8_e4m3fn).astype(dx.dtype), dw, db


def test_a_planted_loss_of_precision_fails_the_rule(key):
    coarse = ops.linear.with_bwd(_coarse_bwd, name="linear_float8_dx")
    report = check_precision(coarse, key, jnp.bfloat16, draws=2)
    assert not report.ok
    assert report.worst.name == "dx" and report.worst.ratio > RULE


def test_registry_report_and_bad_draws(key):
    reports = check_registry_precision(jnp.float16, draws=1, ops=[ops.relu, ops.tanh])
    assert [r.name for r in reports] == ["relu", "tanh"] and all(r.ok for r in reports)
    with pytest.raises(ValueError, match="draws must be an int >= 1"):
        check_precision(ops.relu, jax.random.key(0), draws=0)


def test_check_precision_on_the_command_line(capsys):
    assert (
        cli.main(["check", "--precision", "bf16", "--ops", "linear", "relu", "--seeds", "1"]) == 0
    )
    out = capsys.readouterr().out
    for word in ("--precision bfloat16", "linear", "relu", "ratio", "autodiff error", "pass"):
        assert word in out, word
    assert "2 passed, 0 failed" in out
