"""Shuffled mini-batches of one epoch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from funcbp.data.dataset import describe as _desc

__all__ = ["batches", "num_batches"]


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Batches in one epoch of ``n`` examples: ``n // batch_size`` or, keeping the last partial
    batch (``drop_last=False``), ``ceil(n / batch_size)``.

    ``batch_size > n`` with ``drop_last=True`` would give an empty epoch: that raises ValueError.
    """
    for arg, v in (("n", n), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"num_batches: {arg} must be an int, got {v!r}")
    if n < 0 or batch_size < 1:
        raise ValueError(f"num_batches: need n >= 0 and batch_size >= 1, got n={n}, {batch_size=}")
    if drop_last and batch_size > n:
        raise ValueError(
            f"num_batches: batch_size={batch_size} exceeds the {n} examples and drop_last=True "
            f"would drop them all; use a batch_size <= {n} or drop_last=False"
        )
    return int(n // batch_size if drop_last else -(-n // batch_size))


def _rng(key_or_seed) -> np.random.Generator:
    """A NumPy Generator from an int seed, a Generator (used as is) or a single JAX key."""
    if isinstance(key_or_seed, np.random.Generator):
        return key_or_seed
    if isinstance(key_or_seed, (int, np.integer)) and not isinstance(key_or_seed, bool):
        if key_or_seed < 0:
            raise ValueError(f"batches: a seed must be >= 0, got {key_or_seed}")
        return np.random.default_rng(int(key_or_seed))
    import jax  # only for keys

    if isinstance(key_or_seed, jax.Array):
        k = key_or_seed
        if jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key):
            if k.ndim == 0:
                return np.random.default_rng(np.asarray(jax.random.key_data(k)).ravel())
        elif k.dtype == np.uint32 and k.ndim == 1:  # a raw key, e.g. jax.random.PRNGKey(0)
            return np.random.default_rng(np.asarray(k))
    raise TypeError(
        f"batches: key_or_seed must be an int seed, a numpy Generator or a single JAX key, got "
        f"{_desc(key_or_seed)}"
    )


def batches(
    key_or_seed, x, y, batch_size: int, *, drop_last: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One shuffled epoch of mini-batches ``(x_b, y_b)``: ``(batch_size, ...)``, ``(batch_size,)``.

    The order is a NumPy permutation of ``range(n)`` drawn from ``key_or_seed``:
      - an int seed: ``np.random.default_rng(seed)``, the same order for the same seed;
      - a ``np.random.Generator``: used (and advanced) as is, so successive epochs differ;
      - a JAX key (typed ``jax.random.key`` or raw ``PRNGKey``): its key bits seed NumPy's
        generator, so the same key gives the same order. Pass ``jax.random.fold_in(key, epoch)``
        for a fresh order each epoch.
    With ``drop_last=False`` the last batch may be smaller and every example appears exactly once
    per epoch; with ``drop_last=True`` the ``n % batch_size`` examples left over are skipped.

    Arguments are checked now, not when the first batch is drawn.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
        raise ValueError(
            f"batches: x and y need the same leading length, got x {_desc(x)}, y {_desc(y)}"
        )
    count = num_batches(len(x), batch_size, drop_last)
    perm = _rng(key_or_seed).permutation(len(x))

    def epoch():
        for i in range(count):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            yield x[idx], y[idx]

    return epoch()
