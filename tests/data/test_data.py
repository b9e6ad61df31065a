"""funcbp.data: bundled digits, validated .npz user data, mini-batches.

Numbers are checked against independent NumPy computations (sklearn's raw digits, train
statistics recomputed here), never against values the module printed.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.datasets import load_digits as sk_load_digits

from funcbp import data
from funcbp.data import Dataset, batches, load, load_digits, load_npz, num_batches, save_npz

RAW_X, RAW_Y = sk_load_digits(return_X_y=True)


def _sorted_rows(x):
    x = np.asarray(x).reshape(len(x), -1)
    return x[np.lexsort(x.T[::-1])]


def _train_stats(x_train):
    """Independent train statistics: per-feature mean, one global std (constant data -> 1)."""
    x = np.asarray(x_train, np.float64)
    mean = x.mean(0)
    scale = np.sqrt(((x - mean) ** 2).mean())
    return mean, np.full_like(mean, scale if scale > 1e-6 * np.abs(x).max() else 1.0)


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits_shapes_dtypes_and_partition():
    d = load_digits(standardize=False)
    assert isinstance(d, Dataset) and d.name == "digits" and d.n_classes == 10
    assert d.x_train.dtype == np.float32 and d.x_test.dtype == np.float32
    assert d.y_train.dtype == np.int32 and d.y_test.dtype == np.int32
    assert d.input_shape == (64,) and d.x_train.shape[1:] == (64,)
    assert d.n_test == round(0.2 * 1797) and d.n_train + d.n_test == 1797
    assert d.mean is None and d.std is None
    # train + test is exactly sklearn's data (each example once), labels travel with their rows
    both = np.concatenate([d.x_train, d.x_test])
    labels = np.concatenate([d.y_train, d.y_test])
    got = np.concatenate([both, labels[:, None]], 1)
    want = np.concatenate([RAW_X, RAW_Y[:, None]], 1)
    np.testing.assert_array_equal(_sorted_rows(got), _sorted_rows(want))


@given(seed=st.integers(0, 2**31 - 1), frac=st.floats(0.05, 0.6))
def test_digits_split_is_stratified(seed, frac):
    d = load_digits(seed=seed, test_fraction=frac, standardize=False)
    n = 1797
    assert d.n_test == math.floor(frac * n + 0.5)
    overall = np.bincount(RAW_Y, minlength=10)
    test = np.bincount(d.y_test, minlength=10)
    # each class's count in test is within one example of its share overall
    assert np.all(np.abs(test - overall * d.n_test / n) <= 1), (test, overall * d.n_test / n)
    np.testing.assert_array_equal(test + np.bincount(d.y_train, minlength=10), overall)


def test_digits_deterministic_by_seed_and_seeds_differ():
    a, b, c = load_digits(seed=3), load_digits(seed=3), load_digits(seed=4)
    for k in data.KEYS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.y_test, c.y_test) or not np.array_equal(a.x_test, c.x_test)
    assert a.x_train is not b.x_train  # fresh arrays, not a shared cache
    a.x_train[0, 0] = 123.0  # and mutating one result leaves the next untouched
    assert load_digits(seed=3).x_train[0, 0] != 123.0


def test_digits_standardised_with_train_statistics_only():
    raw = load_digits(seed=1, standardize=False)
    d = load_digits(seed=1)
    mean, std = _train_stats(raw.x_train)
    assert np.all(std == std.flat[0]) and std.flat[0] > 1.0  # one global scale for all pixels
    np.testing.assert_allclose(d.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(d.std, std, rtol=1e-6)
    np.testing.assert_allclose(d.x_train, (raw.x_train - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.x_test, (raw.x_test - mean) / std, rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(d.x_train.mean(0)) < 1e-5)
    assert np.abs(d.x_test.mean(0)).max() > 1e-3  # test statistics were not used
    assert np.all(np.isfinite(d.x_train)) and np.all(np.isfinite(d.x_test))
    np.testing.assert_allclose(d.standardize(raw.x_test), d.x_test, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(d.standardize(raw.x_test[0]), d.x_test[0], rtol=1e-6, atol=1e-6)


def test_digits_image_mode():
    flat, img = load_digits(seed=2), load_digits(seed=2, image=True)
    assert img.x_train.shape == (flat.n_train, 8, 8, 1) and img.input_shape == (8, 8, 1)
    assert img.mean.shape == (8, 8, 1) and img.std.shape == (8, 8, 1)
    np.testing.assert_allclose(img.x_test.reshape(img.n_test, 64), flat.x_test, rtol=1e-6)
    # NHWC: row-major 8x8 images, as sklearn's own `images`
    raw = load_digits(seed=2, image=True, standardize=False)
    assert any(np.array_equal(raw.x_test[0, :, :, 0], im) for im in sk_load_digits().images)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"test_fraction": 0.0}, ValueError, "test_fraction"),
        ({"test_fraction": 1.0}, ValueError, "test_fraction"),
        ({"test_fraction": 1e-5}, ValueError, "both splits"),
        ({"seed": -1}, TypeError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_digits_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        load_digits(**kwargs)


# --------------------------------------------------------------------------------------------
# npz: round trips and accepted layouts
# --------------------------------------------------------------------------------------------


def _write(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _mnist_like(rng, n_train=7, n_test=5, shape=(4, 3), dtype=np.uint8, classes=4):
    return dict(
        x_train=rng.integers(0, 256, (n_train, *shape)).astype(dtype),
        y_train=rng.integers(0, classes, n_train).astype(np.uint8),
        x_test=rng.integers(0, 256, (n_test, *shape)).astype(dtype),
        y_test=rng.integers(0, classes, n_test).astype(np.uint8),
    )


@pytest.mark.parametrize("image", [False, True])
def test_npz_round_trip(tmp_path, image):
    d = load_digits(seed=5, standardize=False, image=image)
    path = save_npz(tmp_path / "digits_copy.npz", d)
    assert [p.name for p in tmp_path.iterdir()] == ["digits_copy.npz"]  # no temp files left
    e = load_npz(path, standardize=False)  # image=None keeps the stored layout
    assert e.name == "digits_copy" and e.n_classes == 10 and e.input_shape == d.input_shape
    for k in data.KEYS:
        got, want = getattr(e, k), getattr(d, k)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    f = load(str(path))  # standardised on load, with train statistics
    mean, std = _train_stats(d.x_train)
    np.testing.assert_allclose(f.x_test, (d.x_test - mean) / std, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("image", [None, False, True])
def test_npz_mnist_layout(tmp_path, image):
    rng = np.random.default_rng(0)
    arrays = _mnist_like(rng)
    d = load_npz(_write(tmp_path / "m.npz", **arrays), image=image, standardize=False)
    want_shape = (12,) if image is False else (4, 3, 1)
    assert d.input_shape == want_shape and d.x_train.shape == (7, *want_shape)
    np.testing.assert_array_equal(d.x_train.reshape(7, -1), arrays["x_train"].reshape(7, -1))
    assert d.x_train.dtype == np.float32 and d.y_test.dtype == np.int32
    y = np.concatenate([arrays["y_train"], arrays["y_test"]])
    assert d.n_classes == int(y.max()) + 1
    s = load_npz(tmp_path / "m.npz", image=image)
    mean, std = _train_stats(arrays["x_train"])
    want = (arrays["x_test"] - mean) / std
    np.testing.assert_allclose(s.x_test, want.reshape(s.x_test.shape), rtol=1e-5, atol=1e-5)


def test_npz_accepts_nhwc_bool_whole_float_labels_and_extra_keys(tmp_path):
    rng = np.random.default_rng(1)
    arrays = dict(
        x_train=rng.random((6, 3, 2, 2)) > 0.5,
        y_train=np.array([0.0, 1.0, 2.0, 1.0, 0.0, 5.0]),
        x_test=rng.random((2, 3, 2, 2)) > 0.5,
        y_test=np.array([1, 2], np.float16),
        notes=np.array(["ignored"]),
    )
    d = load_npz(_write(tmp_path / "b.npz", **arrays), standardize=False)
    assert d.input_shape == (3, 2, 2) and d.n_classes == 6
    np.testing.assert_array_equal(d.y_train, [0, 1, 2, 1, 0, 5])
    np.testing.assert_array_equal(d.x_train, arrays["x_train"].astype(np.float32))


# --------------------------------------------------------------------------------------------
# npz: every bad input gives its own clear error, naming the file and the key
# --------------------------------------------------------------------------------------------


def _ok(rng=None):
    rng = rng or np.random.default_rng(7)
    return dict(
        x_train=rng.normal(size=(5, 3)),
        y_train=np.array([0, 1, 2, 1, 0]),
        x_test=rng.normal(size=(2, 3)),
        y_test=np.array([1, 2]),
    )


def _with(**changes):
    arrays = _ok()
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    return arrays


def _ragged():
    a = np.empty(2, dtype=object)
    a[0], a[1] = [1.0, 2.0], [3.0]
    return a


BAD = {
    "missing key": (_with(y_test=None), ValueError, r"lacks key\(s\) \['y_test'\]"),
    "key case": (
        {("X_train" if k == "x_train" else k): v for k, v in _ok().items()},
        ValueError,
        "case differs.*'X_train' for 'x_train'",
    ),
    "ragged object": (_with(x_train=_ragged()), TypeError, r"\[x_train\].*object array"),
    "object labels": (_with(y_test=np.array([1, "a"], object)), TypeError, r"\[y_test\].*object"),
    "strings": (_with(x_test=np.array([["a"] * 3] * 2)), TypeError, r"\[x_test\].*dtype <U1"),
    "complex": (_with(x_train=np.ones((5, 3), np.complex64)), TypeError, "complex64"),
    "structured": (_with(x_train=np.zeros((5, 3), [("a", "i4")])), TypeError, "not supported"),
    "datetime": (_with(y_train=np.zeros(5, "M8[s]")), TypeError, r"\[y_train\].*datetime64"),
    "bool labels": (_with(y_train=np.ones(5, bool)), TypeError, r"\[y_train\].*bool"),
    "length mismatch": (
        _with(y_train=np.array([0, 1, 2, 1])),
        ValueError,
        "x_train has 5 examples but y_train has 4",
    ),
    "feature mismatch": (_with(x_test=np.zeros((2, 4))), ValueError, r"\(3,\).*\(4,\).*match"),
    "labels 2-D": (_with(y_test=np.eye(3)[[1, 2]]), ValueError, r"\[y_test\].*1-D.*one-hot"),
    "labels 0-D": (_with(y_test=np.array(1)), ValueError, r"\[y_test\].*1-D"),
    "negative labels": (_with(y_train=np.array([0, 1, -2, 1, 0])), ValueError, ">= 0, got -2"),
    "fractional labels": (
        _with(y_train=np.array([0.0, 1.5, 2.0, 1.0, 0.0])),
        ValueError,
        r"whole numbers, got 1\.5 at index 1",
    ),
    "nan labels": (_with(y_test=np.array([1.0, np.nan])), ValueError, "whole numbers"),
    "huge labels": (_with(y_test=np.array([1, 2**40])), ValueError, "too large"),
    "nan in x": (
        _with(x_train=np.where(np.eye(5, 3) > 0, np.nan, 1.0)),
        ValueError,
        r"\[x_train\].*finite.*nan at index \(0, 0\)",
    ),
    "inf in x": (_with(x_test=np.full((2, 3), -np.inf)), ValueError, r"\[x_test\].*6 such"),
    "beyond float32": (_with(x_test=np.full((2, 3), 1e300)), ValueError, "fit float32"),
    "empty train": (
        _with(x_train=np.zeros((0, 3)), y_train=np.zeros(0, int)),
        ValueError,
        "train split is empty",
    ),
    "x 1-D": (_with(x_test=np.zeros(2)), ValueError, r"\[x_test\].*\(n, features"),
    "no features": (
        _with(x_train=np.zeros((5, 0)), x_test=np.zeros((2, 0))),
        ValueError,
        "at least one feature",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_npz_bad_contents(tmp_path, case):
    arrays, err, match = BAD[case]
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(err, match=match) as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_npz_image_true_rejects_flat_data(tmp_path):
    path = _write(tmp_path / "flat.npz", **_ok())
    with pytest.raises(ValueError, match=r"image=True needs x of shape \(n, H, W\)"):
        load_npz(path, image=True)
    x = np.zeros((5, 1, 2, 2, 1))
    path = _write(tmp_path / "5d.npz", **_with(x_train=x, x_test=x[:2]))
    with pytest.raises(ValueError, match="NHWC"):
        load_npz(path, image=True)
    assert load_npz(path).input_shape == (4,)  # image=None flattens what is not 3-D/4-D


def test_npz_overflow_after_standardisation(tmp_path):
    x_train = np.array([[0.0], [1e-30], [0.0], [1e-30], [0.0]], np.float32)
    path = _write(tmp_path / "o.npz", **_with(x_train=x_train, x_test=np.full((2, 1), 1e30)))
    with pytest.raises(ValueError, match="x_test does not fit float32 after standardisation"):
        load_npz(path)
    assert load_npz(path, standardize=False).x_test[0, 0] == np.float32(1e30)


def test_npz_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_npz(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="is a directory"):
        load_npz(tmp_path)
    with pytest.raises(TypeError, match="path must be a str"):
        load_npz(3)
    with pytest.raises(TypeError, match="image must be"):
        load_npz(tmp_path / "nope.npz", image="yes")
    text = tmp_path / "text.npz"
    text.write_text("x_train,y_train\n1,2\n")
    with pytest.raises(ValueError, match="text.npz is not an .npz"):
        load_npz(text)
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        load_npz(npy)


def test_npz_corrupt_files(tmp_path):
    good = _write(tmp_path / "good.npz", **_ok())
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        load_npz(truncated)
    # a flipped byte inside x_test's data: the zip CRC check fails
    flipped = bytearray(raw)
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("x_test.npy")
    at = info.header_offset + 30 + len(info.filename) + info.file_size - 3
    flipped[at] ^= 0xFF
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"flipped.npz \[x_test\]: corrupt or unreadable"):
        load_npz(bad)
    # a header that claims more data than the member holds is caught before allocating it
    liar = tmp_path / "liar.npz"
    with zipfile.ZipFile(liar, "w") as zf:
        for k, v in _ok().items():
            with zf.open(f"{k}.npy", "w") as f:
                if k == "x_train":
                    np.lib.format.write_array_header_1_0(
                        f, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 3)}
                    )
                    f.write(b"\0" * 16)
                else:
                    np.save(f, v)
    with pytest.raises(ValueError, match=r"\[x_train\]: header says shape \(1000000000000, 3\)"):
        load_npz(liar)
    garbage_header = tmp_path / "garbage.npz"
    with zipfile.ZipFile(garbage_header, "w") as zf:
        for k, v in _ok().items():
            with zf.open(f"{k}.npy", "w") as f:
                f.write(b"not an npy header" if k == "y_train" else b"")
                if k != "y_train":
                    np.save(f, v)
    with pytest.raises(ValueError, match=r"\[y_train\]: corrupt or unreadable"):
        load_npz(garbage_header)


# --------------------------------------------------------------------------------------------
# npz: fuzz. Malformed contents load as a valid Dataset or raise ValueError/TypeError, nothing else
# --------------------------------------------------------------------------------------------

ODD_DTYPES = [
    np.uint8,
    np.int8,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.bool_,
    np.complex128,
    "U2",
    "S2",
    "M8[s]",
    object,
    [("a", "<i4")],
]


@st.composite
def npz_contents(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_train, n_test = draw(st.integers(0, 5)), draw(st.integers(0, 4))
    feat = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    classes = draw(st.integers(1, 4))
    arrays = dict(
        x_train=rng.normal(size=(n_train, *feat)),
        y_train=rng.integers(0, classes, n_train),
        x_test=rng.normal(size=(n_test, *feat)),
        y_test=rng.integers(0, classes, n_test),
    )
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(arrays) or ["x_train"]))
        how = draw(
            st.sampled_from(
                ["drop", "rename", "extra", "dtype", "shape", "nan", "neg", "frac", "ragged"]
            )
        )
        a = arrays.get(key, np.zeros(2))
        numeric = a.dtype.kind in "biuf"
        if how == "drop":
            arrays.pop(key, None)
        elif how == "rename":
            arrays[key.upper()] = arrays.pop(key, a)
        elif how == "extra":
            arrays["extra"] = a
        elif how == "dtype":
            dtype = np.dtype(draw(st.sampled_from(ODD_DTYPES)))
            if dtype.kind in "biuf" and numeric:
                with np.errstate(all="ignore"):
                    arrays[key] = (a * 3).astype(dtype)
            else:
                arrays[key] = np.zeros(a.shape, dtype)
        elif how == "shape":
            shape = tuple(draw(st.lists(st.integers(0, 3), max_size=4)))
            arrays[key] = rng.integers(-1, 4, shape) * draw(st.sampled_from([1, 1.0, 0.5]))
        elif how == "nan" and a.size and a.dtype.kind == "f":
            a = a.copy()
            a.flat[rng.integers(a.size)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
            arrays[key] = a
        elif how == "neg" and a.size and numeric:
            arrays[key] = a - 3
        elif how == "frac" and a.size and numeric:
            arrays[key] = a + 0.25
        elif how == "ragged":
            arrays[key] = _ragged()
    corrupt = draw(st.sampled_from([None, None, None, "truncate", "flip"]))
    return arrays, corrupt, draw(st.integers(0, 10**6))


@given(
    contents=npz_contents(),
    standardize=st.booleans(),
    image=st.sampled_from([None, False, True]),
)
def test_npz_fuzz(tmp_path_factory, contents, standardize, image):
    arrays, corrupt, where = contents
    path = tmp_path_factory.mktemp("fuzz") / "f.npz"
    np.savez(path, **arrays)
    if corrupt:
        raw = bytearray(path.read_bytes())
        i = where % len(raw)
        if corrupt == "truncate":
            raw = raw[:i]
        else:
            raw[i] ^= 0x5A
        path.write_bytes(bytes(raw))
    try:
        d = load_npz(path, standardize=standardize, image=image)
    except (ValueError, TypeError) as e:
        assert str(path) in str(e), e  # every error names the file
        return
    assert isinstance(d, Dataset)
    for split in ("train", "test"):
        x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        assert x.dtype == np.float32 and y.dtype == np.int32 and y.ndim == 1
        assert len(x) == len(y) > 0 and x.shape[1:] == d.input_shape
        assert np.all(np.isfinite(x)) and y.min() >= 0 and y.max() < d.n_classes
        assert len(x) == len(arrays[f"x_{split}"])
    assert x.ndim in (2, 4) and (image is None or (x.ndim == 4) == image)
    assert d.n_classes == max(d.y_train.max(), d.y_test.max()) + 1


# --------------------------------------------------------------------------------------------
# load, save_npz, Dataset
# --------------------------------------------------------------------------------------------


def test_load_dispatch(tmp_path):
    assert load("digits", seed=1).n_train == load_digits(seed=1).n_train
    path = save_npz(tmp_path / "d.npz", load_digits(standardize=False))
    assert load(path, standardize=False).n_test == 359
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*'digits' or a path"):
        load("mnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        load(tmp_path / "d.csv")
    with pytest.raises(TypeError):
        load("digits", sed=1)  # typos are not swallowed


def test_save_npz_errors_and_dataset_validation(tmp_path):
    d = load_digits()
    with pytest.raises(ValueError, match="must end in .npz"):
        save_npz(tmp_path / "d.np", d)
    with pytest.raises(TypeError, match="must be a Dataset"):
        save_npz(tmp_path / "d.npz", {"x_train": d.x_train})
    assert not list(tmp_path.iterdir())
    ok = dict(x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    with pytest.raises(TypeError, match="x_train must be a float32"):
        Dataset(**{**ok, "x_train": d.x_train.astype(np.float64)}, n_classes=10, name="t",
                input_shape=(64,))  # fmt: skip
    with pytest.raises(ValueError, match="labels must lie in"):
        Dataset(**ok, n_classes=5, name="t", input_shape=(64,))
    with pytest.raises(ValueError, match="do not match input_shape"):
        Dataset(**ok, n_classes=10, name="t", input_shape=(8, 8))
    with pytest.raises(ValueError, match="standardize expects"):
        d.standardize(np.zeros((3, 63)))
    assert "digits" in repr(d) and "(1438, 64)" in repr(d)


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------


@given(
    n=st.integers(1, 40),
    batch_size=st.integers(1, 45),
    seed=st.integers(0, 2**31 - 1),
    drop_last=st.booleans(),
)
def test_batches_cover_each_example_once(n, batch_size, seed, drop_last):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n, dtype=np.int32)
    if drop_last and batch_size > n:
        with pytest.raises(ValueError, match="drop_last=True would drop them all"):
            batches(seed, x, y, batch_size, drop_last=drop_last)
        return
    got = list(batches(seed, x, y, batch_size, drop_last=drop_last))
    assert len(got) == num_batches(n, batch_size, drop_last)
    for xb, yb in got:
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)  # rows and labels stay paired
    sizes = [len(yb) for _, yb in got]
    ids = np.concatenate([yb for _, yb in got])
    assert len(np.unique(ids)) == len(ids)  # nothing twice
    if drop_last:
        assert sizes == [batch_size] * (n // batch_size)
    else:
        np.testing.assert_array_equal(np.sort(ids), y)  # each example exactly once
        assert sizes[:-1] == [batch_size] * (len(sizes) - 1)
    again = list(batches(seed, x, y, batch_size, drop_last=drop_last))
    np.testing.assert_array_equal(np.concatenate([b for _, b in again]), ids)


def test_batches_seeds_keys_and_generators():
    x, y = np.zeros((50, 1), np.float32), np.arange(50)
    order = lambda k: np.concatenate([b for _, b in batches(k, x, y, 10)])
    assert not np.array_equal(order(0), order(1))
    k = jax.random.key(42)
    np.testing.assert_array_equal(order(k), order(jax.random.key(42)))
    assert not np.array_equal(order(k), order(jax.random.fold_in(k, 1)))
    np.testing.assert_array_equal(order(jax.random.PRNGKey(3)), order(jax.random.PRNGKey(3)))
    rng = np.random.default_rng(0)
    assert not np.array_equal(order(rng), order(rng))  # a Generator advances: epochs differ
    np.testing.assert_array_equal(order(np.random.default_rng(0)), order(np.random.default_rng(0)))


def test_batches_and_num_batches_errors():
    x, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(ValueError, match="batch_size=11 exceeds the 10 examples"):
        batches(0, x, y, 11)  # raised at the call, not at the first next()
    assert len(list(batches(0, x, y, 11, drop_last=False))) == 1
    with pytest.raises(ValueError, match="same leading length"):
        batches(0, x, y[:9], 2)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        batches(0, x, y, 0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        batches(0, x, y, True)
    with pytest.raises(TypeError, match="key_or_seed"):
        batches("seed", x, y, 2)
    with pytest.raises(TypeError, match="key_or_seed"):
        batches(jax.random.split(jax.random.key(0), 3), x, y, 2)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        batches(-1, x, y, 2)
    assert num_batches(10, 3) == 3 and num_batches(10, 3, drop_last=False) == 4
    assert num_batches(0, 3, drop_last=False) == 0
    with pytest.raises(ValueError, match="n >= 0"):
        num_batches(-1, 3, False)
