"""The `Dataset` of a classification task and its standardisation.

Standardisation uses the training split only: ``(x - mean) / std`` with the per-feature train
mean (per pixel and channel for images) and ONE global std, the root mean square of the centred
train values (1 if that is at or below ``1e-6 * max|x_train|``). A per-feature std would blow up
rare pixels (a digits pixel that is almost always blank has std ~0.03 on a 0-16 scale, so a test
digit touching it lands at ~500 standard deviations); the global scale gave better test accuracy
on digits (benchmarks/RESULTS.md, "Standardisation"). The statistics are kept on the `Dataset`
(`Dataset.standardize` applies them to new data).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["Dataset", "describe", "finish"]

_STD_FLOOR = 1e-6  # relative to max|x_train|; a global std at or below it means constant data
_CHUNK = 8192  # rows per standardisation chunk (bounds the float64 temporaries)


def describe(a) -> str:
    """``"ndarray of shape (2, 3) dtype float32"`` (or the type's name), for error messages."""
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return f"{type(a).__name__} of shape {tuple(a.shape)} dtype {a.dtype}"
    return type(a).__name__


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split of a classification task.

    Attributes:
      x_train: float32 ``(n_train, *input_shape)``; x_test: float32 ``(n_test, *input_shape)``.
      y_train: int32 ``(n_train,)``; y_test: int32 ``(n_test,)``; labels in ``[0, n_classes)``.
      n_classes: number of classes (max label over both splits + 1 for loaded data).
      name: ``"digits"`` or the ``.npz`` file's stem.
      input_shape: the shape of one example, ``(features,)`` or NHWC ``(H, W, C)``.
      mean, std: float32 arrays of shape ``input_shape`` used to standardise x (train statistics),
        or None when x is not standardised.

    Arrays are compared by identity (``eq=False``): datasets are data, not values.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str
    input_shape: tuple[int, ...]
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self):
        shape = tuple(self.input_shape)
        object.__setattr__(self, "input_shape", shape)
        where = f"Dataset {self.name!r}"
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int):
            raise TypeError(f"{where}: n_classes must be an int, got {self.n_classes!r}")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32:
                raise TypeError(
                    f"{where}: x_{split} must be a float32 NumPy array, got {describe(x)}"
                )
            if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.ndim != 1:
                raise TypeError(
                    f"{where}: y_{split} must be a 1-D int32 NumPy array, got {describe(y)}"
                )
            if x.shape[1:] != shape or len(x) != len(y):
                raise ValueError(
                    f"{where}: x_{split} {x.shape} and y_{split} {y.shape} do not match "
                    f"input_shape {shape} (expected x (n, *input_shape), y (n,))"
                )
            if y.size and (y.min() < 0 or y.max() >= self.n_classes):
                raise ValueError(
                    f"{where}: y_{split} labels must lie in [0, {self.n_classes}), got "
                    f"[{y.min()}, {y.max()}]"
                )
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"{where}: mean and std must both be given or both be None")
        for stat in ("mean", "std"):
            a = getattr(self, stat)
            if a is not None and (not isinstance(a, np.ndarray) or a.shape != shape):
                raise ValueError(f"{where}: {stat} must have shape {shape}, got {describe(a)}")

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    def standardize(self, x) -> np.ndarray:
        """Apply this dataset's train statistics to new data: ``(x - mean) / std`` as float32.

        x: ``(n, *input_shape)`` (or one example, ``input_shape``). Without statistics (loaded with
        ``standardize=False``) x is returned as float32 unchanged.
        """
        x = np.asarray(x)
        if x.shape[-len(self.input_shape) :] != self.input_shape:
            raise ValueError(
                f"Dataset {self.name!r}: standardize expects x of shape (n, *{self.input_shape}), "
                f"got {describe(x)}"
            )
        if self.mean is None:
            return x.astype(np.float32)
        return ((x - self.mean) / self.std).astype(np.float32)

    def __repr__(self) -> str:
        std = "standardized" if self.mean is not None else "raw"
        return (
            f"Dataset({self.name!r}, train {self.x_train.shape}, test {self.x_test.shape}, "
            f"n_classes={self.n_classes}, {std})"
        )


def finish(name, x_tr, y_tr, x_te, y_te, n_classes, standardize, where=None) -> Dataset:
    """Cast to float32 (standardising with train statistics if asked) and build the Dataset."""
    where = where or name
    mean = std = None
    with np.errstate(all="ignore"):  # overflow is detected below, not warned about
        if standardize:
            mean = x_tr.mean(axis=0, dtype=np.float64)
            var = np.zeros_like(mean)
            for i in range(0, len(x_tr), _CHUNK):
                d = x_tr[i : i + _CHUNK].astype(np.float64) - mean
                var += (d * d).sum(axis=0)
            scale = math.sqrt(float(var.sum()) / max(var.size * len(x_tr), 1))  # global RMS
            floor = _STD_FLOOR * max(abs(float(x_tr.max())), abs(float(x_tr.min())))
            std = np.full_like(mean, scale if scale > floor else 1.0)

        def convert(x):
            if mean is None:
                return x.astype(np.float32)
            out = np.empty(x.shape, np.float32)
            for i in range(0, len(x), _CHUNK):
                out[i : i + _CHUNK] = (x[i : i + _CHUNK] - mean) / std
            return out

        x_tr, x_te = convert(x_tr), convert(x_te)
    for split, x in (("train", x_tr), ("test", x_te)):
        if not np.isfinite(x).all():
            raise ValueError(
                f"{where}: x_{split} does not fit float32 after standardisation (values far "
                f"outside the train range); rescale the data"
            )
    if mean is not None:
        mean, std = mean.astype(np.float32), std.astype(np.float32)
    return Dataset(
        x_train=x_tr,
        y_train=np.asarray(y_tr, np.int32),
        x_test=x_te,
        y_test=np.asarray(y_te, np.int32),
        n_classes=int(n_classes),
        name=name,
        input_shape=tuple(x_tr.shape[1:]),
        mean=mean,
        std=std,
    )
