"""Run folders that cannot be lost or corrupted.

A run folder holds ``run.json`` (what was run), ``checkpoint.npz``, ``metrics.json`` and
``curves.png``. `claim` is the only way in: it refuses a path that is a file or not writable,
refuses to overwrite another run unless asked (``resume`` continues it, ``force`` replaces it),
refuses ``resume`` with a different config (naming every difference), and locks the folder for
the life of the process so a second run on the same folder fails at once instead of silently
interleaving its files. Every JSON file is written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["RUN_NAME", "FolderError", "check_writable", "claim", "read_run", "write_json"]

RUN_NAME = "run.json"
OUTPUTS = (RUN_NAME, "checkpoint.npz", "metrics.json", "curves.png")
LOCK_NAME = ".lock"


class FolderError(ValueError):
    """A run folder cannot be used as asked; the message says why and what to do."""


def check_writable(out: Path) -> None:
    """A clear error, before any work, when ``out`` (or the folder it would be made in) is a
    file or cannot be written."""
    if out.exists() and not out.is_dir():
        raise FolderError(f"--out {out} is a file, not a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise FolderError(f"--out {out}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FolderError(f"--out {out}: {probe} is not writable")


def write_json(path: Path, value: Any) -> Path:
    """Write ``value`` as indented JSON atomically (a reader sees the old file or the new)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_run(out: Path) -> dict:
    """The ``run.json`` of a run folder, or a `FolderError` saying why it cannot be read."""
    path = out / RUN_NAME
    if not path.is_file():
        raise FolderError(f"no {RUN_NAME} in {out} (expected the folder of a `funcbp train` run)")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FolderError(f"{path} is not a readable run record ({e})") from None
    if not isinstance(record, dict) or not str(record.get("format", "")).startswith("funcbp-run"):
        raise FolderError(f"{path} is not a funcbp run record (no 'format': 'funcbp-run-…')")
    return record


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _lock(out: Path):
    """An exclusive, non-blocking lock on ``out/.lock``, held until the process ends."""
    f = open(out / LOCK_NAME, "a+")  # noqa: SIM115  (kept open: the lock lives with it)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise FolderError(
            f"--out {out} is in use by another funcbp run (locked); wait for it or choose "
            f"another folder"
        ) from None
    return f


def claim(out: Path, record: dict, *, resume: bool, force: bool, compared: tuple[str, ...]):
    """Make ``out`` this run's folder and write ``record`` as its ``run.json``; returns the
    lock (keep it while the run lasts).

    Refuses (`FolderError`): a folder holding another run without ``resume``/``force``;
    ``resume`` when the saved record differs in any of the ``compared`` sections (every
    difference named). ``force`` deletes the previous run's outputs first.
    """
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        existing = [name for name in OUTPUTS if (out / name).exists()]
        if resume and (out / RUN_NAME).exists():
            saved = read_run(out)
            diffs = _differences(
                {k: saved.get(k) for k in compared}, {k: record.get(k) for k in compared}
            )
            if diffs:
                raise FolderError(
                    f"--resume with a different config than {out / RUN_NAME}: " + "; ".join(diffs)
                )
        elif existing and not resume:
            if not force:
                raise FolderError(
                    f"--out {out} already holds a run ({', '.join(existing)}); pass --resume to "
                    f"continue it or --force to replace it"
                )
            for name in existing:
                (out / name).unlink()
        write_json(out / RUN_NAME, record)
    except BaseException:
        lock.close()
        raise
    return lock
