"""The training loop around the jitted step: batching, evaluation, progress, history,
atomic checkpoints with exact resume, and the NaN/Inf guard.

Determinism: everything random derives from one integer ``seed``: the init key, each epoch's
shuffle and each step's key (``fold_in`` of the epoch). A run resumed from the checkpoint of
epoch e replays epochs e+1… exactly, so its final params are bit-identical to an uninterrupted
run's.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcbp import checkpoint, distributed, ops
from funcbp.nn.core import Layer
from funcbp.ops import Op
from funcbp.train import finite_flag_names, make_eval_fn, make_multi_step, make_train_step

__all__ = [
    "FitResult",
    "NonFiniteError",
    "fit",
    "init_model",
    "steps_per_second",
    "CHECKPOINT_NAME",
]

CHECKPOINT_NAME = "checkpoint.npz"


class NonFiniteError(RuntimeError):
    """Training produced NaN/Inf; the message names the step and the tensor."""

    def __init__(self, message: str, *, step: int, tensors: list[str], result: FitResult):
        super().__init__(message)
        self.step = step
        self.tensors = tensors
        self.result = result


@dataclasses.dataclass
class FitResult:
    """What `fit` returns: the final (or last good) params, state, optimizer state, history."""

    params: Any
    state: Any
    opt_state: Any
    history: dict[str, list]
    epochs_run: int
    resumed_from: int | None = None


def _keys(seed: int):
    """``(init_key, train_key)``: every random choice of a run derives from ``seed``."""
    k_init, k_train = jax.random.split(jax.random.key(seed))
    return k_init, k_train


def init_model(model: Layer, seed: int, input_shape, dtype=jnp.float32):
    """``(params, state)`` exactly as `fit` initialises them for ``seed``."""
    _, params, state = model.init(_keys(seed)[0], tuple(input_shape), dtype)
    return params, state


def _empty_history() -> dict[str, list]:
    keys = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")
    return {k: [] for k in keys} | {"step_loss": []}


def _evaluate(eval_fn, params, state, x, y, batch_size) -> dict[str, float]:
    n = len(x)
    total = {"loss": 0.0, "accuracy": 0.0}
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        m = eval_fn(params, state, xb, yb)
        for k in total:
            total[k] += float(m[k]) * len(xb)
    return {k: v / n for k, v in total.items()}


def _first_bad_step(finite: np.ndarray, names: list[str]) -> tuple[int, list[str]] | None:
    """The first step whose flags are not all true and the tensors it flagged.

    ``finite``: ``(steps, len(names))`` bools, the stacked ``metrics["finite"]``."""
    flags = np.asarray(finite).reshape(-1, len(names))
    bad_steps = np.nonzero(~flags.all(axis=1))[0]
    if bad_steps.size == 0:
        return None
    s = int(bad_steps[0])
    return s, [n for n, ok in zip(names, flags[s], strict=True) if not ok]


def fit(
    model: Layer,
    data,
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    loss: Op = ops.softmax_cross_entropy,
    gradients: str = "hand",
    engine: str = "grad",
    params: Any = None,
    state: Any = None,
    dtype=jnp.float32,
    out_dir: str | Path | None = None,
    resume: bool = False,
    steps_per_call: int = 1,
    eval_batch_size: int = 1024,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[int, dict], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` (``x_train, y_train, x_test, y_test``, e.g. `funcbp.data`).

    Shuffled mini-batches of ``batch_size`` (the last partial batch of an epoch is dropped, so
    every step has the same shape and compiles once; float inputs are cast to ``dtype``, the
    params' dtype), evaluation on the test split after each
    epoch, ``out_dir/checkpoint.npz`` written atomically after each epoch (with the history),
    ``resume=True`` continuing from it. ``steps_per_call=k`` fuses k steps per dispatch
    (`make_multi_step`). Raises `NonFiniteError` when a step meets NaN/Inf: the params of that
    epoch are discarded and the last checkpoint is left as it was.

    ``mesh`` (`funcbp.distributed.make_mesh`): shard every batch over its ``"data"`` axis and
    replicate the params (2-D weights split over ``"model"`` when that axis is wider than 1);
    the step is the same jitted function, XLA reduces the gradients. ``batch_size`` must divide
    by the data axis.
    """
    if epochs < 0 or batch_size < 1 or steps_per_call < 1:
        raise ValueError(
            f"fit: need epochs >= 0, batch_size >= 1, steps_per_call >= 1; got {epochs}, "
            f"{batch_size}, {steps_per_call}"
        )
    as_model = lambda a: a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a
    x_train, y_train = as_model(np.asarray(data.x_train)), np.asarray(data.y_train)
    x_test, y_test = as_model(np.asarray(data.x_test)), np.asarray(data.y_test)
    n = len(x_train)
    if batch_size > n:
        raise ValueError(f"fit: batch_size {batch_size} exceeds the {n} training examples")
    steps_per_epoch = n // batch_size
    if mesh is not None:
        distributed.check_batch_divisible(batch_size, mesh)

    _, k_train = _keys(seed)
    if params is None:
        params, init_state = init_model(model, seed, x_train.shape[1:], dtype)
        state = init_state if state is None else state
    state = () if state is None else state
    opt_state = optimizer.init(params)

    ckpt = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    history, start_epoch, resumed_from = _empty_history(), 0, None
    if ckpt is not None:
        for stale in checkpoint.remove_stale_temporaries(ckpt):
            log(f"removed {stale.name}, left by an interrupted checkpoint write")
    if resume and ckpt is not None and ckpt.exists():
        template = {"params": params, "opt_state": opt_state, "state": state}
        tree, extra = checkpoint.restore(ckpt, template)
        params, opt_state, state = tree["params"], tree["opt_state"], tree["state"]
        history, start_epoch = extra["history"], int(extra["epoch"])
        resumed_from = start_epoch
        log(f"resumed from {ckpt} after epoch {start_epoch}")
    elif resume and ckpt is not None:
        log(f"no checkpoint at {ckpt}: starting from scratch")

    if mesh is not None:
        params = distributed.shard_params(params, mesh, distributed.param_shardings(params, mesh))
        # the optimizer state (fresh or restored) takes the layout its init gives sharded params
        layout = jax.tree.map(
            lambda a: (
                a.sharding
                if isinstance(a.sharding, jax.sharding.NamedSharding)
                else distributed.replicated(mesh)
            ),  # scalars (step counts) land on one device
            jax.jit(optimizer.init)(params),
        )
        opt_state = jax.device_put(opt_state, layout)
        state = distributed.shard_params(state, mesh)
    place = (
        (lambda b, lead=0: distributed.shard_batch(b, mesh, leading=lead))
        if mesh
        else (lambda b, lead=0: b)
    )

    single = make_train_step(model, optimizer, loss=loss, gradients=gradients, engine=engine)
    multi = None
    if steps_per_call > 1:
        raw = make_train_step(
            model, optimizer, loss=loss, gradients=gradients, engine=engine, jit=False
        )
        multi = make_multi_step(raw)
    eval_fn = make_eval_fn(model, loss)
    flag_names = finite_flag_names(params)

    bar = _progress(progress, epochs - start_epoch, steps_per_epoch)
    last_good = FitResult(params, state, opt_state, history, start_epoch, resumed_from)
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            k_epoch = jax.random.fold_in(k_train, epoch)
            perm = np.asarray(jax.random.permutation(jax.random.fold_in(k_epoch, 0), n))
            step_keys = jax.random.split(jax.random.fold_in(k_epoch, 1), steps_per_epoch)
            idx = perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
            metrics = []
            s = 0
            while s < steps_per_epoch:
                k = steps_per_call if multi is not None else 1
                if k > 1 and s + k <= steps_per_epoch:
                    b = idx[s : s + k]
                    batch = place((x_train[b], y_train[b]), 1)
                    params, opt_state, state, m = multi(
                        params, opt_state, state, batch, step_keys[s : s + k]
                    )
                    metrics.append(m)
                else:
                    k = 1
                    b = idx[s]
                    params, opt_state, state, m = single(
                        params, opt_state, state, place((x_train[b], y_train[b])), step_keys[s]
                    )
                    metrics.append(jax.tree.map(lambda a: a[None], m))
                s += k
                bar.advance(k)
            stacked = jax.tree.map(lambda *a: np.concatenate(a), *metrics)
            bad = _first_bad_step(stacked["finite"], flag_names)
            if bad is not None:
                step_in_epoch, tensors = bad
                global_step = epoch * steps_per_epoch + step_in_epoch
                where = f"; the last good checkpoint ({ckpt}) is kept" if ckpt else ""
                raise NonFiniteError(
                    f"training stopped: non-finite values at step {global_step} (epoch "
                    f"{epoch + 1}, step {step_in_epoch + 1} of {steps_per_epoch}) in "
                    f"{', '.join(tensors)}{where}",
                    step=global_step,
                    tensors=tensors,
                    result=last_good,
                )
            test = _evaluate(eval_fn, params, state, x_test, y_test, eval_batch_size)
            seconds = time.perf_counter() - t0
            record = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(stacked["loss"])),
                "train_accuracy": float(np.mean(stacked["accuracy"])),
                "test_loss": test["loss"],
                "test_accuracy": test["accuracy"],
                "seconds": seconds,
            }
            for k, v in record.items():
                history[k].append(v)
            history["step_loss"].extend(float(v) for v in stacked["loss"])
            if ckpt is not None:
                checkpoint.save(
                    ckpt,
                    {"params": params, "opt_state": opt_state, "state": state},
                    {"epoch": epoch + 1, "history": history, "seed": seed},
                )
            last_good = FitResult(params, state, opt_state, history, epoch + 1, resumed_from)
            bar.epoch_done(record)
            if on_epoch is not None:
                on_epoch(epoch + 1, record)
    finally:
        bar.stop()
    return last_good


class _Bar:
    """A rich progress bar (or nothing): steps advance, epochs print a metrics line."""

    def __init__(self, enabled: bool, epochs: int, steps: int):
        self.progress = None
        if enabled and epochs > 0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[metrics]}"),
            )
            self.task = self.progress.add_task("train", total=epochs * steps, metrics="")
            self.progress.start()

    def advance(self, k: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, k)

    def epoch_done(self, r: dict) -> None:
        if self.progress is not None:
            text = (
                f"epoch {r['epoch']}: loss {r['train_loss']:.4f} acc {r['train_accuracy']:.3f} "
                f"| test loss {r['test_loss']:.4f} acc {r['test_accuracy']:.3f}"
            )
            self.progress.update(self.task, metrics=text)
            self.progress.console.print(text)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _progress(enabled: bool, epochs: int, steps: int) -> _Bar:
    return _Bar(enabled, epochs, steps)


def steps_per_second(history: dict, batch_size: int, n_train: int) -> float:
    """Training steps per second over the epochs after the first (which includes compilation)."""
    steps = n_train // batch_size
    secs = history["seconds"][1:] or history["seconds"]
    return steps * len(secs) / max(sum(secs), 1e-9) if secs else math.nan
