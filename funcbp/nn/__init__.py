"""Layers and models as pure ``(init, apply)`` pairs; params are plain pytrees."""

from funcbp.nn.combinators import serial as serial
from funcbp.nn.core import Layer as Layer
from funcbp.nn.core import op_layer as op_layer
from funcbp.nn.layers import Dense as Dense
from funcbp.nn.layers import Flatten as Flatten
from funcbp.nn.layers import Gelu as Gelu
from funcbp.nn.layers import LeakyRelu as LeakyRelu
from funcbp.nn.layers import Relu as Relu
from funcbp.nn.layers import Sigmoid as Sigmoid
from funcbp.nn.layers import Tanh as Tanh
from funcbp.nn.models import mlp as mlp

__all__ = [
    "Layer",
    "op_layer",
    "serial",
    "Dense",
    "Flatten",
    "Relu",
    "LeakyRelu",
    "Tanh",
    "Sigmoid",
    "Gelu",
    "mlp",
]
