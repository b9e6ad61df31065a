"""Atomic checkpoints of pytrees: write a temporary file, fsync, rename.

A checkpoint is one ``.npz`` file: the leaves of the saved tree as ``leaf_00000``, … and a JSON
``__meta__`` entry (format version, the tree structure, each leaf's shape and dtype, and a
free-form ``extra`` dict such as the epoch and the metrics history). No pickle is involved:
loading runs no code from the file.

``save`` never leaves a partial file under the final name: a crash (even SIGKILL) during a write
leaves the previous checkpoint intact. ``restore`` checks the file against a *template* tree (the
freshly initialised params/optimizer state of the model you are about to train) and raises
`CheckpointError` naming the first mismatch: a corrupt or truncated file, another architecture,
a missing file.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["CheckpointError", "save", "restore", "read_extra", "remove_stale_temporaries"]

FORMAT = "funcbp-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated or does not match the model."""


def _describe_tree(tree) -> tuple[list[np.ndarray], dict]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays = [np.asarray(x) for x in leaves]
    meta = {
        "format": FORMAT,
        "treedef": str(treedef),
        "shapes": [list(a.shape) for a in arrays],
        "dtypes": [a.dtype.str for a in arrays],
    }
    return arrays, meta


def save(path: str | os.PathLike, tree: Any, extra: dict | None = None) -> Path:
    """Write ``tree`` (a pytree of arrays) and JSON-able ``extra`` atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, meta = _describe_tree(tree)
    meta["extra"] = extra or {}
    entries = {f"leaf_{i:05d}": a for i, a in enumerate(arrays)}
    entries["__meta__"] = np.array(json.dumps(meta))
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

    Call it only when no other process is writing this checkpoint (e.g. at the start of a run).
    """
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.exists() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _load(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and CRC-check every entry now (the file is closed on return, even on error)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint: no file at {path}")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            data = {name: npz[name] for name in npz.files}
        meta = json.loads(str(data["__meta__"]))
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as e:
        raise CheckpointError(f"checkpoint: {path} is corrupt or truncated ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint: {path} has format {meta.get('format')!r}, expected {FORMAT!r}"
        )
    return meta, data


def read_extra(path: str | os.PathLike) -> dict:
    """The ``extra`` dict saved with a checkpoint (epoch, history, config)."""
    meta, _ = _load(Path(path))
    return meta["extra"]


def restore(path: str | os.PathLike, template: Any) -> tuple[Any, dict]:
    """Load ``path`` into the structure of ``template``; returns ``(tree, extra)``.

    Raises `CheckpointError` if the file is missing or corrupt, or if its tree structure,
    leaf shapes or dtypes differ from ``template``'s (another architecture or optimizer).
    """
    path = Path(path)
    meta, data = _load(path)
    t_arrays, t_meta = _describe_tree(template)
    if meta["treedef"] != t_meta["treedef"] or len(meta["shapes"]) != len(t_arrays):
        raise CheckpointError(
            f"checkpoint: {path} holds a different structure ({len(meta['shapes'])} arrays) "
            f"than the model being restored ({len(t_arrays)} arrays): another architecture "
            f"or optimizer?\n  file:  {meta['treedef'][:300]}\n  model: {t_meta['treedef'][:300]}"
        )
    leaves = []
    described = zip(meta["shapes"], meta["dtypes"], t_arrays, strict=True)
    for i, (shape, dtype, t) in enumerate(described):
        if tuple(shape) != t.shape or np.dtype(dtype) != t.dtype:
            raise CheckpointError(
                f"checkpoint: {path} leaf {i} is {np.dtype(dtype)}{tuple(shape)} but the model "
                f"expects {t.dtype}{t.shape}: another architecture?"
            )
        leaf = data.get(f"leaf_{i:05d}")
        if leaf is None or leaf.shape != t.shape:
            raise CheckpointError(f"checkpoint: {path} is corrupt: leaf {i} is missing or damaged")
        leaves.append(leaf)
    treedef = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(treedef, leaves), meta["extra"]
