"""`funcbp train` end to end on tiny configs: outputs, resume, bad data, the NaN guard."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from funcbp import checkpoint, cli, data
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
        ["--gradients", "autodiff"],
        ["--engine", "explicit", "--optimizer", "adam", "--lr", "0.01"],
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
    assert cli.main(["train", *TINY, "--out", str(out), "--lr", "inf"]) == 1
    err = capsys.readouterr().err
    assert "non-finite values at step 0" in err and "params after the update" in err


def test_console_script_help():
    r = subprocess.run(
        [sys.executable, "-m", "funcbp.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--gradients" in r.stdout and "--resume" in r.stdout


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
    from funcbp.train_cli import validate_args

    argv = ["train"]
    for k, v in options.items():
        argv += [k, v]
    parser = cli.build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage message on stderr, exit status 2
        assert e.code == 2
        return
    try:
        validate_args(args)
    except ValueError as e:
        assert str(e).startswith("--")  # names the option


# -- the helpers funcbp train, funcbp train --model gpt and funcbp check share
def test_shared_helpers_fail_run_folder_and_write_metrics(tmp_path, capsys):
    from funcbp import _cli_common as common

    assert common.fail("funcbp train: bad --lr") == 2
    assert common.fail("funcbp train: diverged", 1) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["funcbp train: bad --lr", "funcbp train: diverged"]
    assert captured.out == ""
    assert common.run_folder(str(tmp_path), "%Y") == tmp_path
    stamped = common.run_folder(None, "gpt-%Y%m%d")
    assert stamped.parent.name == "runs" and re.fullmatch(r"gpt-\d{8}", stamped.name)
    metrics = {"z": 1, "a": [0.5, None], **common.environment()}
    path = common.write_metrics(tmp_path / "new" / "run", metrics)  # creates the folder
    assert path == tmp_path / "new" / "run" / "metrics.json"
    text = path.read_text()
    assert json.loads(text) == metrics
    assert list(json.loads(text)) == ["z", "a", "versions", "device"]
    assert text.startswith('{\n  "z": 1')  # indented, keys in the given order
