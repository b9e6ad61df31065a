"""Training: the jitted step (forward, hand VJPs, optax update, NaN guard), optimizers, the fit
loop, atomic checkpoints, sharding over JAX meshes and mixed precision (`precision` policies,
float16 `loss_scale`)."""

from funcbp.training import checkpoint as checkpoint
from funcbp.training import distributed as distributed
from funcbp.training import loss_scale as loss_scale
from funcbp.training import precision as precision
from funcbp.training.guard import finite_flag_names as finite_flag_names
from funcbp.training.loop import CHECKPOINT_NAME as CHECKPOINT_NAME
from funcbp.training.loop import Events as Events
from funcbp.training.loop import FitConfig as FitConfig
from funcbp.training.loop import FitResult as FitResult
from funcbp.training.loop import NonFiniteError as NonFiniteError
from funcbp.training.loop import fit as fit
from funcbp.training.loop import init_model as init_model
from funcbp.training.loop import steps_per_second as steps_per_second
from funcbp.training.optim import OPTIMIZERS as OPTIMIZERS
from funcbp.training.optim import OptimizerConfig as OptimizerConfig
from funcbp.training.optim import classic_sgd as classic_sgd
from funcbp.training.optim import make_optimizer as make_optimizer
from funcbp.training.step import make_eval_fn as make_eval_fn
from funcbp.training.step import make_loss_fn as make_loss_fn
from funcbp.training.step import make_multi_step as make_multi_step
from funcbp.training.step import make_train_step as make_train_step

__all__ = [
    "CHECKPOINT_NAME",
    "Events",
    "FitConfig",
    "FitResult",
    "NonFiniteError",
    "OPTIMIZERS",
    "OptimizerConfig",
    "checkpoint",
    "classic_sgd",
    "distributed",
    "loss_scale",
    "precision",
    "finite_flag_names",
    "fit",
    "init_model",
    "make_eval_fn",
    "make_loss_fn",
    "make_multi_step",
    "make_optimizer",
    "make_train_step",
    "steps_per_second",
]
