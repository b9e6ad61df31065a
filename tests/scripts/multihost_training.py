"""One process of a multi-process run, or the one-process reference (see tests/test_multihost.py).

    python -m tests.scripts.multihost_training single OUT
        one process with 8 CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8):
        fit over all of them, ``out_dir=OUT/single`` (fit writes its checkpoint), OUT/single.json
    python -m tests.scripts.multihost_training worker OUT PORT ID
        process ID of 2 (4 CPU devices each) on localhost:PORT: fit over all 8 global devices,
        then `distributed.save_checkpoint` into OUT/multi by both processes, OUT/worker{ID}.json

Both train the same digits MLP in float64 from the same seed (`train_digits`): their accuracies
agree exactly and their losses and params to the last bits (gloo sums the gradients of the two
processes in another order than one process sums its 8 devices'), and the 8-device checkpoint
resumes on 1 device.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import optax

jax.config.update("jax_enable_x64", True)

from funcbp import data, nn  # noqa: E402
from funcbp.training import CHECKPOINT_NAME, FitConfig, FitResult, checkpoint, distributed, fit  # noqa: E402,E501

EPOCHS, BATCH, SEED = 1, 64, 0


def train_digits(epochs: int = EPOCHS, **kw) -> FitResult:
    """The digits MLP (64-32-10, ReLU, adam) in float64: the run every process repeats."""
    config = FitConfig(epochs, BATCH, SEED, dtype=jax.numpy.float64)
    return fit(nn.mlp([32, 10]), data.load_digits(seed=SEED), optax.adam(1e-2), config, **kw)


def _summary(r: FitResult) -> dict:
    return {
        "history": {k: v for k, v in r.history.items() if k != "seconds"},
        "devices": len(jax.devices()),
        "local_devices": len(jax.local_devices()),
        "processes": jax.process_count(),
    }


def _gather_check() -> bool:
    """A weight split over a 'model' axis that spans both processes comes back whole."""
    local = {d.process_index: [] for d in jax.devices()}
    for d in jax.devices():
        local[d.process_index].append(d)
    pairs = [d for pair in zip(local[0], local[1], strict=True) for d in pair]  # (p0, p1), …
    mesh = distributed.make_mesh(pairs, model=2)
    w = np.arange(6 * 8, dtype=np.float64).reshape(6, 8)
    sharded = jax.device_put(w, distributed.param_shardings({"w": w}, mesh, min_size=1)["w"])
    assert not sharded.is_fully_addressable and not sharded.is_fully_replicated
    return bool(np.array_equal(distributed.to_host(sharded), w))


def main(argv: list[str]) -> None:
    role, out = argv[0], Path(argv[1])
    if role == "single":
        r = train_digits(mesh=distributed.make_mesh(), out_dir=out / "single")
        (out / "single.json").write_text(json.dumps(_summary(r)))
        return
    port, pid = int(argv[2]), int(argv[3])
    distributed.initialize(coordinator=f"localhost:{port}", num_processes=2, process_id=pid)
    r = train_digits(mesh=distributed.make_mesh())
    tree = {"params": r.params, "opt_state": r.opt_state, "state": r.state}
    extra = {"epoch": r.epochs_run, "history": r.history, "seed": SEED, "writer": pid}
    wrote = distributed.save_checkpoint(out / "multi" / CHECKPOINT_NAME, tree, extra)
    summary = _summary(r) | {
        "process_index": jax.process_index(),
        "wrote": wrote is not None,
        "writer_seen": checkpoint.read_extra(out / "multi" / CHECKPOINT_NAME)["writer"],
        "gathered": _gather_check(),
    }
    (out / f"worker{pid}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])
