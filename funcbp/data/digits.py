"""scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes): nothing is
downloaded. Split train/test by a deterministic stratified split."""

from __future__ import annotations

import functools
import math

import numpy as np

from funcbp.data.dataset import Dataset, finish

__all__ = ["load_digits", "stratified_split"]


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits  # ships with sklearn: no download

    x, y = sk_load_digits(return_X_y=True)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def stratified_split(y, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of ``range(len(y))`` into sorted (train, test) indices.

    The test split has ``round(test_fraction * n)`` examples. Class c gets ``floor(f n_c)`` or
    ``ceil(f n_c)`` of them (largest remainders first, ties broken at random), so every class's
    test count is within one example of its share; within a class the examples are drawn at random.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    ideal = counts * test_fraction
    take = np.floor(ideal).astype(np.int64)
    extra = int(math.floor(len(y) * test_fraction + 0.5)) - int(take.sum())
    order = np.lexsort((rng.random(len(classes)), -(ideal - take)))  # largest remainder first
    take[order[:extra]] += 1
    test = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take, strict=True)]
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(y)), test)
    return train, test


def load_digits(
    *, test_fraction: float = 0.2, seed: int = 0, standardize: bool = True, image: bool = False
) -> Dataset:
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes; no download).

    Args:
      test_fraction: share of the examples in the test split, in (0, 1); the split is stratified
        by class and fixed by ``seed``.
      seed: non-negative int seeding the split.
      standardize: per-pixel standardisation with train statistics (pixels start as 0..16).
      image: False -> x of shape ``(n, 64)``; True -> NHWC ``(n, 8, 8, 1)`` for CNNs.

    Returns:
      A `Dataset` named ``"digits"``.
    """
    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"load_digits: test_fraction must be in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"load_digits: seed must be a non-negative int, got {seed!r}")
    x, y = _raw_digits()
    train, test = stratified_split(y, float(test_fraction), int(seed))
    if len(train) == 0 or len(test) == 0:
        raise ValueError(
            f"load_digits: test_fraction={test_fraction} leaves {len(train)} train and "
            f"{len(test)} test examples of {len(y)}; both splits need at least one"
        )
    shape = (8, 8, 1) if image else (64,)
    x = x.reshape(-1, *shape)
    return finish("digits", x[train], y[train], x[test], y[test], 10, standardize)
