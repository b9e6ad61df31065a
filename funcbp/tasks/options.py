"""Options of a training run, as data: name, type, default, help and validation.

Three groups: `TRAINING` (read by every task: the optimizer, the schedule, the gradient source
…; each task may give its own defaults), `RUN` (where and how the run executes: its folder,
devices, hosts) and each task's own (`funcbp.tasks.base.Task.options`). The CLI builds its
parser from these; `resolve` turns the options a user gave into a complete, validated dict and
refuses an option the chosen task does not read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from funcbp.backprop import SOURCES
from funcbp.nn.remat import POLICIES
from funcbp.training.optim import OPTIMIZERS, SCHEDULES
from funcbp.training.precision import PRECISIONS

__all__ = ["Option", "RUN", "TRAINING", "resolve"]


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: ``name`` (a Python identifier; the flag is ``--name-with-dashes``), its
    ``type`` (int, float, str or bool), ``default``, ``help``; ``nargs="+"`` for a list;
    ``choices``; ``minimum`` (inclusive, or exclusive with ``above=True``)."""

    name: str
    type: type
    default: Any
    help: str
    nargs: str | None = None
    choices: tuple | None = None
    minimum: float | None = None
    above: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value) -> Any:
        """``value`` if valid, else a ``ValueError`` naming the flag, the value and the rule.
        ``None`` is valid for an option whose default is ``None`` (not set)."""
        if value is None and self.default is None:
            return None
        values = value if self.nargs else [value]
        if self.nargs and (not isinstance(value, list | tuple) or not value):
            raise ValueError(f"{self.flag} needs at least one value, got {value!r}")
        for v in values:
            self._check_one(v)
        return list(value) if self.nargs else value

    def _check_one(self, v) -> None:
        kind = {int: "an int", float: "a number", str: "a string", bool: "true or false"}
        ok_type = isinstance(v, self.type) and not (self.type is not bool and isinstance(v, bool))
        if self.type is float and isinstance(v, int) and not isinstance(v, bool):
            ok_type = True
        if not ok_type:
            raise ValueError(f"{self.flag} must be {kind[self.type]}, got {v!r}")
        if self.choices is not None and v not in self.choices:
            raise ValueError(f"{self.flag} must be one of {list(self.choices)}, got {v!r}")
        if self.type in (int, float) and not math.isfinite(v):
            raise ValueError(f"{self.flag} must be a finite number, got {v!r}")
        if self.minimum is not None and (v <= self.minimum if self.above else v < self.minimum):
            rule = f"> {self.minimum:g}" if self.above else f">= {self.minimum:g}"
            raise ValueError(f"{self.flag} must be {rule}, got {v!r}")


TRAINING = (
    Option("epochs", int, 30, "passes over the training data", minimum=1),
    Option("batch_size", int, 32, "examples per step", minimum=1),
    Option("lr", float, 0.05, "(peak) learning rate η", minimum=0, above=True),
    Option("weight_decay", float, 1e-4, "decay λ of weights with ndim >= 2", minimum=0),
    Option("optimizer", str, "sgd", "sgd is the classic W ← W − η(dE/dW + λW)", choices=OPTIMIZERS),
    Option("schedule", str, "constant", "learning-rate schedule after warm-up", choices=SCHEDULES),
    Option("warmup", int, 0, "linear learning-rate warm-up steps", minimum=0),
    Option("clip", float, 0.0, "clip the global gradient norm (0: no clipping)", minimum=0),
    Option("seed", int, 0, "seed of the init, the shuffles (and the digits split)", minimum=0),
    Option("source", str, "hand", "gradient source: hand VJPs under jax.grad, the explicit "
           "reverse pass (no autodiff), or jax.grad of the references", choices=SOURCES),
    Option("steps_per_call", int, 1, "fuse k steps into one jitted call (lax.scan)", minimum=1),
    Option("check_batch", int, 32, "examples in the start-up gradient check", minimum=1),
    Option("remat", int, 0, "recompute activations in segments of K layers (the GPT: K "
           "blocks) on the backward pass; 0 keeps them", minimum=0),
    Option("remat_policy", str, "nothing_saveable", "what --remat may still save",
           choices=tuple(POLICIES)),
    Option("precision", str, "f32", "ops compute in float32, bfloat16 or float16 (with "
           "dynamic loss scaling); params and optimizer state stay float32",
           choices=PRECISIONS),
)  # fmt: skip
"""Options every task reads (a task may change their defaults)."""

RUN = (
    Option("out", str, "", "run folder (default runs/<task>-<time>)"),
    Option("resume", bool, False, "continue the run in --out"),
    Option("force", bool, False, "replace the run already in --out"),
    Option("no_progress", bool, False, "no progress bar"),
    Option("devices", int, 0, "shard each batch over N devices (0: all local devices; on CPU "
           "XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N)", minimum=0),
    Option("model_parallel", int, 1, "devices per model-parallel group", minimum=1),
    Option("distributed", bool, False, "multi-host: initialise jax.distributed first (the "
           "coordinator, process count and id from the options below, else JAX_COORDINATOR_"
           "ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, else SLURM/Open MPI/Kubernetes)"),
    Option("coordinator", str, None, "with --distributed: HOST:PORT of process 0"),
    Option("num_processes", int, None, "with --distributed: how many processes", minimum=1),
    Option("process_id", int, None, "with --distributed: this process's id", minimum=0),
)  # fmt: skip
"""Options of the run itself (not part of what is trained, not compared on --resume)."""


def resolve(
    task_name: str,
    task_options: Sequence[Option],
    defaults: Mapping[str, Any],
    given: Mapping[str, Any],
    readers: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Every option of a task: ``given`` where set, else the task's ``defaults``, else the
    option's own default; each validated.

    Raises ``ValueError`` for an option the task does not read (``readers`` names the tasks
    that do) and for an invalid value, naming the flag.
    """
    known = {o.name: o for o in (*TRAINING, *RUN, *task_options)}
    for name in given:
        if name not in known:
            flag = "--" + name.replace("_", "-")
            who = f" (read by: {', '.join(readers[name])})" if readers and name in readers else ""
            raise ValueError(f"{flag} is not an option of task {task_name}{who}")
    out = {}
    for name, option in known.items():
        value = given[name] if name in given else defaults.get(name, option.default)
        out[name] = option.check(value)
    return out
