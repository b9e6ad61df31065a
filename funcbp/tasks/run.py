"""One run path for every task: resolve the options, load the data, build the model and the
optimizer, claim the run folder, train, evaluate, record. No branch on the task's name.

`prepare` does everything that can fail on bad input — before any training and before anything
is written (the folder is claimed last, once all validation has passed); `train` runs
`funcbp.training.loop`; `finish` adds the task's metrics and writes ``metrics.json``. The library
prints nothing: the CLI (`funcbp.cli.train`) renders progress and results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from funcbp.tasks import folder
from funcbp.tasks.base import Task
from funcbp.tasks.options import RUN, resolve
from funcbp.training import distributed
from funcbp.training.loop import Events, FitConfig, FitResult, fit, init_model, steps_per_second
from funcbp.training.optim import OptimizerConfig, make_optimizer

__all__ = [
    "COMPARED",
    "FORMAT",
    "Run",
    "environment",
    "finish",
    "initial_params",
    "prepare",
    "problem",
    "rebuild",
    "train",
]

FORMAT = "funcbp-run-1"
COMPARED = ("format", "task", "options", "model", "optimizer", "data")
"""The sections of ``run.json`` a resumed run must share with the saved one (``options`` less
`UNCOMPARED`: more epochs, another fusing or check size continue the same run)."""
UNCOMPARED = ("epochs", "steps_per_call", "check_batch")


@dataclasses.dataclass
class Run:
    """A prepared run: everything `train` needs, validated, and the folder it owns."""

    task: Task
    options: dict[str, Any]
    out: Path
    data: Any
    info: dict
    model: Any
    optimizer: Any
    record: dict
    mesh: Any = None
    lock: Any = None

    def close(self) -> None:
        """Release the run folder's lock (the run is over)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    @property
    def fit_config(self) -> FitConfig:
        o = self.options
        return FitConfig(o["epochs"], o["batch_size"], o["seed"], o["source"], o["steps_per_call"],
                         precision=o["precision"])  # fmt: skip


def environment() -> dict:
    """Versions (funcbp, jax, numpy) and the first device."""
    import funcbp

    return {
        "versions": {"funcbp": funcbp.__version__, "jax": jax.__version__, "numpy": np.__version__},
        "device": str(jax.devices()[0]),
    }


