"""`funcbp train` end to end on tiny configs: outputs, resume, bad data, the NaN guard."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from funcbp import cli, data
from funcbp.training import checkpoint
from tests.helpers import toy_classification

TINY = ["--epochs", "2", "--hidden", "16", "--batch-size", "32", "--no-progress"]


def _npz(tmp_path, **override):
    d = toy_classification(n_train=128, n_test=32)
    arrays = {"x_train": d.x_train, "y_train": d.y_train, "x_test": d.x_test, "y_test": d.y_test}
    arrays.update(override)
    path = tmp_path / "toy.npz"
    np.savez(path, **arrays)
    return path


def test_train_writes_metrics_plot_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["test_accuracy"] <= 1.0
    assert len(m["train_loss"]) == 2 and m["seconds"] > 0 and m["steps_per_second"] > 0
    for key in (
        "hand_vs_autodiff_float32",
        "hand_vs_autodiff_float64",
        "explicit_vs_autodiff_float64",
    ):
        assert m["gradient_check"][key]["ok"], key
    assert m["gradient_check"]["hand_vs_autodiff_float64"]["max_rel"] < 1e-9
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert checkpoint.read_extra(out / "checkpoint.npz")["epoch"] == 2
    assert "gradient check" in capsys.readouterr().out


def test_resume_continues_to_more_epochs(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 0
    args = ["train", *TINY, "--out", str(out), "--resume"]
    args[args.index("--epochs") + 1] = "3"
    assert cli.main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from_epoch"] == 2 and m["epochs"] == 3 and len(m["train_loss"]) == 3


def test_resume_needs_out(capsys):
    assert cli.main(["train", *TINY, "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_user_npz_and_autodiff_and_explicit(tmp_path):
    path = _npz(tmp_path)
    for extra in (
        ["--source", "autodiff"],
        ["--source", "explicit", "--optimizer", "adam", "--lr", "0.01"],
    ):
        out = tmp_path / extra[1]
        assert cli.main(["train", *TINY, "--data", str(path), "--out", str(out), *extra]) == 0
        assert json.loads((out / "metrics.json").read_text())["data"]


@pytest.mark.parametrize(
    "override, match",
    [
        ({"y_train": None}, "y_train"),
        ({"x_train": np.full((128, 6), np.nan, np.float32)}, "NaN|nan|finite"),
        ({"y_test": np.full(32, -1)}, "negative|label"),
    ],
)
def test_bad_npz_is_a_clear_error_before_training(tmp_path, capsys, override, match):
    if override.get("y_train", 0) is None:
        d = toy_classification()
        path = tmp_path / "bad.npz"
        np.savez(path, x_train=d.x_train, x_test=d.x_test, y_test=d.y_test)
    else:
        path = _npz(tmp_path, **override)
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--data", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("funcbp train:") and "Traceback" not in err
    assert __import__("re").search(match, err)
    assert not out.exists()


def test_diverging_lr_exits_1_with_message(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out), "--lr", "1e30"]) == 1
    err = capsys.readouterr().err
    assert "non-finite values at step 1 (epoch 1" in err and "params after the update" in err
    assert "checkpoint" not in err  # none was written: none is named
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "b"), "--lr", "inf"]) == 2
    assert "--lr must be a finite number" in capsys.readouterr().err


def test_console_script_help():
    r = subprocess.run(
        [sys.executable, "-m", "funcbp.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--source" in r.stdout and "--resume" in r.stdout and "--heads" in r.stdout


def test_digits_default_loads():
    d = data.load("digits", seed=0)
    assert d.x_train.shape[1] == 64 and d.n_classes == 10


# -- fuzzing the arguments: every combination parses and validates, or fails with a clear error
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_VALUES = {
    "--epochs": st.sampled_from(["-1", "0", "3", "x", "1e9"]),
    "--batch-size": st.sampled_from(["0", "-5", "32", "1.5", ""]),
    "--lr": st.sampled_from(["0", "-0.1", "nan", "inf", "0.01", "abc"]),
    "--weight-decay": st.sampled_from(["-1", "nan", "0", "1e-4", "inf"]),
    "--optimizer": st.sampled_from(["sgd", "adam", "rmsprop", ""]),
    "--gradients": st.sampled_from(["hand", "autodiff", "numeric"]),
    "--model": st.sampled_from(["mlp", "cnn", "resnet"]),
    "--hidden": st.sampled_from(["16", "0", "-3", "a"]),
    "--activation": st.sampled_from(["relu", "tanh", "swish"]),
    "--steps-per-call": st.sampled_from(["0", "1", "4"]),
    "--devices": st.sampled_from(["0", "1", "-2"]),
}


@settings(max_examples=300)  # pure Python, no compilation: cheap to fuzz widely
@given(
    st.dictionaries(st.sampled_from(sorted(_VALUES)), st.just(None), max_size=6).flatmap(
        lambda keys: st.fixed_dictionaries({k: _VALUES[k] for k in keys})
    )
)
def test_fuzzed_arguments_parse_or_fail_cleanly(options):
    from funcbp.cli.options import given_options, readers
    from funcbp.tasks import TASKS
    from funcbp.tasks.options import resolve

    argv = ["train"]
    for k, v in options.items():
        argv += [k, v]
    parser = cli.build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage message on stderr, exit status 2
        assert e.code == 2
        return
    task = TASKS[args.task]
    try:
        resolve(task.name, task.options, task.defaults, given_options(args), readers())
    except ValueError as e:
        assert str(e).startswith("--")  # names the option


# -- the run path's guarantees, seen from the command line (issue: runs cannot be lost)
def test_options_another_task_reads_are_refused(capsys):
    assert cli.main(["train", "--model", "mlp", "--heads", "4"]) == 2
    assert "--heads is not an option of task mlp (read by: gpt, llama)" in capsys.readouterr().err
    assert cli.main(["train", "--model", "cnn", "--hidden", "8"]) == 2
    assert "--hidden is not an option of task cnn (read by: mlp)" in capsys.readouterr().err


def test_rerun_into_a_finished_run_is_refused_then_forced(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(out)]) == 0
    before = (out / "checkpoint.npz").read_bytes()
    assert cli.main(["train", *TINY, "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "checkpoint.npz").read_bytes() == before
    assert cli.main(["train", *TINY, "--out", str(out), "--force", "--seed", "1"]) == 0
    assert json.loads((out / "run.json").read_text())["options"]["seed"] == 1


def test_one_example_at_the_relu_kink_is_explained_not_failed(tmp_path, capsys):
    """One training example: standardisation makes it all zeros, every ReLU input sits at 0
    where hand (0) and autodiff (1/2) differ. The check says so, checks a nudged batch, passes."""
    d = toy_classification(n_train=1, n_test=4)
    path = tmp_path / "one.npz"
    np.savez(path, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    args = ["train", "--data", str(path), "--epochs", "1", "--batch-size", "1", "--hidden", "4"]
    assert cli.main([*args, "--no-progress", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "sit exactly at a kink" in out and "FAIL" in out and "nudged" in out
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "kink" in m["gradient_check"]["note"]


def test_internal_errors_are_one_line(monkeypatch, capsys, tmp_path):
    from funcbp.cli import train as train_cmd

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(train_cmd, "gradient_check", boom)
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: kaboom" in err and "Traceback" not in err


def test_shared_helpers_fail_and_write_json(tmp_path, capsys):
    from funcbp.cli.common import fail
    from funcbp.tasks.folder import write_json

    assert fail("funcbp train: bad --lr") == 2
    assert fail("funcbp train: diverged", 1) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["funcbp train: bad --lr", "funcbp train: diverged"]
    assert captured.out == ""
    metrics = {"z": 1, "a": [0.5, None]}
    path = write_json(tmp_path / "metrics.json", metrics)
    text = path.read_text()
    assert json.loads(text) == metrics and list(json.loads(text)) == ["z", "a"]
    assert text.startswith('{\n  "z": 1')  # indented, keys in the given order
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left


def test_multi_host_options_are_checked_before_any_work(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", *TINY, "--out", out, "--coordinator", "host0:1234"]) == 2
    assert "--coordinator is an option of a --distributed run" in capsys.readouterr().err
    bad = ["--distributed", "--coordinator", "host0", "--num-processes", "2", "--process-id", "0"]
    assert cli.main(["train", *TINY, "--out", out, *bad]) == 2
    assert "--coordinator must be HOST:PORT" in capsys.readouterr().err
    bad = ["--distributed", "--coordinator", "localhost:1", "--num-processes", "2",
           "--process-id", "2"]  # fmt: skip
    assert cli.main(["train", *TINY, "--out", out, *bad]) == 2
    assert "--process-id must be in [0, 2)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
