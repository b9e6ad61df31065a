"""Byte-level text data: the default corpus (the standard library's own source, tests and
site-packages left out, split by a hash of each file's path), a user's folder or file,
windows, and the zlib/xz baselines."""

from __future__ import annotations

import functools
import hashlib
import zlib

import numpy as np
import pytest

from funcbp.data import text


@functools.cache
def _stdlib():
    return text.load_corpus()


def test_default_corpus_is_the_stdlib_without_tests():
    root = text.stdlib_root()
    files = text.corpus_files(root, python_only=True)
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel) and all(r.endswith(".py") for r in rel)
    assert not any({"test", "tests", "site-packages"} & set(r.split("/")) for r in rel)
    assert "os.py" in rel and "json/decoder.py" in rel
    corpus = _stdlib()
    held = [r for r in rel if int(hashlib.sha1(r.encode()).hexdigest(), 16) % 20 == 0]
    assert corpus.n_valid_files == len(held) and corpus.n_train_files == len(rel) - len(held)
    assert 0.02 < len(held) / len(rel) < 0.08  # about one file in 20
    total = sum(p.stat().st_size for p in files)
    assert len(corpus.train) + len(corpus.valid) == total
    assert corpus.valid.dtype == np.uint8


def test_a_users_folder_and_file(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i:02d}.txt").write_text(f"file {i}\n" * 3)
    for hidden in (".git/x", "__pycache__/f.pyc", ".env"):
        (tmp_path / hidden).parent.mkdir(exist_ok=True)
        (tmp_path / hidden).write_bytes(b"\x00" * 10)
    corpus = text.load_corpus(tmp_path)
    assert corpus.name == tmp_path.name and corpus.n_train_files + corpus.n_valid_files == 40
    assert bytes(corpus.train[:7]) in {b"file 0\n", b"file 1\n", b"file 2\n"}
    one = tmp_path / "one.txt"
    one.write_text("abcdefghij" * 10)
    single = text.load_corpus(one)
    assert (len(single.train), len(single.valid)) == (95, 5)  # the last 1/20 of its bytes
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        text.load_corpus(tmp_path / "missing")


def test_windows_shift_by_one_and_random_windows_are_seeded():
    stream = np.arange(50, dtype=np.uint8)
    x, y = text.windows(stream, 8)
    assert x.shape == y.shape == (6, 8) and x.dtype == np.int32
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(x[1], np.arange(8, 16))
    a = text.random_windows(stream, 8, 5, np.random.default_rng(0))
    b = text.random_windows(stream, 8, 5, np.random.default_rng(0))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], a[0] + 1)
    assert a[0].max() <= 49
    with pytest.raises(ValueError, match="make no window"):
        text.windows(stream[:5], 8)


def test_baselines_are_zlib_and_xz_bits_per_byte():
    corpus = _stdlib()
    base = text.compressed_bits_per_byte(corpus.valid)
    raw = corpus.valid.tobytes()
    assert base["zlib_9"] == pytest.approx(8 * len(zlib.compress(raw, 9)) / len(raw))
    assert 1.2 < base["xz_9e"] < base["zlib_9"] < 2.5
    noise = np.random.default_rng(0).integers(0, 256, 4096).astype(np.uint8)
    assert text.compressed_bits_per_byte(noise)["zlib_9"] > 7.9


def test_encode_decode_round_trip():
    ids = text.encode("def fib(n): # π")
    assert ids.dtype == np.int32 and len(ids) == 16  # π is two bytes
    assert text.decode(ids) == "def fib(n): # π"
    assert text.decode([0xFF]) == "\ufffd"
