"""funcbp: hand-derived backpropagation in JAX.

Layers, bottom to top (imports point down; an import-linter contract in ``make test`` holds
it): `funcbp.data` · `funcbp.ops` (the ops with hand VJPs) · `funcbp.backprop` (the one walk,
the explicit engine) · `funcbp.nn` (layers, combinators, models) · `funcbp.training` (step, fit,
checkpoints, sharding) · `funcbp.check` and `funcbp.tasks` · `funcbp.cli`.
"""

__version__ = "0.1.0"
