"""Real text with nothing downloaded: byte-level language-model data (vocabulary 256).

Default corpus: the Python standard library's own source, which every machine with Python has
(``sysconfig.get_paths()["stdlib"]``): every ``*.py`` file, sorted by relative path, except
those under a test folder (``test``, ``tests``, ``idle_test``, …) or ``site-packages``. A
user's file or folder (every regular file inside it, recursively, sorted; hidden files and
folders and ``__pycache__`` left out) replaces it with ``path=``.

Split: by file, a file belongs to the validation split when the SHA-1 of its relative path (POSIX
form), read as a number, is divisible by ``valid_every`` (20: one file in 20, ~5%) — stable
across machines and Python versions, independent of how many files there are, and no file is
cut in two. A single file is split by position instead (its last 1/``valid_every`` of bytes).
Each split is the concatenation of its files' bytes in sorted order. Here (CPython 3.11.7) the
default corpus has 734 files, 12.1 MB; 33 files, 0.58 MB are held out, on which zlib -9 gives
1.96 and xz -9e 1.66 bits per byte. Which files are drawn matters: other hashes of the same
paths gave 0.3-1.2 MB with zlib 1.76-2.04 bits per byte, so compare a model with the baselines
of its own validation bytes (the task reports both).

Examples: windows of T + 1 consecutive bytes of a split, ``x = w[:-1]``, ``y = w[1:]`` (uint8
values as int32 ids): `windows` (non-overlapping, every byte once) and `random_windows` (at
random offsets, for a fresh draw every epoch).

Baselines (`compressed_bits_per_byte`): the same validation bytes compressed by zlib level 9 and
by xz (LZMA) preset 9 | extreme, in bits per byte — what the model's validation bits per byte
(mean cross-entropy / ln 2) is compared with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import lzma
import sysconfig
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "TEST_FOLDERS",
    "TextCorpus",
    "compressed_bits_per_byte",
    "corpus_files",
    "decode",
    "encode",
    "load_corpus",
    "random_windows",
    "stdlib_root",
    "windows",
]

VOCAB = 256
TEST_FOLDERS = frozenset({"test", "tests", "idle_test", "site-packages"})
"""Folders whose files the default corpus leaves out (tests are large, repetitive data)."""


def stdlib_root() -> Path:
    """The standard library's folder of this Python."""
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: Path, *, python_only: bool) -> list[Path]:
    """Regular files under ``root`` sorted by relative path, hidden ones (a part starting
    with ".") and ``__pycache__`` left out (and, when ``python_only``, ``*.py`` outside
    `TEST_FOLDERS` only); ``[root]`` for a file."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"text: {root} is neither a file nor a folder")
    pattern = "*.py" if python_only else "*"
    skip = lambda parts: (
        any(s.startswith(".") or s == "__pycache__" for s in parts)
        or (python_only and bool(TEST_FOLDERS & set(parts)))
    )
    files = [p for p in root.rglob(pattern) if p.is_file() and not skip(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def in_validation(relative: str, every: int) -> bool:
    """Whether the file at POSIX path ``relative`` is held out: the SHA-1 of the path, read as
    a number, is divisible by ``every``."""
    return int(hashlib.sha1(relative.encode()).hexdigest(), 16) % every == 0


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class TextCorpus:
    """The bytes of a corpus split in two: ``train`` and ``valid`` (uint8 arrays), the corpus's
    ``name``, and how many files each split holds."""

    name: str
    train: np.ndarray
    valid: np.ndarray
    n_train_files: int
    n_valid_files: int

    def __repr__(self) -> str:
        return (f"TextCorpus({self.name}: {len(self.train)} train bytes in "
                f"{self.n_train_files} files, {len(self.valid)} validation bytes in "
                f"{self.n_valid_files})")  # fmt: skip


def _join(files) -> np.ndarray:
    return np.frombuffer(b"".join(p.read_bytes() for p in files), np.uint8)


def load_corpus(path: str | Path | None = None, *, valid_every: int = 20) -> TextCorpus:
    """The default corpus (``path=None``: the standard library's ``*.py``) or a user's file or
    folder, split into train and validation bytes (see the module)."""
    if isinstance(valid_every, bool) or not isinstance(valid_every, int) or valid_every < 2:
        raise ValueError(f"text: valid_every must be an int >= 2, got {valid_every!r}")
    root = stdlib_root() if path is None else Path(path)
    files = corpus_files(root, python_only=path is None)
    name = "python-stdlib" if path is None else root.name
    if len(files) == 1:
        data = _join(files)
        cut = len(data) - len(data) // valid_every
        corpus = TextCorpus(name, data[:cut], data[cut:], 1, 1)
    else:
        rel = [p.relative_to(root).as_posix() for p in files]
        valid = [in_validation(r, valid_every) for r in rel]
        train_files = [p for p, v in zip(files, valid, strict=True) if not v]
        valid_files = [p for p, v in zip(files, valid, strict=True) if v]
        corpus = TextCorpus(name, _join(train_files), _join(valid_files), len(train_files),
                            len(valid_files))  # fmt: skip
    if len(corpus.train) < 2 or len(corpus.valid) < 2:
        raise ValueError(f"text: {root} gives too little text to split ({corpus!r})")
    return corpus


def windows(stream: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of ``length`` + 1 bytes: x, y (N, length) int32, y = x shifted
    by one; N = (len − 1) // length (the tail that fills no window is dropped)."""
    n = (len(stream) - 1) // length
    if n < 1:
        raise ValueError(f"text: {len(stream)} bytes make no window of {length} + 1")
    x = stream[: n * length].reshape(n, length)
    y = stream[1 : n * length + 1].reshape(n, length)
    return x.astype(np.int32), y.astype(np.int32)


def random_windows(stream: np.ndarray, length: int, count: int, rng: np.random.Generator):
    """``count`` windows of ``length`` + 1 bytes at uniform random offsets: x, y (count, length)
    int32."""
    if len(stream) < length + 1:
        raise ValueError(f"text: {len(stream)} bytes make no window of {length} + 1")
    starts = rng.integers(0, len(stream) - length, size=count)  # (count,)
    idx = starts[:, None] + np.arange(length + 1)[None, :]  # (count, length + 1)
    w = stream[idx].astype(np.int32)
    return w[:, :-1], w[:, 1:]


def compressed_bits_per_byte(data: np.ndarray) -> dict[str, float]:
    """``{"zlib_9": …, "xz_9e": …}``: 8 · compressed size / size, zlib level 9 and xz preset
    9 | extreme (container overhead included, as a file on disk would carry it)."""
    raw = np.asarray(data, np.uint8).tobytes()
    zlib_size = len(zlib.compress(raw, 9))
    xz_size = len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
    return {"zlib_9": 8 * zlib_size / len(raw), "xz_9e": 8 * xz_size / len(raw)}


def encode(text: str) -> np.ndarray:
    """A string -> its UTF-8 bytes as int32 ids (N,)."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode(ids) -> str:
    """Byte ids -> text (invalid UTF-8 sequences shown as U+FFFD)."""
    return bytes(np.asarray(ids, np.uint8).tolist()).decode("utf-8", errors="replace")
