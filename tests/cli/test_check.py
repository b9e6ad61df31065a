"""``funcbp check``: the gradient report on the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from funcbp import cli


def test_check_some_ops_prints_a_table(capsys):
    assert cli.main(["check", "--ops", "linear", "relu", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "funcbp check" in out
    for word in ("linear", "relu", "float32", "float64", "autodiff", "fd", "pass"):
        assert word in out, word
    assert "FAIL" not in out
    # linear and relu: float32 vs autodiff, float64 vs autodiff, float64 vs fd.
    assert "6 passed, 0 failed" in out


def test_check_unknown_op_returns_2(capsys):
    assert cli.main(["check", "--ops", "linear", "no_such_op"]) == 2
    captured = capsys.readouterr()
    assert "funcbp check: unknown op(s) ['no_such_op']" in captured.err
    assert "linear" in captured.err  # the known ops are listed


def test_check_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as e:
        cli.main(["check", "--seeds", "many"])
    assert e.value.code == 2


def test_check_as_a_program():
    """The module entry point, in a fresh interpreter (the console script runs the same main)."""
    env = {**os.environ, "COLUMNS": "200"}
    run = subprocess.run(
        [sys.executable, "-m", "funcbp.cli", "check", "--ops", "sigmoid", "--seeds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "sigmoid" in run.stdout and "3 passed, 0 failed" in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "funcbp.cli", "check", "--ops", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert bad.returncode == 2 and "unknown op(s) ['nope']" in bad.stderr


def test_check_piped_to_a_file_keeps_full_op_names(tmp_path):
    """Not a terminal: the table is as wide as it needs, no 'batch_n…' truncation."""
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        run = subprocess.run(
            [sys.executable, "-m", "funcbp.cli", "check", "--ops", "batch_norm_inference",
             "--seeds", "1"],
            stdout=f, stderr=subprocess.PIPE, text=True, timeout=300,
            env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    text = log.read_text()
    assert text.count("batch_norm_inference") >= 3 and "…" not in text


def test_check_model_reports_one_row_per_layer_of_the_gpt(capsys):
    assert cli.main(["check", "--model", "gpt"]) == 0
    out = capsys.readouterr().out
    assert "first divergence: none" in out
    for path in ("blocks.0.attn.qkv", "blocks.1.mlp.proj", "pos", "head"):
        assert path in out, path


def test_check_mutants_and_calibrate_tables(capsys):
    assert cli.main(["check", "--mutants", "--ops", "relu", "mse"]) == 0
    out = capsys.readouterr().out
    assert "relu" in out and "mse" in out and "total" in out
    assert cli.main(["check", "--mutants", "--ops", "nope"]) == 2
    assert "funcbp check --mutants: unknown op(s) ['nope']" in capsys.readouterr().err
    assert cli.main(["check", "--calibrate", "--ops", "relu", "softmax", "--seeds", "1"]) == 0
    assert "softmax" in capsys.readouterr().out
