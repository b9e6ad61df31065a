"""Multi-process training: launch settings, one writer, and two real processes on localhost.

The slow test starts two processes with 4 simulated CPU devices each (gloo collectives) and one
process with 8, all training the digits MLP through `funcbp.training.fit` over a mesh of the 8
devices, in float64: the accuracies must agree exactly, the losses and params to 1e-13 (not
bit for bit: gloo adds the two processes' partial gradients in another order than one process
adds its 8 devices'; measured here: 1 ulp). The 8-device checkpoint then resumes here, on 1
device, within 1e-12 of an uninterrupted float64 run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from funcbp.training import checkpoint, distributed
from funcbp.training import loop as fit

ROOT = Path(__file__).resolve().parents[2]
ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


# -- launch settings (no process is started: jax.distributed.initialize is recorded) -----------
@pytest.fixture
def calls(monkeypatch):
    """The keyword arguments each `jax.distributed.initialize` call received."""
    got = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: got.append(kw))
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return got


def test_nothing_given_keeps_cluster_auto_detection(calls):
    assert distributed.initialize() == {}
    assert calls == [{}]
    assert jax.config.jax_cpu_collectives_implementation == "gloo"


def test_environment_is_passed_explicitly(calls, monkeypatch):
    env = dict(zip(ENV_VARS, ["host0:1234", "2", "1"], strict=True))
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    want = {"coordinator_address": "host0:1234", "num_processes": 2, "process_id": 1}
    assert distributed.initialize() == want
    # options override the environment
    distributed.initialize(coordinator="[::1]:99", num_processes=4, process_id=3)
    assert calls == [want, {"coordinator_address": "[::1]:99", "num_processes": 4, "process_id": 3}]


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        (
            {},
            {"JAX_NUM_PROCESSES": "two"},
            r"JAX_NUM_PROCESSES \(environment\) must be an int",
        ),
        ({"num_processes": 0}, {}, r"--num-processes must be an int >= 1, got 0"),
        ({}, {"JAX_PROCESS_ID": "-1"}, r"JAX_PROCESS_ID \(environment\) must be an int >= 0"),
        ({"num_processes": 2, "process_id": 2}, {}, r"--process-id must be in \[0, 2\)"),
        ({"num_processes": True}, {}, r"--num-processes must be an int"),
        ({"coordinator": "host0"}, {}, r"--coordinator must be HOST:PORT"),
        ({}, {"JAX_COORDINATOR_ADDRESS": "h:99999"}, r"JAX_COORDINATOR_ADDRESS .* HOST:PORT"),
    ],
)
def test_bad_settings_name_the_option_or_variable(calls, monkeypatch, kwargs, env, message):
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=message):
        distributed.initialize(**kwargs)
    assert calls == []  # refused before JAX is asked


def test_missing_settings_are_named(monkeypatch):
    """JAX's own error when a setting is neither given nor detected gets the options added."""

    def jax_initialize(**kw):
        raise ValueError("Number of processes must be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", jax_initialize)
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"must be defined. Give --num-processes \(or JAX_NUM_P"):
        distributed.initialize(coordinator="host0:1234")


def test_one_process_is_the_writer(tmp_path):
    assert distributed.is_writer()
    tree = {"w": jax.numpy.arange(3.0)}
    path = distributed.save_checkpoint(tmp_path / "c.npz", tree, {"epoch": 1})
    restored, extra = checkpoint.restore(path, tree)
    np.testing.assert_array_equal(restored["w"], tree["w"])
    assert extra == {"epoch": 1}


# -- two real processes ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(args: list[str], devices: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env |= {
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    cmd = [sys.executable, "-m", "tests.scripts.multihost_training", *args]
    with log.open("w") as out:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_all(procs: dict[str, subprocess.Popen], logs: Path, timeout: float = 300) -> None:
    """Wait for every process; on the first failure (or the timeout) kill the rest and show
    the failing one's output."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs.values()):
            failed = [n for n, p in procs.items() if p.returncode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                name = failed[0] if failed else "timeout"
                out = (logs / f"{failed[0]}.log").read_text()[-3000:] if failed else ""
                pytest.fail(f"{name}: {out}")
            time.sleep(0.2)
        for name, p in procs.items():
            assert p.returncode == 0, (logs / f"{name}.log").read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_on_one_device(tmp_path):
    from tests.scripts.multihost_training import EPOCHS, train_digits

    port = _free_port()
    runs = {f"worker{i}": (["worker", str(tmp_path), str(port), str(i)], 4) for i in range(2)}
    runs["single"] = (["single", str(tmp_path)], 8)  # at the same time: the workers mostly wait
    procs = {name: _start(args, n, tmp_path / f"{name}.log") for name, (args, n) in runs.items()}
    _wait_all(procs, tmp_path)
    single = json.loads((tmp_path / "single.json").read_text())
    workers = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]

    assert single["devices"] == 8 and single["processes"] == 1
    for i, w in enumerate(workers):
        assert (w["processes"], w["devices"], w["local_devices"]) == (2, 8, 4)
        assert w["process_index"] == i
        for key, values in single["history"].items():
            if "loss" in key:  # gloo sums in another order: the last bits differ
                np.testing.assert_allclose(w["history"][key], values, rtol=1e-13, atol=0)
            else:  # epochs and accuracies: exactly
                assert w["history"][key] == values, key
        assert w["gathered"]  # a leaf split across the processes is saved whole
        assert w["writer_seen"] == 0  # after the barrier both see process 0's file
    assert [w["wrote"] for w in workers] == [True, False]
    assert sorted(os.listdir(tmp_path / "multi")) == [fit.CHECKPOINT_NAME]

    # the same state in both checkpoints (2 processes x 4 devices and 1 x 8)
    template = jax.eval_shape(_template)
    multi_ckpt = tmp_path / "multi" / fit.CHECKPOINT_NAME
    single_ckpt = tmp_path / "single" / fit.CHECKPOINT_NAME
    a, _ = checkpoint.restore(multi_ckpt, template)
    b, extra = checkpoint.restore(single_ckpt, template)
    assert _max_relative_difference(a, b) <= 1e-13

    # resume the 8-device checkpoint here, on 1 device, and continue two more epochs
    steps = len(extra["history"]["step_loss"]) // EPOCHS
    checkpoint.validate_training_extra(extra, epochs=EPOCHS + 2, steps_per_epoch=steps)
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(single_ckpt, resumed_dir / fit.CHECKPOINT_NAME)
    assert len(jax.devices()) == 1
    resumed = train_digits(EPOCHS + 2, out_dir=resumed_dir, resume=True)
    straight = train_digits(EPOCHS + 2)
    assert resumed.resumed_from == EPOCHS
    assert _max_relative_difference(resumed.params, straight.params) <= 1e-12
    np.testing.assert_allclose(
        resumed.history["step_loss"], straight.history["step_loss"], rtol=1e-12, atol=0
    )


def _max_relative_difference(a, b) -> float:
    """max over leaves of max|a - b| / max|b|."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-300)) for x, y in pairs)


def _template():
    """Shapes and dtypes of the digits MLP's checkpointed state (no training)."""
    import optax

    from funcbp import nn

    params, state = fit.init_model(nn.mlp([32, 10]), 0, (64,), jax.numpy.float64)
    return {"params": params, "opt_state": optax.adam(1e-2).init(params), "state": state}
