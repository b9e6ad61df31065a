"""Tasks: each trainable model with its data, options, metrics and generation, served by one
run path (`funcbp.tasks.run`). `TASKS` maps a name to its `Task`."""

from funcbp.tasks.addition import GPT
from funcbp.tasks.base import Task as Task
from funcbp.tasks.digits import CNN, MLP
from funcbp.tasks.text import LLAMA

TASKS: dict[str, Task] = {t.name: t for t in (MLP, CNN, GPT, LLAMA)}
"""name -> `Task`: ``mlp`` and ``cnn`` on digits, ``gpt`` on the addition task, ``llama`` on
bytes of real text."""

__all__ = ["TASKS", "Task"]