def fingerprint(data) -> str:
    """sha256 (16 hex digits) of the four arrays: the data's identity in ``run.json``."""
    h = hashlib.sha256()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        a = np.ascontiguousarray(getattr(data, name))
        h.update(f"{name}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def optimizer_config(task: Task, opts: dict, steps_per_epoch: int) -> OptimizerConfig:
    cosine = opts["schedule"] == "cosine"
    return OptimizerConfig(
        name=opts["optimizer"], lr=opts["lr"], weight_decay=opts["weight_decay"],
        schedule=opts["schedule"], warmup=opts["warmup"],
        total_steps=opts["epochs"] * steps_per_epoch if cosine else None,
        clip=opts["clip"] or None, b1=task.betas[0], b2=task.betas[1],
    )  # fmt: skip


def _mesh(opts: dict, batch_size: int):
    n = opts["devices"] or len(jax.devices())
    if n <= 1 and opts["model_parallel"] <= 1:
        return None
    mesh = distributed.make_mesh(n, model=opts["model_parallel"])
    distributed.check_batch_divisible(batch_size, mesh, "funcbp train")
    return mesh


def _record(task, opts, info, model_config, opt_config, data) -> dict:
    run_names = {o.name for o in RUN}
    trained = {k: v for k, v in opts.items() if k not in run_names}
    return {
        "format": FORMAT,
        "task": task.name,
        "options": {k: v for k, v in trained.items() if k not in UNCOMPARED},
        "schedule": {k: trained[k] for k in UNCOMPARED},
        "run": {k: opts[k] for k in sorted(run_names)},
        "model": model_config,
        "optimizer": dataclasses.asdict(opt_config),
        "data": {**info, "fingerprint": fingerprint(data)},
        **environment(),
    }


def prepare(task: Task, given: dict[str, Any], *, readers=None) -> Run:
    """Validate ``given`` options for ``task``, load its data, build model and optimizer,
    claim the run folder. Raises ``ValueError``/``TypeError``/``OSError`` (bad options, data or
    folder) naming the option or file; writes nothing before everything is validated."""
    opts = resolve(task.name, task.options, task.defaults, given, readers)
    if opts["resume"] and not opts["out"]:
        raise ValueError("--resume needs --out (the folder of the run to continue)")
    if opts["resume"] and opts["force"]:
        raise ValueError("--resume continues the run in --out and --force replaces it: not both")
    out = Path(opts["out"] or Path("runs") / f"{task.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    folder.check_writable(out)
    data = task.load_data(opts)
    info = task.describe_data(data)
    if opts["batch_size"] > len(data.x_train):
        raise ValueError(
            f"--batch-size {opts['batch_size']} exceeds the {len(data.x_train)} training examples"
        )
    model, model_config = task.build_model(opts, info)
    opt_config = optimizer_config(task, opts, len(data.x_train) // opts["batch_size"])
    mesh = _mesh(opts, opts["batch_size"])
    record = _record(task, opts, info, model_config, opt_config, data)
    run = Run(task, opts, out, data, info, model, make_optimizer(opt_config), record, mesh)
    if jax.process_index() == 0:  # one writer on many hosts
        run.lock = folder.claim(out, record, resume=opts["resume"], force=opts["force"],
                                compared=COMPARED)  # fmt: skip
    return run


def train(run: Run, events: Events | None = None) -> FitResult:
    """Train the prepared run (`funcbp.training.loop`), checkpointing into its folder."""
    loss = run.task.loss_for(run.options)
    return fit(
        run.model, run.data, run.optimizer, run.fit_config,
        loss=loss, out_dir=run.out, resume=run.options["resume"], mesh=run.mesh, events=events,
    )  # fmt: skip


def initial_params(run: Run):
    """``(params, state)`` exactly as training starts from them (before any resume)."""
    x = np.asarray(run.data.x_train)
    return init_model(run.model, run.options["seed"], x.shape[1:], run.fit_config.dtype)


def finish(run: Run, result: FitResult, seconds: float, extra: dict | None = None) -> dict:
    """The run's metrics (history, timing, the task's own metrics, ``extra``), written to
    ``metrics.json`` by process 0; returns them."""
    h = result.history
    n_train = len(run.data.x_train)
    metrics = {
        "task": run.task.name,
        "data": run.info["name"],
        "source": run.options["source"],
        "test_accuracy": h["test_accuracy"][-1] if h["test_accuracy"] else None,
        "test_loss": h["test_loss"][-1] if h["test_loss"] else None,
        "train_loss": h["train_loss"],
        "train_accuracy": h["train_accuracy"],
        "test_accuracy_history": h["test_accuracy"],
        "test_loss_history": h["test_loss"],
        "step_loss": h["step_loss"],
        "epochs": result.epochs_run,
        "resumed_from_epoch": result.resumed_from,
        "n_params": int(sum(np.size(p) for p in jax.tree.leaves(result.params))),
        "seconds": seconds,
        "steps_per_second": steps_per_second(result, run.options["batch_size"], n_train),
        "epoch_seconds": h["seconds"],
        "precision": run.options["precision"],
        **{k: h[k] for k in ("skipped_steps", "loss_scale") if k in h},  # float16 only
    }
    if "tokens_per_example" in run.info:  # sequence tasks: the speed in tokens
        per_step = run.options["batch_size"] * run.info["tokens_per_example"]
        metrics["tokens_per_second"] = metrics["steps_per_second"] * per_step
    if run.task.evaluate is not None and result.epochs_run:
        metrics.update(run.task.evaluate(run.model, result.params, result.state, run.data,
                                         run.options))  # fmt: skip
    metrics.update(extra or {})
    metrics.update(environment())
    metrics["mesh"] = dict(run.mesh.shape) if run.mesh is not None else None
    if jax.process_index() == 0:
        folder.write_json(run.out / "metrics.json", metrics)
    return metrics


def problem(task: Task, *, seed: int = 0, batch: int = 32):
    """``(model, params, state, x, y)``: the task's model with its default options, initialised
    by ``seed``, and the first ``batch`` training examples (for checks and reports)."""
    opts = resolve(task.name, task.options, task.defaults, {"seed": seed})
    data = task.load_data(opts)
    model, _ = task.build_model(opts, task.describe_data(data))
    x, y = np.asarray(data.x_train[:batch]), np.asarray(data.y_train[:batch])
    params, state = init_model(model, seed, x.shape[1:], np.float32)
    return model, params, state, x, y


def rebuild(task: Task, record: dict):
    """``(model, optimizer, options, info)`` of a saved run (its ``run.json``), for `generate`
    and checks: the model is rebuilt from the record alone, without its data."""
    opts = {**record["options"], **record.get("schedule", {}), **record.get("run", {})}
    model, _ = task.build_model(opts, record["data"])
    opt = dict(record["optimizer"])
    return model, make_optimizer(OptimizerConfig(**opt)), opts, record["data"]
