"""Data: scikit-learn's bundled digits, user data from ``.npz`` files, shuffled mini-batches,
and the procedurally generated addition task.

Nothing here downloads anything. Every function is pure: randomness comes in as an explicit seed,
`numpy.random.Generator` or JAX key, and results are NumPy arrays (x float32, y int32).

- `load_digits`: the 1,797 8x8 handwritten digits that ship inside scikit-learn, split into
  train/test by a deterministic stratified split.
- `load_npz`: user data in the common MNIST layout, an ``.npz`` archive with the arrays
  ``x_train, y_train, x_test, y_test``; everything is validated before any training starts.
- `load`: ``"digits"`` or a path ending in ``.npz``.
- `batches` / `num_batches`: one shuffled epoch of mini-batches.
- `save_npz`: writes a `Dataset` in the layout `load_npz` reads.
- `funcbp.data.addition`: the bundled addition task of the GPT.
"""

from __future__ import annotations

import os

from funcbp.data.batches import batches as batches
from funcbp.data.batches import num_batches as num_batches
from funcbp.data.dataset import Dataset as Dataset
from funcbp.data.digits import load_digits as load_digits
from funcbp.data.digits import stratified_split as stratified_split
from funcbp.data.npz import KEYS as KEYS
from funcbp.data.npz import load_npz as load_npz
from funcbp.data.npz import save_npz as save_npz

__all__ = [
    "KEYS",
    "Dataset",
    "batches",
    "load",
    "load_digits",
    "load_npz",
    "num_batches",
    "save_npz",
    "stratified_split",
]


def load(name_or_path, **kwargs) -> Dataset:
    """``"digits"`` -> `load_digits(**kwargs)`; a path ending in .npz -> `load_npz(path, **kwargs)`.

    Unknown keyword arguments raise TypeError from the loader they are passed to.
    """
    if isinstance(name_or_path, str) and name_or_path == "digits":
        return load_digits(**kwargs)
    if isinstance(name_or_path, (str, os.PathLike)) and str(name_or_path).endswith(".npz"):
        return load_npz(name_or_path, **kwargs)
    raise ValueError(
        f"load: unknown dataset {name_or_path!r}; expected 'digits' or a path ending in .npz"
    )
