"""Checking gradients: hand VJPs, the explicit reverse pass, `jax.grad` of the references and
central finite differences, compared leaf by leaf (`funcbp.check.gradients`); whole models
(`funcbp.check.model`); the first layer where hand and autodiff part (`funcbp.check.diverge`);
mutation testing of the checker (`funcbp.check.mutate`); float32 tolerances calibrated from
the reference's own error (`funcbp.check.calibrate`); cheap compiles for checking
(`funcbp.check.fast_compile`) and the registry check over two processes
(`funcbp.check.parallel`)."""

from funcbp.check.gradients import FD_EPS as FD_EPS
from funcbp.check.gradients import FD_TOLERANCE as FD_TOLERANCE
from funcbp.check.gradients import SOURCES as SOURCES
from funcbp.check.gradients import TOLERANCE as TOLERANCE
from funcbp.check.gradients import LeafError as LeafError
from funcbp.check.gradients import Report as Report
from funcbp.check.gradients import _is_float as _is_float
from funcbp.check.gradients import check_op as check_op
from funcbp.check.gradients import check_registry as check_registry
from funcbp.check.gradients import compare as compare
from funcbp.check.gradients import finite_difference_grad as finite_difference_grad
from funcbp.check.gradients import many_gradients as many_gradients
from funcbp.check.gradients import op_gradients as op_gradients
from funcbp.check.gradients import random_cotangent as random_cotangent
from funcbp.check.gradients import relative_error as relative_error
from funcbp.check.gradients import require_x64 as require_x64
from funcbp.check.gradients import summarise as summarise
from funcbp.check.model import MODEL_TOLERANCE as MODEL_TOLERANCE
from funcbp.check.model import check_model as check_model
from funcbp.check.model import model_gradients as model_gradients

__all__ = [
    "FD_EPS",
    "FD_TOLERANCE",
    "MODEL_TOLERANCE",
    "SOURCES",
    "TOLERANCE",
    "LeafError",
    "Report",
    "check_model",
    "check_op",
    "check_registry",
    "compare",
    "finite_difference_grad",
    "many_gradients",
    "model_gradients",
    "op_gradients",
    "random_cotangent",
    "relative_error",
    "require_x64",
    "summarise",
]
