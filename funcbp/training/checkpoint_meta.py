"""What a checkpoint's JSON metadata must look like, checked before any array is read.

Two layers: `check_meta` (the format every `funcbp.checkpoint.save` writes: format, treedef,
shapes, dtypes, extra) and `validate_training_extra` (the ``extra`` that `funcbp.fit.fit` saves:
epoch, history, seed), which a caller hands to ``restore(..., validate_extra=...)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

__all__ = ["CheckpointError", "check_meta", "validate_training_extra", "HISTORY_KEYS"]

# the per-epoch lists of fit's history, then the per-step list
PER_EPOCH = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")
HISTORY_KEYS = (*PER_EPOCH, "step_loss")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated or does not match the model."""


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_shapes_dtypes(shapes, dtypes) -> str | None:
    if not isinstance(shapes, list) or not all(
        isinstance(s, list) and all(_is_int(d) and d >= 0 for d in s) for s in shapes
    ):
        return (
            f"metadata 'shapes' must be a list of shapes (lists of ints >= 0), got {shapes!r:.200}"
        )
    if not isinstance(dtypes, list) or not all(isinstance(d, str) for d in dtypes):
        return f"metadata 'dtypes' must be a list of dtype strings, got {dtypes!r:.200}"
    for d in dtypes:
        try:
            kind = np.dtype(d).kind
        except TypeError:
            return f"metadata dtype {d!r} is not a dtype"
        if kind not in "biufc":
            return f"metadata dtype {d!r} is not a numeric dtype"
    if len(shapes) != len(dtypes):
        return f"metadata is inconsistent: {len(shapes)} shapes but {len(dtypes)} dtypes"
    return None


def check_meta(meta, format_name: str) -> str | None:
    """The first problem of a checkpoint's metadata (a message), or None when well formed."""
    if not isinstance(meta, dict):
        return f"metadata must be a JSON object, got {type(meta).__name__}"
    if meta.get("format") != format_name:
        return f"has format {meta.get('format')!r}, expected {format_name!r}"
    for key in ("treedef", "shapes", "dtypes", "extra"):
        if key not in meta:
            return f"metadata lacks {key!r} (has {sorted(meta)})"
    if not isinstance(meta["treedef"], str):
        return f"metadata 'treedef' must be a str, got {type(meta['treedef']).__name__}"
    if not isinstance(meta["extra"], dict):
        return f"metadata 'extra' must be a dict, got {type(meta['extra']).__name__}"
    return _check_shapes_dtypes(meta["shapes"], meta["dtypes"])


def _check_history(history: dict, epoch: int, keys: Sequence[str]) -> None:
    for key in keys:
        if key not in history:
            raise CheckpointError(f"training state: history lacks {key!r} (has {sorted(history)})")
        values = history[key]
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            raise CheckpointError(
                f"training state: history[{key!r}] must be a list of numbers, got {values!r:.120}"
            )
    epochs_seen = history["epoch"]
    if epoch != len(epochs_seen):
        raise CheckpointError(
            f"training state: the checkpoint says epoch {epoch} but its history has "
            f"{len(epochs_seen)} epochs"
        )
    if epochs_seen != list(range(1, epoch + 1)):
        raise CheckpointError(
            f"training state: history['epoch'] must be {list(range(1, epoch + 1))!r:.80}, got "
            f"{epochs_seen!r:.80}"
        )
    for key in (k for k in keys if k in PER_EPOCH):
        if len(history[key]) != epoch:
            raise CheckpointError(
                f"training state: history[{key!r}] has {len(history[key])} entries for "
                f"{epoch} epochs"
            )


def validate_training_extra(
    extra,
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    history_keys: Sequence[str] = HISTORY_KEYS,
) -> dict:
    """Check the ``extra`` a training checkpoint holds; returns it, or raises `CheckpointError`.

    ``extra``: ``{"epoch": e, "history": {key: list of numbers}, "seed": int (optional)}`` as
    `funcbp.fit.fit` saves it. The epoch must be an int >= 0 equal to the number of epochs in
    the history (whose ``"epoch"`` list is ``[1, …, e]``); with ``epochs``, e <= ``epochs``;
    with ``steps_per_epoch``, the history holds e * ``steps_per_epoch`` step losses.
    """
    if not isinstance(extra, dict):
        raise CheckpointError(f"training state must be a dict, got {type(extra).__name__}")
    for key in ("epoch", "history"):
        if key not in extra:
            raise CheckpointError(f"training state lacks {key!r} (has {sorted(extra)})")
    epoch, history = extra["epoch"], extra["history"]
    if not _is_int(epoch) or epoch < 0:
        raise CheckpointError(f"training state: 'epoch' must be an int >= 0, got {epoch!r}")
    if not isinstance(history, dict):
        raise CheckpointError(f"training state: 'history' must be a dict, got {history!r:.80}")
    if "seed" in extra and not _is_int(extra["seed"]):
        raise CheckpointError(f"training state: 'seed' must be an int, got {extra['seed']!r}")
    _check_history(history, epoch, history_keys)
    if epochs is not None and epoch > epochs:
        raise CheckpointError(
            f"training state: the checkpoint is after epoch {epoch} but the run asks for only "
            f"{epochs} epochs"
        )
    if steps_per_epoch is not None and "step_loss" in history_keys:
        n = len(history["step_loss"])
        if n != epoch * steps_per_epoch:
            raise CheckpointError(
                f"training state: {n} step losses for {epoch} epochs of {steps_per_epoch} steps "
                f"(another batch size or data set?)"
            )
    return extra
