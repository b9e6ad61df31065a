"""`funcbp train --precision`: the run records it, float16 reports its loss scaling, and a
resume in another precision is refused."""

from __future__ import annotations

import json

import pytest

from funcbp import cli

TINY = ["--epochs", "1", "--hidden", "16", "--batch-size", "32", "--no-progress"]


def test_train_in_float16_records_precision_and_loss_scale(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--precision", "f16", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["precision"] == "f16" and m["test_accuracy"] > 0.5
    assert m["skipped_steps"] == [0] and m["loss_scale"] == [2.0**15]
    assert json.loads((out / "run.json").read_text())["options"]["precision"] == "f16"
    resume = ["train", *TINY, "--precision", "bf16", "--out", str(out), "--resume"]
    assert cli.main(resume) == 2
    assert "precision" in capsys.readouterr().err


def test_unknown_precision_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", *TINY, "--precision", "f8"])
    assert e.value.code == 2 and "invalid choice: 'f8'" in capsys.readouterr().err
