"""funcbp: hand-derived backpropagation in JAX.

Layers, bottom to top (imports point down; an import-linter contract in ``make test`` holds
it): `funcbp.data` · `funcbp.ops` (the ops with hand VJPs and JVPs) · `funcbp.backprop` (the one
walk, the explicit engine) · `funcbp.nn` (layers, combinators, models) · `funcbp.training` (step,
fit, checkpoints, sharding) · `funcbp.check` and `funcbp.tasks` · `funcbp.cli`.

``import funcbp`` is cheap; each subpackage is imported on first use (``funcbp.nn.mlp(...)``).
"""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = ("backprop", "check", "cli", "data", "nn", "ops", "tasks", "training")
__all__ = ["__version__", *_SUBPACKAGES]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"funcbp.{name}")
    raise AttributeError(f"module 'funcbp' has no attribute {name!r}")
