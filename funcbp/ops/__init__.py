"""Differentiable primitives with hand-derived VJPs, each registered in `REGISTRY`.

Every public name here is a `jax.custom_vjp` function (an `Op`): ``ops.linear(x, w, b)`` runs the
forward and, under `jax.grad`, the hand-written backward. ``ops.linear.autodiff(...)`` runs the
plain reference instead (gradients by `jax.grad` itself), and ``ops.REGISTRY`` maps each name to
its `Op` (reference, fwd, bwd, jvp, sample) for tests, reports and benchmarks.
``ops.linear.forward_mode(...)`` is the op as a `jax.custom_jvp` function of its hand JVP, for
forward mode (`jax.jvp`, `jax.jacfwd`, `jax.hessian`).
"""

from funcbp.ops._op import REGISTRY as REGISTRY
from funcbp.ops._op import Op as Op
from funcbp.ops._op import register as register
from funcbp.ops.activations import gelu as gelu
from funcbp.ops.activations import leaky_relu as leaky_relu
from funcbp.ops.activations import relu as relu
from funcbp.ops.activations import sigmoid as sigmoid
from funcbp.ops.activations import tanh as tanh
from funcbp.ops.attention import attention as attention
from funcbp.ops.conv import conv2d as conv2d
from funcbp.ops.dropout import dropout as dropout
from funcbp.ops.embedding import embedding as embedding
from funcbp.ops.flash_attention import flash_attention as flash_attention
from funcbp.ops.linear import linear as linear
from funcbp.ops.linear_cross_entropy import linear_cross_entropy as linear_cross_entropy
from funcbp.ops.losses import binary_cross_entropy_with_logits as binary_cross_entropy_with_logits
from funcbp.ops.losses import mse as mse
from funcbp.ops.losses import softmax_cross_entropy as softmax_cross_entropy
from funcbp.ops.norm import batch_norm as batch_norm
from funcbp.ops.norm import batch_norm_inference as batch_norm_inference
from funcbp.ops.norm import batch_norm_stats as batch_norm_stats
from funcbp.ops.norm import layer_norm as layer_norm
from funcbp.ops.pool import avg_pool2d as avg_pool2d
from funcbp.ops.pool import max_pool2d as max_pool2d
from funcbp.ops.recurrent import lstm as lstm
from funcbp.ops.recurrent import lstm_cell as lstm_cell
from funcbp.ops.recurrent import rnn as rnn
from funcbp.ops.recurrent import rnn_cell as rnn_cell
from funcbp.ops.rms_norm import rms_norm as rms_norm
from funcbp.ops.rope import rope as rope
from funcbp.ops.softmax import log_softmax as log_softmax
from funcbp.ops.softmax import softmax as softmax
from funcbp.ops.swiglu import swiglu as swiglu
from funcbp.ops.unembed import unembed as unembed
from funcbp.ops.unembed_cross_entropy import unembed_cross_entropy as unembed_cross_entropy

__all__ = [
    "REGISTRY",
    "Op",
    "register",
    "linear",
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "gelu",
    "softmax",
    "log_softmax",
    "mse",
    "softmax_cross_entropy",
    "linear_cross_entropy",
    "binary_cross_entropy_with_logits",
    "rnn_cell",
    "lstm_cell",
    "rnn",
    "lstm",
    "attention",
    "flash_attention",
    "layer_norm",
    "batch_norm",
    "batch_norm_inference",
    "batch_norm_stats",
    "rms_norm",
    "rope",
    "swiglu",
    "dropout",
    "embedding",
    "unembed",
    "unembed_cross_entropy",
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
]
