"""Layers, combinators and models as pure ``(init, apply)`` pairs; params are plain pytrees.

A model is a composition: leaves (`op_layer` and the layers here) and combinators (`serial`,
`residual`, `tie`, `remat`), each owning its hand backward; `funcbp.backprop` is the one walk.
"""

from funcbp.nn import init as init
from funcbp.nn.attention import Attention as Attention
from funcbp.nn.attention import MergeHeads as MergeHeads
from funcbp.nn.attention import MultiHeadAttention as MultiHeadAttention
from funcbp.nn.attention import SplitHeads as SplitHeads
from funcbp.nn.combinators import parallel as parallel
from funcbp.nn.combinators import residual as residual
from funcbp.nn.combinators import serial as serial
from funcbp.nn.combinators import tie as tie
from funcbp.nn.conv import AvgPool2D as AvgPool2D
from funcbp.nn.conv import Conv2D as Conv2D
from funcbp.nn.conv import MaxPool2D as MaxPool2D
from funcbp.nn.core import Layer as Layer
from funcbp.nn.core import leaf as leaf
from funcbp.nn.core import op_layer as op_layer
from funcbp.nn.dropout import Dropout as Dropout
from funcbp.nn.embedding import Embedding as Embedding
from funcbp.nn.embedding import HeadInputs as HeadInputs
from funcbp.nn.embedding import PositionEmbedding as PositionEmbedding
from funcbp.nn.embedding import Unembed as Unembed
from funcbp.nn.kv_cache import CausalAttention as CausalAttention
from funcbp.nn.layers import Dense as Dense
from funcbp.nn.layers import Flatten as Flatten
from funcbp.nn.layers import Gelu as Gelu
from funcbp.nn.layers import LeakyRelu as LeakyRelu
from funcbp.nn.layers import Project as Project
from funcbp.nn.layers import Relu as Relu
from funcbp.nn.layers import Sigmoid as Sigmoid
from funcbp.nn.layers import SwiGLU as SwiGLU
from funcbp.nn.layers import Tanh as Tanh
from funcbp.nn.models import cnn as cnn
from funcbp.nn.models import mlp as mlp
from funcbp.nn.norm import BatchNorm as BatchNorm
from funcbp.nn.norm import LayerNorm as LayerNorm
from funcbp.nn.norm import RMSNorm as RMSNorm
from funcbp.nn.precision import compute_in as compute_in
from funcbp.nn.recurrent import LSTM as LSTM
from funcbp.nn.recurrent import RNN as RNN
from funcbp.nn.remat import remat as remat
from funcbp.nn.remat import remat_segments as remat_segments
from funcbp.nn.rotary import GroupedSplitHeads as GroupedSplitHeads
from funcbp.nn.rotary import Rope as Rope

__all__ = [
    "Layer",
    "leaf",
    "op_layer",
    "init",
    "serial",
    "residual",
    "tie",
    "parallel",
    "remat",
    "remat_segments",
    "compute_in",
    "Dense",
    "Project",
    "SwiGLU",
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
    "RMSNorm",
    "BatchNorm",
    "Dropout",
    "Embedding",
    "PositionEmbedding",
    "Unembed",
    "HeadInputs",
    "SplitHeads",
    "MergeHeads",
    "Attention",
    "MultiHeadAttention",
    "GroupedSplitHeads",
    "Rope",
    "CausalAttention",
    "RNN",
    "LSTM",
    "mlp",
    "cnn",
]
