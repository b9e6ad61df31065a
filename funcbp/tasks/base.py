"""The task protocol: what one trainable model needs to be run, checked and generated from.

A `Task` is data plus functions of its resolved options (a dict, `funcbp.tasks.options`):

* ``options``: the task's own options; ``defaults``: its defaults for the shared ones;
* ``load_data(opts) -> data`` with ``x_train, y_train, x_test, y_test`` (and a ``name``);
* ``describe_data(data) -> dict``: what the model needs to know of the data (input shape,
  classes, …), JSON-able: saved in ``run.json`` so the model can be rebuilt without the data;
* ``build_model(opts, info) -> (model, model_config)``: the `funcbp.nn.Layer` and its config;
* ``loss``: the loss op; ``evaluate(model, params, state, data, opts) -> dict`` extra metrics
  after training (optional); ``generate(model, params, state, opts, info, prompts, sampling)
  -> list[str]`` (optional; ``sampling`` is a `funcbp.tasks.lm.Sampling`: new tokens,
  temperature, top-k, seed); ``epoch_fields(record, opts, info) -> {label: text}`` extras for
  the progress line of each epoch (optional; the CLI prints them); ``labels``: the curves' axis
  labels; ``betas``: Adam's β for this task; ``log_loss``: plot the loss on a log axis;
  ``choose_loss(opts)``: a loss that depends on the options (a fused head's loss), else
  ``loss``.

One run path (`funcbp.tasks.run`) serves every task with no branch on its name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from funcbp.ops import Op
from funcbp.tasks.options import Option

__all__ = ["Task"]


@dataclasses.dataclass(frozen=True)
class Task:
    """A trainable model with its data, options, metrics and (optional) generation."""

    name: str
    help: str
    options: tuple[Option, ...]
    defaults: Mapping[str, Any]
    load_data: Callable[[dict], Any]
    describe_data: Callable[[Any], dict]
    build_model: Callable[[dict, dict], tuple[Any, dict]]
    loss: Op
    evaluate: Callable[..., dict] | None = None
    generate: Callable[..., list[str]] | None = None
    epoch_fields: Callable[[dict, dict, dict], dict[str, str]] | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    betas: tuple[float, float] = (0.9, 0.999)
    log_loss: bool = True
    choose_loss: Callable[[dict], Op] | None = None

    def loss_for(self, opts: dict) -> Op:
        """The loss op for these options (``choose_loss``, else ``loss``)."""
        return self.choose_loss(opts) if self.choose_loss is not None else self.loss
