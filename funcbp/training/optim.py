"""Optimizers as optax chains, from one small config.

The classic rule ``W ← W − η (dE/dW + λ W)`` is `classic_sgd` (optax's ``add_decayed_weights``
then ``sgd``); `make_optimizer` builds it and the usual alternatives from a name, so a task and
a run folder describe the optimizer as plain data (`OptimizerConfig`). Any optax optimizer
plugs into the training step directly.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import optax

__all__ = ["OPTIMIZERS", "SCHEDULES", "OptimizerConfig", "classic_sgd", "make_optimizer"]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine")


def decay_mask(params):
    """Weight decay on weight matrices/kernels (ndim ≥ 2), not on biases or norm gains."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def classic_sgd(
    learning_rate: float | optax.Schedule, weight_decay: float = 0.0, *, decay_all=False
):
    """The classic update ``W ← W − η (dE/dW + λ W)`` as an optax chain.

    ``learning_rate`` is η (a float or an optax schedule), ``weight_decay`` is λ. By default λ
    applies to weights with ndim ≥ 2 only (biases and norm gains are not decayed, the usual
    practice); ``decay_all=True`` decays every parameter, exactly as the formula is written.
    """
    mask = None if decay_all else decay_mask
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=mask),
        optax.sgd(learning_rate),
    )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """An optimizer as data (saved in ``run.json``).

    name: one of `OPTIMIZERS` — ``sgd`` is `classic_sgd`; ``momentum`` adds heavy-ball momentum
    0.9; ``adam`` adds λW to the gradient (L2) before Adam; ``adamw`` decays the weights
    decoupled from Adam's scaling. λ (``weight_decay``) applies to weights with ndim ≥ 2 only.
    lr: the peak learning rate η; schedule: ``constant`` or ``cosine`` (down to lr/20 at
    ``total_steps``, which only the cosine schedule needs), after a linear warm-up over
    ``warmup`` steps from 0; clip: clip the global
    gradient norm to this first (None: no clipping); b1, b2: Adam's β.
    """

    name: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup: int = 0
    total_steps: int | None = None
    clip: float | None = None
    b1: float = 0.9
    b2: float = 0.999

    def __post_init__(self):
        checks = [
            (self.name in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.name!r}"),
            (
                self.schedule in SCHEDULES,
                f"schedule must be one of {SCHEDULES}, got {self.schedule!r}",
            ),
            (_finite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr!r}"),
            (
                _finite(self.weight_decay) and self.weight_decay >= 0,
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}",
            ),
            (_count(self.warmup, 0), f"warmup must be an int >= 0, got {self.warmup!r}"),
            (
                _count(self.total_steps, 1)
                or (self.total_steps is None and self.schedule != "cosine"),
                f"total_steps must be an int >= 1 (the cosine schedule needs it), got "
                f"{self.total_steps!r}",
            ),
            (
                self.clip is None or (_finite(self.clip) and self.clip > 0),
                f"clip must be None or a finite number > 0, got {self.clip!r}",
            ),
            (
                all(_finite(b) and 0 <= b < 1 for b in (self.b1, self.b2)),
                "b1, b2 must lie in [0, 1)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"OptimizerConfig: {message}")


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _count(v, least: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def learning_rate(config: OptimizerConfig) -> float | optax.Schedule:
    """η as a float (constant, no warm-up) or an optax schedule."""
    lr, total, warmup = config.lr, config.total_steps, config.warmup
    if config.schedule == "cosine":
        warmup = max(0, min(warmup, total - 1))
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, lr / 20)
    if warmup:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    return lr


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """The optax chain described by ``config``."""
    lr, wd = learning_rate(config), config.weight_decay
    parts = [] if config.clip is None else [optax.clip_by_global_norm(config.clip)]
    if config.name == "adamw":
        parts.append(optax.adamw(lr, config.b1, config.b2, weight_decay=wd, mask=decay_mask))
    else:
        parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
        if config.name == "sgd":
            parts.append(optax.sgd(lr))
        elif config.name == "momentum":
            parts.append(optax.sgd(lr, momentum=0.9))
        else:
            parts.append(optax.adam(lr, config.b1, config.b2))
    return optax.chain(*parts)
