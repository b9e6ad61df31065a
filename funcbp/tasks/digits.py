"""The digits tasks: an MLP (``mlp``) and a CNN (``cnn``) on scikit-learn's bundled 8x8 digits,
or on a user's ``.npz`` file (``--data FILE.npz``)."""

from __future__ import annotations

from funcbp import data as datasets
from funcbp import nn, ops
from funcbp.nn.models import ACTIVATIONS
from funcbp.nn.remat import remat_segments
from funcbp.tasks.base import Task
from funcbp.tasks.options import Option

__all__ = ["CNN", "MLP"]

DATA = Option("data", str, "digits", "'digits' (bundled) or a FILE.npz (x_train, y_train, "
              "x_test, y_test)")  # fmt: skip


def _load(image: bool):
    def load(opts):
        kw = {"image": image}
        if opts["data"] == "digits":
            kw["seed"] = opts["seed"]  # the seed of the stratified split
        return datasets.load(opts["data"], **kw)

    return load


def describe(data) -> dict:
    """The data's identity and what the model needs: input shape, classes, split sizes."""
    return {
        "name": data.name,
        "input_shape": list(data.input_shape),
        "n_classes": int(data.n_classes),
        "n_train": int(len(data.x_train)),
        "n_test": int(len(data.x_test)),
    }


def _remat(model, opts):
    return remat_segments(model, opts["remat"], opts["remat_policy"]) if opts["remat"] else model


def _mlp(opts, info):
    sizes = [*opts["hidden"], info["n_classes"]]
    model = nn.mlp(sizes, activation=opts["activation"])
    return _remat(model, opts), {"sizes": sizes, "activation": opts["activation"]}


def _cnn(opts, info):
    return _remat(nn.cnn(info["n_classes"]), opts), {"n_classes": info["n_classes"]}


MLP = Task(
    name="mlp",
    help="a multi-layer perceptron on digits (or a FILE.npz)",
    options=(
        DATA,
        Option("hidden", int, [128, 128], "hidden widths", nargs="+", minimum=1),
        Option("activation", str, "relu", "hidden activation", choices=tuple(ACTIVATIONS)),
    ),
    defaults={},
    load_data=_load(image=False),
    describe_data=describe,
    build_model=_mlp,
    loss=ops.softmax_cross_entropy,
)

CNN = Task(
    name="cnn",
    help="a small CNN (conv, batch norm, max pool, dropout) on 8x8 digits (NHWC)",
    options=(DATA,),
    defaults={},
    load_data=_load(image=True),
    describe_data=describe,
    build_model=_cnn,
    loss=ops.softmax_cross_entropy,
)
