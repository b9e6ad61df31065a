"""User data from ``.npz`` files in the common MNIST layout (``x_train, y_train, x_test,
y_test``), validated before any training starts; no pickle is ever loaded."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from funcbp.data.dataset import Dataset, finish
from funcbp.data.dataset import describe as _desc

__all__ = ["KEYS", "load_npz", "save_npz"]

KEYS = ("x_train", "y_train", "x_test", "y_test")
_F32_MAX = float(np.finfo(np.float32).max)
_I32_MAX = int(np.iinfo(np.int32).max)


@contextlib.contextmanager
def _unreadable(where: str):
    """Turn any error of the zip/npy machinery (corrupt data) into a ValueError naming the file."""
    try:
        yield
    except Exception as e:
        raise ValueError(f"{where}: corrupt or unreadable ({type(e).__name__}: {e})") from e


def _read_header(zf: zipfile.ZipFile, member: str, where: str):
    """(shape, dtype, data offset) of one ``.npy`` member, read without loading its data."""
    with zf.open(member) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"{where}: unsupported .npy format version {version}")
        return tuple(shape), dtype, fp.tell()


def _check_dtype(where: str, dtype: np.dtype, shape, *, label: bool) -> None:
    what = "a 1-D integer array of class labels" if label else "a numeric array"
    if dtype.kind == "O":
        raise TypeError(
            f"{where}: holds an object array (shape {shape}): ragged nested lists or Python "
            f"objects cannot be used; expected {what}"
        )
    ok = "iuf" if label else "biuf"
    if dtype.kind not in ok:
        raise TypeError(f"{where}: dtype {dtype} (shape {shape}) is not supported; expected {what}")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of the layout, with dtypes and shapes checked from the headers first."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(6)
        hint = " (it is a single .npy array; use np.savez)" if head == b"\x93NUMPY" else ""
        raise ValueError(f"load_npz: {path} is not an .npz (zip) archive{hint}")
    with _unreadable(f"load_npz: {path}"):
        zf = zipfile.ZipFile(path)
        names = zf.namelist()
    with zf:
        members = {n[: -len(".npy")]: n for n in names if n.endswith(".npy")}
        missing = [k for k in KEYS if k not in members]
        if missing:
            near = {k.lower(): k for k in members}
            hints = [f"{near[m]!r} for {m!r}?" for m in missing if m in near]
            hint = f" (case differs: {', '.join(hints)})" if hints else ""
            raise ValueError(
                f"load_npz: {path} lacks key(s) {missing}; found {sorted(members)}, expected "
                f"{list(KEYS)}{hint}"
            )
        arrays = {}
        for key in KEYS:
            where = f"load_npz: {path} [{key}]"
            with _unreadable(where):
                size = zf.getinfo(members[key]).file_size
                shape, dtype, offset = _read_header(zf, members[key], where)
            _check_dtype(where, dtype, shape, label=key.startswith("y"))
            nbytes = math.prod(shape) * dtype.itemsize
            if size != offset + nbytes:
                raise ValueError(
                    f"{where}: header says shape {shape} dtype {dtype} ({nbytes} bytes) but the "
                    f"member holds {size - offset} bytes of data; the file is corrupt"
                )
            with _unreadable(where), zf.open(members[key]) as fp:
                arrays[key] = np.lib.format.read_array(fp, allow_pickle=False)
    return arrays


def _check_labels(where: str, y: np.ndarray) -> np.ndarray:
    """y: 1-D integers >= 0 (floats allowed when every value is a whole number) -> int32."""
    if y.ndim != 1:
        hint = " (one-hot? pass y.argmax(-1); (n, 1)? pass y.reshape(-1))" if y.ndim == 2 else ""
        raise ValueError(f"{where}: labels must be 1-D (n,), got {_desc(y)}{hint}")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{where}: float labels must be whole numbers, got {y[i].item()!r} at index {i} "
                f"({_desc(y)})"
            )
    if y.size and y.min() < 0:
        i = int(np.argmin(y))
        raise ValueError(f"{where}: labels must be >= 0, got {y[i].item()!r} at index {i}")
    if y.size and y.max().item() >= _I32_MAX:  # as Python numbers: no cast of 2**31 to float16
        raise ValueError(f"{where}: label {y.max().item()!r} is too large (must be < {_I32_MAX})")
    return y.astype(np.int32)


def _check_features(where: str, x: np.ndarray) -> None:
    if x.ndim < 2 or 0 in x.shape[1:]:
        raise ValueError(
            f"{where}: x must have shape (n, features...) with at least one feature, got {_desc(x)}"
        )
    if x.dtype.kind == "f":
        with np.errstate(all="ignore"):
            bad = ~np.isfinite(x) | (np.abs(x) > _F32_MAX)
        if bad.any():
            i = np.unravel_index(int(np.flatnonzero(bad)[0]), x.shape)
            raise ValueError(
                f"{where}: x must be finite and fit float32, got {x[i].item()!r} at index "
                f"{tuple(int(j) for j in i)} ({int(bad.sum())} such values)"
            )


def _layout(where: str, x: np.ndarray, image: bool | None) -> np.ndarray:
    """(n, ...) -> flat (n, features) or NHWC (n, H, W, C); ``image=None``: 3-D/4-D are images."""
    if image is None:
        image = x.ndim in (3, 4)
    if not image:
        return x.reshape(len(x), -1)
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4:
        return x
    raise ValueError(
        f"{where}: image=True needs x of shape (n, H, W) or NHWC (n, H, W, C), got {_desc(x)}; "
        f"reshape it before saving or pass image=False"
    )


def _check_splits(path, x_tr, y_tr, x_te, y_te) -> None:
    """Both splits non-empty, one label per example, examples of one shape."""
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        where = f"load_npz: {path} [x_{split}]"
        _check_features(where, x)
        if len(x) == 0:
            raise ValueError(f"{where}: the {split} split is empty (shape {x.shape})")
        if y.ndim >= 1 and len(x) != len(y):
            raise ValueError(
                f"load_npz: {path}: x_{split} has {len(x)} examples but y_{split} has {len(y)} "
                f"labels (x {x.shape}, y {y.shape})"
            )
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ValueError(
            f"load_npz: {path}: x_train examples have shape {x_tr.shape[1:]} but x_test examples "
            f"have {x_te.shape[1:]}; they must match"
        )


def load_npz(path, *, standardize: bool = True, image: bool | None = None) -> Dataset:
    """Load user data from an ``.npz`` archive with ``x_train, y_train, x_test, y_test``.

    Everything is checked before any array is used; each error names the file, the key, what came
    and what was expected.

    Accepted:
      x: ``(n, ...)`` with at least one feature; bool, integer (e.g. uint8 pixels) or float, finite
        and within float32 range; becomes float32. ``x_train`` and ``x_test`` share their
        per-example shape.
      y: ``(n,)`` non-negative integers; float arrays are accepted when every value is a whole
        number (some exporters write labels as floats), anything non-integral is rejected.
      Both splits non-empty. Other keys in the archive are ignored. No pickles are ever loaded.

    Args:
      path: str or os.PathLike of the ``.npz`` file.
      standardize: per-feature standardisation with train statistics (see the module docstring).
      image: False -> x flattened to ``(n, features)``; True -> NHWC ``(n, H, W, C)`` (a stored
        ``(n, H, W)`` gets ``C = 1``; flat data is rejected rather than guessed into a square);
        None (default) -> images when stored as ``(n, H, W)`` or ``(n, H, W, C)``, else flat.

    Returns:
      A `Dataset` named after the file's stem; ``n_classes = max label over both splits + 1``.

    Raises:
      FileNotFoundError: no such file. TypeError: wrong argument types or unsupported dtypes
      (object, string, complex, ...). ValueError: everything else that is wrong with the file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_npz: path must be a str or os.PathLike, got {type(path).__name__}")
    if image not in (None, True, False):
        raise TypeError(f"load_npz: image must be True, False or None, got {image!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_npz: no such file: {path}")
    if path.is_dir():
        raise ValueError(f"load_npz: {path} is a directory, expected an .npz file")
    arrays = _read_arrays(path)

    x_tr, y_tr, x_te, y_te = (arrays[k] for k in KEYS)
    _check_splits(path, x_tr, y_tr, x_te, y_te)
    y_tr = _check_labels(f"load_npz: {path} [y_train]", y_tr)
    y_te = _check_labels(f"load_npz: {path} [y_test]", y_te)
    x_tr = _layout(f"load_npz: {path} [x_train]", x_tr, image)
    x_te = _layout(f"load_npz: {path} [x_test]", x_te, image)
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    return finish(path.stem, x_tr, y_tr, x_te, y_te, n_classes, standardize, where=str(path))


def save_npz(path, dataset: Dataset) -> Path:
    """Write ``dataset``'s arrays (as held: standardised if it was) in the layout `load_npz` reads.

    path must end in ``.npz``. The file is written to a temporary name and renamed, so a reader
    never sees half a file. Returns the path written.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"save_npz: dataset must be a Dataset, got {type(dataset).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"save_npz: path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"save_npz: path must end in .npz, got {path}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: getattr(dataset, k) for k in KEYS})
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
