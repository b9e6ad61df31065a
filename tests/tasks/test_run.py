"""The one run path: options resolved and validated per task, run folders that cannot be lost
(a file or unwritable --out, another run's folder, two runs at once), run.json, and --resume
refused when anything that shapes the run differs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from funcbp.tasks import TASKS, folder
from funcbp.tasks import run as runs
from funcbp.tasks.options import RUN, TRAINING, Option, resolve

ROOT = Path(__file__).resolve().parents[2]


def test_resolve_fills_task_defaults_and_validates_every_option():
    gpt, mlp = TASKS["gpt"], TASKS["mlp"]
    opts = resolve("gpt", gpt.options, gpt.defaults, {"lr": 0.01})
    assert opts["lr"] == 0.01 and opts["batch_size"] == 128 and opts["optimizer"] == "adamw"
    assert opts["width"] == 64 and "hidden" not in opts
    opts = resolve("mlp", mlp.options, mlp.defaults, {})
    assert opts["hidden"] == [128, 128] and opts["optimizer"] == "sgd" and opts["epochs"] == 30
    assert set(opts) == {o.name for o in (*TRAINING, *RUN, *mlp.options)}
    for given, message in [
        ({"heads": 4}, "--heads is not an option of task mlp"),
        ({"lr": float("nan")}, "--lr must be a finite number"),
        ({"lr": 0.0}, "--lr must be > 0"),
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"weight_decay": -1.0}, "--weight-decay must be >= 0"),
        ({"hidden": [8, 0]}, "--hidden must be >= 1"),
        ({"activation": "swish"}, "--activation must be one of"),
        ({"source": "numeric"}, "--source must be one of"),
        ({"epochs": True}, "--epochs must be an int"),
    ]:
        with pytest.raises(ValueError, match=message):
            resolve("mlp", mlp.options, mlp.defaults, given)


def test_option_check_types():
    o = Option("widths", int, [1], "w", nargs="+", minimum=1)
    assert o.check([3, 4]) == [3, 4] and o.flag == "--widths"
    with pytest.raises(ValueError, match="--widths needs at least one value"):
        o.check([])
    assert Option("lr", float, 1.0, "").check(2) == 2  # an int is a number


def _prepare(tmp_path, **given):
    given = {"epochs": 1, "hidden": [8], "no_progress": True, **given}
    return runs.prepare(TASKS["mlp"], given)


def test_prepare_writes_run_json_and_locks_the_folder(tmp_path):
    out = tmp_path / "a"
    run = _prepare(tmp_path, out=str(out))
    record = json.loads((out / "run.json").read_text())
    assert record["task"] == "mlp" and record["options"]["hidden"] == [8]
    assert record["data"]["name"] == "digits" and len(record["data"]["fingerprint"]) == 16
    assert record["optimizer"]["name"] == "sgd" and record["optimizer"]["total_steps"] is None
    # a second run on the same folder (another process) fails at once: the folder is locked
    code = (
        "import sys; from funcbp.tasks import TASKS; from funcbp.tasks import run as r\n"
        "try:\n    r.prepare(TASKS['mlp'], {'out': sys.argv[1], 'resume': True})\n"
        "except ValueError as e:\n    print(e)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120)  # fmt: skip
    assert "is in use by another funcbp run" in p.stdout, p.stdout + p.stderr
    run.close()  # the run ends: the folder is free again


def test_folders_that_would_lose_work_are_refused(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(folder.FolderError, match="is a file, not a folder"):
        _prepare(tmp_path, out=str(a_file))
    with pytest.raises(folder.FolderError, match="is a file, not a folder"):
        _prepare(tmp_path, out=str(a_file / "sub"))
    done = tmp_path / "done"
    _prepare(tmp_path, out=str(done)).close()
    with pytest.raises(folder.FolderError, match="already holds a run .*--resume.*--force"):
        _prepare(tmp_path, out=str(done))
    run = _prepare(tmp_path, out=str(done), force=True)  # replaces it
    run.close()
    with pytest.raises(ValueError, match="not both"):
        _prepare(tmp_path, out=str(done), force=True, resume=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_out_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(folder.FolderError, match="is not writable"):
        _prepare(tmp_path, out=str(ro / "run"))


def test_resume_with_a_different_config_names_every_difference(tmp_path):
    out = tmp_path / "r"
    _prepare(tmp_path, out=str(out)).close()
    with pytest.raises(folder.FolderError) as e:
        _prepare(tmp_path, out=str(out), resume=True, lr=0.1, seed=1)
    text = str(e.value)
    assert "options.lr: 0.05 -> 0.1" in text and "options.seed: 0 -> 1" in text
    assert "data.fingerprint" in text  # the seed also changes the digits split
    # more epochs (constant learning rate) continue the same run
    _prepare(tmp_path, out=str(out), resume=True, epochs=3).close()


def test_rebuild_from_run_json(tmp_path):
    out = tmp_path / "g"
    run = runs.prepare(TASKS["gpt"], {"out": str(out), "n_train": 64, "width": 8, "heads": 2,
                                      "layers": 1, "epochs": 1, "batch_size": 32})  # fmt: skip
    run.close()
    model, optimizer, opts, info = runs.rebuild(TASKS["gpt"], folder.read_run(out))
    assert model.name == run.model.name and opts["width"] == 8 and info["context"] == 9
