"""argparse from the tasks' option specs (`funcbp.tasks.options`): every option defaults to
"not given", so the run path knows exactly which options the user set and can refuse one the
chosen task does not read."""

from __future__ import annotations

import argparse

from funcbp.tasks import TASKS
from funcbp.tasks.options import RUN, TRAINING, Option

__all__ = ["add_train_arguments", "given_options", "readers"]


def _add(group, option: Option, note: str = "") -> None:
    default = option.default
    if option.type is bool:
        group.add_argument(
            option.flag, action="store_true", default=argparse.SUPPRESS, help=option.help + note
        )
        return
    shown = " ".join(map(str, default)) if isinstance(default, list) else default
    group.add_argument(
        option.flag,
        type=option.type,
        nargs=option.nargs,
        choices=option.choices,
        default=argparse.SUPPRESS,
        metavar=option.name.upper() if option.choices is None else None,
        help=f"{option.help} (default {shown!s}{note})".replace("%", "%%"),
    )


def readers() -> dict[str, list[str]]:
    """Task-specific option name -> the tasks that read it (for error messages)."""
    out: dict[str, list[str]] = {}
    for task in TASKS.values():
        for option in task.options:
            out.setdefault(option.name, []).append(task.name)
    return out


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """``--task`` (alias ``--model``), the shared training and run options, and every task's
    own options in a group per task."""
    p.add_argument(
        "--task",
        "--model",
        dest="task",
        choices=sorted(TASKS),
        default="mlp",
        help="what to train (default mlp)",
    )
    g = p.add_argument_group("training (every task; defaults differ per task: see below)")
    for option in TRAINING:
        defaults = {
            t.name: t.defaults[option.name] for t in TASKS.values() if option.name in t.defaults
        }
        note = "".join(f"; {k}: {v}" for k, v in defaults.items())
        _add(g, option, note)
    g = p.add_argument_group("run")
    for option in RUN:
        _add(g, option)
    seen = set()
    for task in TASKS.values():
        options = [o for o in task.options if o.name not in seen]
        if not options:
            continue
        g = p.add_argument_group(f"{task.name} (also read by the tasks named)")
        for option in options:
            seen.add(option.name)
            tasks = readers()[option.name]
            _add(g, option, f"; read by {', '.join(tasks)}")


def given_options(args: argparse.Namespace) -> dict:
    """The options the user set on the command line (argparse.SUPPRESS leaves the rest out)."""
    return {k: v for k, v in vars(args).items() if k not in ("task", "func", "command")}
