"""Atomic checkpoints of pytrees: write a temporary file, fsync, rename.

A checkpoint is one uncompressed ``.npz`` file: the leaves of the saved tree as ``leaf_00000``,
… and a JSON ``__meta__`` entry (format version, the tree structure, each leaf's shape and dtype,
and a free-form ``extra`` dict such as the epoch and the metrics history). No pickle is involved:
loading runs no code from the file.

``save`` never leaves a partial file under the final name: a crash (even SIGKILL) during a write
leaves the previous checkpoint intact. ``restore`` checks the file against a *template* tree (the
freshly initialised params/optimizer state of the model you are about to train, or only its
shapes and dtypes) and raises `CheckpointError` naming the first mismatch: a missing, corrupt or
truncated file, another architecture, malformed metadata, a stored array of another shape or
dtype. Every size is checked from the zip directory and the ``.npy`` headers *before* any data is
read, so a hostile file (an entry declaring a huge array, an unknown extra entry, a compressed
"zip bomb") is refused without allocating or inflating it: reading a checkpoint costs at most the
template's bytes plus `META_LIMIT`.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from funcbp.training.checkpoint_meta import CheckpointError, check_meta, validate_training_extra

__all__ = [
    "CheckpointError",
    "save",
    "restore",
    "read_extra",
    "remove_stale_temporaries",
    "validate_training_extra",
    "META_LIMIT",
]

FORMAT = "funcbp-checkpoint-1"
META = "__meta__.npy"
META_LIMIT = 256 * 2**20  # bytes of the stored JSON (4 per character): ~3M epochs/steps of history
HEADER_LIMIT = 4096  # bytes an .npy header may take in front of the data (savez writes 128)
_LEAF = re.compile(r"leaf_(\d{5})\.npy")


def _describe_tree(tree) -> tuple[list, dict]:
    """``(leaves, meta)``: the flat leaves and their treedef/shapes/dtypes (leaves may be
    arrays or `jax.ShapeDtypeStruct`s; only their ``shape`` and ``dtype`` are read)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x) for x in leaves]
    meta = {
        "format": FORMAT,
        "treedef": str(treedef),
        "shapes": [list(x.shape) for x in leaves],
        "dtypes": [np.dtype(x.dtype).str for x in leaves],
    }
    return leaves, meta


def save(path: str | os.PathLike, tree: Any, extra: dict | None = None) -> Path:
    """Write ``tree`` (a pytree of arrays) and JSON-able ``extra`` atomically to ``path``.

    In a multi-process run every process holds the same tree: write it from one process only
    (`funcbp.distributed.save_checkpoint` does that)."""
    path = Path(path)
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(
            f"checkpoint.save: extra must be a dict or None, got {type(extra).__name__}"
        )
    leaves, meta = _describe_tree(tree)
    meta["extra"] = extra or {}
    entries = {f"leaf_{i:05d}": np.asarray(a) for i, a in enumerate(leaves)}
    entries["__meta__"] = np.array(json.dumps(meta))  # TypeError here for non-JSON extra
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed `save` of ``path`` left behind; returns what it removed.

    Call it only when no other process is writing this checkpoint (e.g. at the start of a run,
    on the writing process of a multi-process run).
    """
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.exists() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# -- reading: sizes from the zip directory and .npy headers first, data last -------------------
def _corrupt(path: Path, e: BaseException) -> CheckpointError:
    return CheckpointError(f"checkpoint: {path} is corrupt or truncated ({type(e).__name__}: {e})")


def _open(path: Path) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]:
    """The open zip and its entries by name (from the central directory: nothing inflated).

    Refuses duplicate names and compressed entries (`save` stores every entry uncompressed, so
    an entry's size in the directory is the size on disk: no zip bomb can pass)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint: no file at {path}")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise _corrupt(path, e) from None
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        problem = None
        if info.filename in infos:
            problem = f"holds the entry {info.filename!r} twice"
        elif info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            problem = (
                f"entry {info.filename!r} is compressed ({info.compress_size} bytes declaring "
                f"{info.file_size}); funcbp writes checkpoints uncompressed"
            )
        if problem:
            zf.close()
            raise CheckpointError(f"checkpoint: {path} {problem}: not a file funcbp wrote")
        infos[info.filename] = info
    return zf, infos


def _read_member(zf, info, path: Path, what: str, limit: int, expect) -> np.ndarray:
    """One ``.npy`` entry, its declared size bounded by ``limit`` and its header checked by
    ``expect(shape, dtype) -> problem | None`` before a byte of data is read."""
    if info.file_size > limit:
        raise CheckpointError(
            f"checkpoint: {path} {what} declares {info.file_size} bytes, more than the "
            f"{limit} bytes it may take"
        )
    try:
        with zf.open(info) as fp:
            version = np.lib.format.read_magic(fp)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy format version {version}")
            read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
            shape, fortran, dtype = read_header(fp)
            offset = fp.tell()
            problem = expect(tuple(shape), dtype)
            if problem is not None:
                raise CheckpointError(f"checkpoint: {path} {what} {problem}")
            nbytes = math.prod(shape) * dtype.itemsize
            if info.file_size != offset + nbytes:
                raise ValueError(
                    f"{what}: header says {dtype}{tuple(shape)} ({nbytes} bytes) but the entry "
                    f"holds {info.file_size - offset}"
                )
            fp.seek(0)
            array = np.lib.format.read_array(fp, allow_pickle=False)
            fp.read(1)  # at the end of the entry: the zip CRC is checked
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, TypeError) as e:
        raise _corrupt(path, e) from None
    return array


