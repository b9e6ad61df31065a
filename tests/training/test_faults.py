"""Training survives SIGKILL at random points (also mid-checkpoint-write): --resume continues
from the last complete checkpoint and ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from funcbp.training import checkpoint

ROOT = Path(__file__).resolve().parents[2]
ARGS = [
    "train",
    "--epochs",
    "6",
    "--hidden",
    "32",
    "--batch-size",
    "16",
    "--no-progress",
    "--optimizer",
    "adam",
    "--lr",
    "0.003",
    "--seed",
    "3",
]


def _cmd(module, out, *extra):
    return [sys.executable, "-m", module, *ARGS, "--out", str(out), *extra]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def _leaves(path):
    # the raw arrays of a checkpoint, in order (structure checked by restore elsewhere)
    with np.load(path) as npz:
        return [npz[k] for k in sorted(npz.files) if k.startswith("leaf_")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    subprocess.run(
        _cmd("funcbp.cli", out), cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=600
    )
    return out


def _assert_same_final(a: Path, b: Path):
    la, lb = _leaves(a / "checkpoint.npz"), _leaves(b / "checkpoint.npz")
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=False):
        np.testing.assert_array_equal(x, y)  # bit-identical
    assert checkpoint.read_extra(b / "checkpoint.npz")["epoch"] == 6


def _kill_after(cmd, delay):
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path, uninterrupted):
    rng = random.Random(1234)
    out = tmp_path / "run"
    kills = 0
    for _ in range(3):  # kill three times at random moments, resuming in between
        _kill_after(_cmd("funcbp.cli", out, "--resume"), rng.uniform(2.0, 8.0))
        kills += 1
        ckpt = out / "checkpoint.npz"
        if ckpt.exists():  # whatever is there is complete and loadable
            checkpoint.read_extra(ckpt)
    r = subprocess.run(
        _cmd("funcbp.cli", out, "--resume"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert kills == 3
    _assert_same_final(uninterrupted, out)


@pytest.mark.slow
def test_sigkill_during_checkpoint_write(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _cmd("tests.scripts.slow_checkpoint_train", out),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen = 0
    for line in proc.stdout:  # wait for the SECOND write: a good checkpoint already exists
        if line.startswith("CHECKPOINT-WRITE"):
            seen += 1
            if seen == 2:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    proc.stdout.close()
    assert seen == 2
    ckpt = out / "checkpoint.npz"
    assert checkpoint.read_extra(ckpt)["epoch"] == 1  # the old file, intact
    assert any(p.name.endswith(".tmp") for p in out.iterdir())  # the half-done write
    r = subprocess.run(
        _cmd("funcbp.cli", out, "--resume"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_final(uninterrupted, out)
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # stale temp files cleaned


def test_jax_device_count_is_one_here():
    assert len(jax.devices()) == 1  # the multi-device tests run in subprocesses
