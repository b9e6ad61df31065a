"""Layers and models as pure ``(init, apply)`` pairs; params are plain pytrees."""

from funcbp.nn.combinators import serial as serial
from funcbp.nn.conv import AvgPool2D as AvgPool2D
from funcbp.nn.conv import Conv2D as Conv2D
from funcbp.nn.conv import MaxPool2D as MaxPool2D
from funcbp.nn.core import Layer as Layer
from funcbp.nn.core import op_layer as op_layer
from funcbp.nn.dropout import Dropout as Dropout
from funcbp.nn.embedding import Embedding as Embedding
from funcbp.nn.layers import Dense as Dense
from funcbp.nn.layers import Flatten as Flatten
from funcbp.nn.layers import Gelu as Gelu
from funcbp.nn.layers import LeakyRelu as LeakyRelu
from funcbp.nn.layers import Relu as Relu
from funcbp.nn.layers import Sigmoid as Sigmoid
from funcbp.nn.layers import Tanh as Tanh
from funcbp.nn.models import cnn as cnn
from funcbp.nn.models import mlp as mlp
from funcbp.nn.norm import BatchNorm as BatchNorm
from funcbp.nn.norm import LayerNorm as LayerNorm
from funcbp.nn.recurrent import LSTM as LSTM
from funcbp.nn.recurrent import RNN as RNN

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
    "Conv2D",
    "MaxPool2D",
    "AvgPool2D",
    "LayerNorm",
    "BatchNorm",
    "Dropout",
    "Embedding",
    "RNN",
    "LSTM",
    "mlp",
    "cnn",
]