def _read_meta(zf, infos, path: Path) -> dict:
    if META not in infos:
        raise CheckpointError(f"checkpoint: {path} has no __meta__ entry: not a funcbp checkpoint")

    def is_json_text(shape, dtype):
        if shape == () and dtype.kind == "U":
            return None
        return f"holds {dtype}{shape}, expected a JSON text (a 0-d unicode array)"

    raw = _read_member(zf, infos[META], path, "__meta__", META_LIMIT, is_json_text)
    try:
        meta = json.loads(str(raw))
    except ValueError as e:
        raise CheckpointError(f"checkpoint: {path} metadata is not valid JSON ({e})") from None
    problem = check_meta(meta, FORMAT)
    if problem:
        raise CheckpointError(f"checkpoint: {path} {problem}")
    return meta


def read_extra(path: str | os.PathLike) -> dict:
    """The ``extra`` dict saved with a checkpoint (epoch, history, config); no array is read."""
    path = Path(path)
    zf, infos = _open(path)
    with zf:
        return _read_meta(zf, infos, path)["extra"]


def _check_against_template(path: Path, meta: dict, t_leaves: list, t_meta: dict) -> None:
    """Structure, then each declared shape and dtype, against the template's."""
    if meta["treedef"] != t_meta["treedef"] or len(meta["shapes"]) != len(t_leaves):
        raise CheckpointError(
            f"checkpoint: {path} holds a different structure ({len(meta['shapes'])} arrays) "
            f"than the model being restored ({len(t_leaves)} arrays): another architecture "
            f"or optimizer?\n  file:  {meta['treedef'][:300]}\n  model: {t_meta['treedef'][:300]}"
        )
    for i, (shape, dtype, t) in enumerate(
        zip(meta["shapes"], meta["dtypes"], t_leaves, strict=True)
    ):
        if tuple(shape) != tuple(t.shape) or np.dtype(dtype) != np.dtype(t.dtype):
            raise CheckpointError(
                f"checkpoint: {path} leaf {i} is {np.dtype(dtype)}{tuple(shape)} but the model "
                f"expects {np.dtype(t.dtype)}{tuple(t.shape)}: another architecture?"
            )


def _check_entries(path: Path, infos: dict, n: int) -> None:
    """Exactly ``__meta__`` and ``leaf_00000 … leaf_{n-1}``: unknown entries are never read."""
    for name in infos:
        m = _LEAF.fullmatch(name)
        if name != META and (m is None or int(m.group(1)) >= n):
            raise CheckpointError(
                f"checkpoint: {path} holds an unknown entry {name!r} (expected __meta__.npy and "
                f"leaf_00000.npy … leaf_{n - 1:05d}.npy): not a file funcbp wrote"
            )
    for i in range(n):
        if f"leaf_{i:05d}.npy" not in infos:
            raise CheckpointError(f"checkpoint: {path} is corrupt: leaf {i} is missing")


def _read_leaf(zf, info, path: Path, i: int, t) -> np.ndarray:
    want_shape, want_dtype = tuple(t.shape), np.dtype(t.dtype)

    def matches_template(shape, dtype):
        if shape == want_shape and dtype == want_dtype:
            return None
        return f"is stored as {dtype}{shape} but the model expects {want_dtype}{want_shape}"

    limit = math.prod(want_shape) * want_dtype.itemsize + HEADER_LIMIT
    return _read_member(zf, info, path, f"leaf {i}", limit, matches_template)


def restore(
    path: str | os.PathLike,
    template: Any,
    *,
    validate_extra: Callable[[dict], Any] | None = None,
) -> tuple[Any, dict]:
    """Load ``path`` into the structure of ``template``; returns ``(tree, extra)``.

    ``template``: a pytree of arrays (or of `jax.ShapeDtypeStruct`, e.g. `jax.eval_shape`'s
    output): only its structure, shapes and dtypes are used. ``validate_extra(extra)`` (e.g.
    `validate_training_extra`) may raise `CheckpointError` (or ValueError/TypeError) before any
    array is read. Raises `CheckpointError` if the file is missing, corrupt or malformed, or if
    its tree structure, leaf shapes or dtypes (declared or stored) differ from ``template``'s.
    """
    path = Path(path)
    t_leaves, t_meta = _describe_tree(template)
    zf, infos = _open(path)
    with zf:
        meta = _read_meta(zf, infos, path)
        _check_against_template(path, meta, t_leaves, t_meta)
        _check_entries(path, infos, len(t_leaves))
        if validate_extra is not None:
            try:
                validate_extra(meta["extra"])
            except CheckpointError as e:
                raise CheckpointError(f"checkpoint: {path}: {e}") from None
            except (ValueError, TypeError) as e:
                raise CheckpointError(f"checkpoint: {path}: {e}") from e
        leaves = [
            _read_leaf(zf, infos[f"leaf_{i:05d}.npy"], path, i, t) for i, t in enumerate(t_leaves)
        ]
    treedef = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(treedef, leaves), meta["extra"]
