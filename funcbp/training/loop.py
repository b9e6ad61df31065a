"""The training loop around the jitted step: batching, evaluation, history, atomic
checkpoints with exact resume, and the NaN/Inf guard — as a sequence of small named steps.

Determinism: everything random derives from one integer ``seed``: the init key, each epoch's
shuffle and each step's key (``fold_in`` of the epoch). A run resumed from the checkpoint of
epoch e replays epochs e+1… exactly, so its final params are bit-identical to an uninterrupted
run's. Progress is reported through ``events`` (`Events`); the library prints nothing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcbp import ops
from funcbp.backprop import check_source
from funcbp.nn.core import Layer
from funcbp.ops import Op
from funcbp.training import checkpoint, distributed, precision
from funcbp.training.guard import finite_flag_names
from funcbp.training.step import make_eval_fn, make_multi_step, make_train_step

__all__ = [
    "CHECKPOINT_NAME",
    "Events",
    "FitConfig",
    "FitResult",
    "NonFiniteError",
    "fit",
    "init_model",
    "steps_per_second",
]

CHECKPOINT_NAME = "checkpoint.npz"


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How to train: ``epochs``, ``batch_size`` (the last partial batch of an epoch is
    dropped, so every step has one shape and compiles once), ``seed``, the gradient ``source``,
    ``steps_per_call`` (k steps fused per dispatch, `make_multi_step`), ``eval_batch_size``,
    the params' ``dtype`` (float inputs are cast to it) and the ``precision`` policy the ops
    compute in (`funcbp.training.precision`: ``"f32"``, ``"bf16"``, ``"f16"`` with loss
    scaling; the params stay ``dtype``)."""

    epochs: int
    batch_size: int
    seed: int = 0
    source: str = "hand"
    steps_per_call: int = 1
    eval_batch_size: int = 1024
    dtype: Any = jnp.float32
    precision: Any = "f32"  # a name in `precision.POLICIES` or a `precision.Policy`

    def __post_init__(self):
        for name, least in (("epochs", 0), ("batch_size", 1), ("steps_per_call", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"fit: {name} must be an int >= {least}, got {v!r}")
        check_source(self.source, "fit: source")
        precision.get_policy(self.precision)  # a clear error for an unknown name


class Events:
    """What `fit` reports while it runs; subclass and override (the CLI draws a progress bar).
    ``start(epochs, steps_per_epoch)``, ``steps(k)`` after every k steps, ``epoch(record)``
    after each epoch's evaluation, ``log(message)`` for notices (resume, stale temporaries)."""

    def start(self, epochs: int, steps_per_epoch: int) -> None: ...

    def steps(self, k: int) -> None: ...

    def epoch(self, record: dict) -> None: ...

    def log(self, message: str) -> None: ...


class NonFiniteError(RuntimeError):
    """Training produced NaN/Inf; the message names the step and the tensor."""

    def __init__(self, message: str, *, step: int, tensors: list[str], result: FitResult):
        super().__init__(message)
        self.step = step
        self.tensors = tensors
        self.result = result


@dataclasses.dataclass
class FitResult:
    """What `fit` returns: the final (or last good) params, state, optimizer state, history.

    ``seconds``: wall time of each epoch run by THIS call (the first includes compilation);
    ``step_seconds``: the time spent in training steps per epoch; ``first_call``: ``(steps,
    seconds)`` of the first dispatch of each compiled step (their compilation included):
    `steps_per_second` leaves them out."""

    params: Any
    state: Any
    opt_state: Any
    history: dict[str, list]
    epochs_run: int
    resumed_from: int | None = None
    seconds: list[float] = dataclasses.field(default_factory=list)
    step_seconds: list[float] = dataclasses.field(default_factory=list)
    first_call: tuple[int, float] = (0, 0.0)


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


def _arrays(data, dtype):
    """``data``'s four arrays as NumPy, float inputs cast to the params' ``dtype``."""
    cast = lambda a: a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a
    x_train, x_test = cast(np.asarray(data.x_train)), cast(np.asarray(data.x_test))
    return x_train, np.asarray(data.y_train), x_test, np.asarray(data.y_test)


def check_labels(model: Layer, params, state, x, y, *, where: str = "fit") -> None:
    """Integer labels must index the model's outputs: a clear error before any training
    (out of range they would only show as a non-finite loss)."""
    if not np.issubdtype(y.dtype, np.integer) or y.size == 0:
        return
    out = jax.eval_shape(lambda p, s, a: model.apply(p, s, a)[0], params, state, x[:1])
    if isinstance(out, tuple) or out.ndim != y.ndim + 1:  # a fused head's loss checks them
        return
    lo, hi, n = int(y.min()), int(y.max()), out.shape[-1]
    if lo < 0 or hi >= n:
        raise ValueError(
            f"{where}: labels range over [{lo}, {hi}] but {model.name} has {n} outputs "
            f"(labels must lie in [0, {n}))"
        )


def _evaluate(eval_fn, params, state, x, y, batch_size) -> dict[str, float]:
    n = len(x)
    total = {"loss": 0.0, "accuracy": 0.0}
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        m = eval_fn(params, state, xb, yb)
        for k in total:
            total[k] += float(m[k]) * len(xb)
    return {k: v / n for k, v in total.items()}


def _first_bad_step(
    finite: np.ndarray, names: list[str], skipped=None
) -> tuple[int, list[str]] | None:
    """The first step whose flags are not all true and the tensors it flagged.

    ``finite``: ``(steps, len(names))`` bools, the stacked ``metrics["finite"]``; ``skipped``:
    ``(steps,)`` bools, steps a loss scale skipped (`funcbp.training.loss_scale`): not bad."""
    flags = np.asarray(finite).reshape(-1, len(names))
    good = flags.all(axis=1) if skipped is None else flags.all(axis=1) | np.asarray(skipped)
    bad_steps = np.nonzero(~good)[0]
    if bad_steps.size == 0:
        return None
    s = int(bad_steps[0])
    return s, [n for n, ok in zip(names, flags[s], strict=True) if not ok]


@dataclasses.dataclass
class _Loop:
    """What one run's epochs share: the data, the compiled steps, the placement, the names."""

    x_train: np.ndarray
    y_train: np.ndarray
    config: FitConfig
    single: Any
    multi: Any
    place: Any
    k_train: Any
    flag_names: list[str]
    resample: Any = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.x_train) // self.config.batch_size

    def examples(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's training examples: the data's own, or its fresh draw for ``epoch``
        (``data.epoch_examples``, same shapes every epoch)."""
        if self.resample is None:
            return self.x_train, self.y_train
        x, y = (np.asarray(a) for a in self.resample(epoch))
        if x.shape != self.x_train.shape or y.shape != self.y_train.shape:
            raise ValueError(
                f"fit: data.epoch_examples({epoch}) gave x {x.shape}, y {y.shape}; every epoch "
                f"needs x {self.x_train.shape}, y {self.y_train.shape}"
            )
        return x.astype(self.x_train.dtype), y


def _start(ckpt, tree, resume: bool, events: Events, loop):
    """``(tree, history, start_epoch, resumed_from)``: fresh, or restored from ``ckpt`` when
    resuming (stale temporaries of a killed write are removed first)."""
    if ckpt is None:
        return tree, _empty_history(), 0, None
    for stale in checkpoint.remove_stale_temporaries(ckpt) if distributed.is_writer() else ():
        events.log(f"removed {stale.name}, left by an interrupted checkpoint write")
    if not resume:
        return tree, _empty_history(), 0, None
    existed = ckpt.exists()
    tree, history, start = _restore(ckpt, tree, events, loop)
    return tree, history, start, start if existed else None


def _save(ckpt, tree, extra) -> None:
    """The checkpoint of an epoch: every process calls this, process 0 alone writes it
    (atomically), and all continue once it is in place (`distributed.save_checkpoint`)."""
    distributed.save_checkpoint(ckpt, tree, extra)


def _restore(ckpt, template, events: Events, loop):
    """``(tree, history, start_epoch)`` from ``ckpt`` when it exists (else the template); its
    metadata is validated (an epoch within this run, a history of the right lengths)."""
    if ckpt.exists():
        validate = lambda extra: checkpoint.validate_training_extra(
            extra, epochs=loop.config.epochs, steps_per_epoch=loop.steps_per_epoch
        )
        tree, extra = checkpoint.restore(ckpt, template, validate_extra=validate)
        start = int(extra["epoch"])
        events.log(f"resumed from {ckpt} after epoch {start}")
        return tree, extra["history"], start
    events.log(f"no checkpoint at {ckpt}: starting from scratch")
    return template, _empty_history(), 0


def _place(mesh, params, opt_state, state, optimizer):
    """Shard params (2-D weights over "model"), the optimizer state like its init would, and
    replicate the layer state; returns them and the batch placement function."""
    if mesh is None:
        return params, opt_state, state, lambda b, lead=0: b
    params = distributed.shard_params(params, mesh, distributed.param_shardings(params, mesh))
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
    return (
        params,
        opt_state,
        state,
        lambda b, lead=0: distributed.shard_batch(b, mesh, leading=lead),
    )


def _run_epoch(loop: _Loop, epoch: int, params, opt_state, state, events: Events, first: dict):
    """One shuffled epoch of steps: ``(params, opt_state, state, stacked metrics, seconds of
    the steps)``. The first call of each compiled step (it compiles) is timed on its own into
    ``first`` (k steps per call -> (k, seconds))."""
    cfg, steps = loop.config, loop.steps_per_epoch
    k_epoch = jax.random.fold_in(loop.k_train, epoch)
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(k_epoch, 0), len(loop.x_train)))
    step_keys = jax.random.split(jax.random.fold_in(k_epoch, 1), steps)
    idx = perm[: steps * cfg.batch_size].reshape(steps, cfg.batch_size)
    x_train, y_train = loop.examples(epoch)
    metrics, s, t0 = [], 0, time.perf_counter()
    while s < steps:
        k = cfg.steps_per_call if loop.multi is not None and s + cfg.steps_per_call <= steps else 1
        b = idx[s : s + k] if k > 1 else idx[s]
        batch = loop.place((x_train[b], y_train[b]), 1 if k > 1 else 0)
        run, t1 = (loop.multi if k > 1 else loop.single), time.perf_counter()
        params, opt_state, state, m = run(
            params, opt_state, state, batch, step_keys[s : s + k] if k > 1 else step_keys[s]
        )
        metrics.append((k, m))
        if k not in first:  # the first call of each compiled step compiles it: timed alone
            jax.block_until_ready(params)
            first[k] = (k, time.perf_counter() - t1)
        s += k
        events.steps(k)
    host = [
        jax.tree.map(lambda a, k=k: np.asarray(a).reshape(k, *np.shape(a)[k > 1 :]), m)
        for k, m in metrics
    ]  # on the host: no per-step device ops
    seconds = time.perf_counter() - t0  # the steps alone: no shuffling, no evaluation
    return params, opt_state, state, jax.tree.map(lambda *a: np.concatenate(a), *host), seconds


def _raise_if_bad(loop: _Loop, stacked, epoch: int, ckpt, last_good: FitResult) -> None:
    bad = _first_bad_step(stacked["finite"], loop.flag_names, stacked.get("skipped"))
    if bad is None:
        return
    step_in_epoch, tensors = bad
    global_step = epoch * loop.steps_per_epoch + step_in_epoch
    kept = ckpt is not None and ckpt.exists()
    where = (
        f"; the last good checkpoint ({ckpt}, epoch {last_good.epochs_run}) is kept" if kept else ""
    )
    raise NonFiniteError(
        f"training stopped: non-finite values at step {global_step} (epoch {epoch + 1}, step "
        f"{step_in_epoch + 1} of {loop.steps_per_epoch}) in {', '.join(tensors)}{where}",
        step=global_step,
        tensors=tensors,
        result=last_good,
    )


def _record(history, epoch, stacked, test, seconds) -> dict:
    record = {
        "epoch": epoch + 1,
        "train_loss": float(np.mean(stacked["loss"])),
        "train_accuracy": float(np.mean(stacked["accuracy"])),
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "seconds": seconds,
    }
    if "skipped" in stacked:  # a loss-scaled run: skipped steps and the scale, per epoch
        record["skipped_steps"] = int(np.sum(stacked["skipped"]))
        record["loss_scale"] = float(np.asarray(stacked["loss_scale"])[-1])
    for k, v in record.items():
        history.setdefault(k, []).append(v)
    history["step_loss"].extend(float(v) for v in stacked["loss"])
    return record


def _prepare(model, data, optimizer, config, loss, params, state, mesh):
    """Arrays, params, state, optimizer state and the compiled steps of a run."""
    x_train, y_train, x_test, y_test = _arrays(data, config.dtype)
    if config.batch_size > len(x_train):
        raise ValueError(
            f"fit: batch_size {config.batch_size} exceeds the {len(x_train)} training examples"
        )
    if mesh is not None:
        distributed.check_batch_divisible(config.batch_size, mesh)
    if params is None:
        params, init_state = init_model(model, config.seed, x_train.shape[1:], config.dtype)
        state = init_state if state is None else state
    state = () if state is None else state
    for x, y in ((x_train, y_train), (x_test, y_test)):
        check_labels(model, params, state, x, y)
    model = precision.apply_policy(model, config.precision)
    make = lambda jit: make_train_step(model, optimizer, loss=loss, source=config.source, jit=jit)
    multi = make_multi_step(make(False)) if config.steps_per_call > 1 else None
    loop = _Loop(x_train, y_train, config, make(True), multi, None, _keys(config.seed)[1],
                 finite_flag_names(params), getattr(data, "epoch_examples", None))  # fmt: skip
    return loop, (x_test, y_test), params, state, model


def fit(
    model: Layer,
    data,
    optimizer: optax.GradientTransformation,
    config: FitConfig,
    *,
    loss: Op = ops.softmax_cross_entropy,
    params: Any = None,
    state: Any = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    events: Events | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` (``x_train, y_train, x_test, y_test``, e.g. `funcbp.data`).

    A stream larger than an epoch (a text corpus) may also give ``data.epoch_examples(epoch)
    -> (x, y)``: that epoch's examples, of ``x_train``'s and ``y_train``'s shapes (a fresh
    draw each epoch; deterministic in ``epoch``, so a resumed run replays it exactly).

    Shuffled mini-batches (`FitConfig`), evaluation on the test split after each epoch,
    ``out_dir/checkpoint.npz`` written atomically after each epoch (with the history, by
    process 0 only), ``resume=True`` continuing from it. Raises `NonFiniteError` when a step
    meets NaN/Inf: the params of that epoch are discarded and the last checkpoint is kept.

    ``config.precision`` (`funcbp.training.precision`): bf16/f16 compute, float32 params;
    float16's loss-scaled skipped steps are counted (history ``skipped_steps``), not raised.
    ``mesh`` (`funcbp.training.distributed.make_mesh`): shard every batch over its ``"data"``
    axis and replicate the params (2-D weights split over ``"model"`` when that axis is wider
    than 1); the step is the same jitted function, XLA reduces the gradients.
    """
    events = events or Events()
    optimizer = precision.wrap_optimizer(optimizer, config.precision)
    loop, (x_test, y_test), params, state, model = _prepare(
        model, data, optimizer, config, loss, params, state, mesh
    )
    ckpt = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    last_good = _starting_point(ckpt, optimizer, params, state, resume, events, loop, mesh)
    params, opt_state, state = last_good.params, last_good.opt_state, last_good.state
    history, start, resumed_from = last_good.history, last_good.epochs_run, last_good.resumed_from
    eval_fn = make_eval_fn(model, loss)
    events.start(config.epochs - start, loop.steps_per_epoch)
    first, step_seconds = {}, []  # first dispatch of each step (it compiles); per-epoch times
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        params, opt_state, state, stacked, seconds = _run_epoch(
            loop, epoch, params, opt_state, state, events, first
        )
        step_seconds.append(seconds)
        _raise_if_bad(loop, stacked, epoch, ckpt, last_good)
        test = _evaluate(eval_fn, params, state, x_test, y_test, config.eval_batch_size)
        record = _record(history, epoch, stacked, test, time.perf_counter() - t0)
        if ckpt is not None:
            tree = {"params": params, "opt_state": opt_state, "state": state}
            _save(ckpt, tree, {"epoch": epoch + 1, "history": history, "seed": config.seed})
        seconds = [*last_good.seconds, record["seconds"]]
        last_good = FitResult(params, state, opt_state, history, epoch + 1, resumed_from,
                              seconds, list(step_seconds), _total(first))  # fmt: skip
        events.epoch(record)
    return last_good


def _starting_point(ckpt, optimizer, params, state, resume, events, loop, mesh) -> FitResult:
    """The run's starting point: fresh optimizer state, or the checkpoint when resuming
    (`_start`), placed on the mesh (`_place`, which also sets ``loop.place``)."""
    tree = {"params": params, "opt_state": optimizer.init(params), "state": state}
    tree, history, start, resumed_from = _start(ckpt, tree, resume, events, loop)
    params, opt_state, state = tree["params"], tree["opt_state"], tree["state"]
    params, opt_state, state, loop.place = _place(mesh, params, opt_state, state, optimizer)
    jax.block_until_ready(params)
    return FitResult(params, state, opt_state, history, start, resumed_from)


def _total(first: dict) -> tuple[int, float]:
    return sum(k for k, _ in first.values()), sum(t for _, t in first.values())


def steps_per_second(result: FitResult, batch_size: int, n_train: int) -> float:
    """Training steps per second of this call, its first dispatch (which compiles) left out:
    a resumed run compiles again, so it is measured the same way."""
    steps = n_train // batch_size * len(result.step_seconds) - result.first_call[0]
    seconds = sum(result.step_seconds) - result.first_call[1]
    return steps / seconds if steps > 0 and seconds > 0 else math.nan
