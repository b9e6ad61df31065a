"""Atomic checkpoints: round trip, and clear errors for missing/corrupt/other-architecture files."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcbp import nn
from funcbp.training import checkpoint


def _tree(key, sizes=(5, 3)):
    model = nn.mlp(list(sizes))
    _, params, state = model.init(key, (4,), jnp.float32)
    opt_state = optax.adam(1e-3).init(params)
    return {"params": params, "opt_state": opt_state, "state": state}


def test_round_trip_is_bit_exact(tmp_path, key):
    tree = _tree(key)
    path = checkpoint.save(tmp_path / "c.npz", tree, {"epoch": 3, "history": {"a": [1.5]}})
    restored, extra = checkpoint.restore(path, _tree(jax.random.key(99)))
    assert extra == {"epoch": 3, "history": {"a": [1.5]}}
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(restored), strict=False):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert np.asarray(a).dtype == np.asarray(b).dtype
    assert jax.tree.structure(restored) == jax.tree.structure(tree)
    assert checkpoint.read_extra(path)["epoch"] == 3


def test_no_temporary_files_left_and_overwrite_is_atomic(tmp_path, key):
    path = tmp_path / "c.npz"
    checkpoint.save(path, _tree(key), {"epoch": 1})
    checkpoint.save(path, _tree(key), {"epoch": 2})
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]
    assert checkpoint.read_extra(path)["epoch"] == 2


def test_failed_write_keeps_the_old_checkpoint(tmp_path, key, monkeypatch):
    path = tmp_path / "c.npz"
    checkpoint.save(path, _tree(key), {"epoch": 1})

    def crash(*a, **k):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, _tree(key), {"epoch": 2})
    assert checkpoint.read_extra(path)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_missing_file(tmp_path, key):
    with pytest.raises(checkpoint.CheckpointError, match="no file"):
        checkpoint.restore(tmp_path / "nope.npz", _tree(key))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_corrupt_or_truncated(tmp_path, key, damage):
    path = checkpoint.save(tmp_path / "c.npz", _tree(key), {"epoch": 1})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip at all" * 10)
    else:  # flip bytes inside the stored arrays: the zip CRC check catches it
        mid = len(data) // 3
        path.write_bytes(
            data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :]
        )
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated|structure|leaf"):
        checkpoint.restore(path, _tree(key))


def test_wrong_architecture(tmp_path, key):
    path = checkpoint.save(tmp_path / "c.npz", _tree(key, (5, 3)))
    with pytest.raises(checkpoint.CheckpointError, match="another architecture"):
        checkpoint.restore(path, _tree(key, (6, 3)))  # same structure, other shapes
    with pytest.raises(checkpoint.CheckpointError, match="different structure"):
        checkpoint.restore(path, _tree(key, (5, 5, 3)))  # more layers


def test_not_a_funcbp_checkpoint(tmp_path, key):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.restore(path, _tree(key))


# -- hostile or damaged files (issue 14, items 9-12): clear errors, nothing big is read ---------
def _npy(array=None, *, shape=None, descr="<f8", data=b"") -> bytes:
    """An .npy member: a real array, or a header declaring ``shape``/``descr`` then ``data``."""
    buf = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
        return buf.getvalue()
    header = {"descr": descr, "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _rewrite(path, members: dict[str, bytes], deflated=()):
    """Write ``members`` as a zip at ``path`` (those named in ``deflated`` compressed)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, raw in members.items():
            kind = zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED
            zf.writestr(name, raw, compress_type=kind)


def _meta(path) -> dict:
    return json.loads(str(np.load(io.BytesIO(_members(path)["__meta__.npy"]))))


def _with_meta(path, meta):
    members = _members(path)
    members["__meta__.npy"] = _npy(np.array(json.dumps(meta)))
    _rewrite(path, members)


def _peak_bytes(fn) -> int:
    """Peak traced allocation while running ``fn`` (NumPy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


HUGE = (2**57,)  # 2**60 bytes of float64: no machine can allocate it


def test_leaf_declaring_a_huge_array_is_refused_before_reading(tmp_path, key):
    path = checkpoint.save(tmp_path / "c.npz", _tree(key))
    members = _members(path)
    members["leaf_00000.npy"] = _npy(shape=HUGE, data=b"\0" * 64)
    _rewrite(path, members)
    with pytest.raises(checkpoint.CheckpointError, match=r"leaf 0 .*\(144115188075855872,\)"):
        checkpoint.restore(path, _tree(key))


def test_metadata_declaring_a_huge_array_is_refused(tmp_path, key):
    path = checkpoint.save(tmp_path / "c.npz", _tree(key))
    meta = _meta(path)
    meta["shapes"][0] = list(HUGE)
    _with_meta(path, meta)
    with pytest.raises(checkpoint.CheckpointError, match=r"leaf 0 is int32\(144115188075855872"):
        checkpoint.restore(path, _tree(key))


def test_unknown_huge_entry_is_refused_unread(tmp_path, key):
    path = checkpoint.save(tmp_path / "c.npz", _tree(key))
    members = _members(path)
    members["payload.npy"] = _npy(shape=HUGE, data=b"\0" * 64)
    _rewrite(path, members)
    with pytest.raises(checkpoint.CheckpointError, match=r"unknown entry 'payload.npy'"):
        checkpoint.restore(path, _tree(key))


@pytest.mark.parametrize("member", ["leaf_00000.npy", "__meta__.npy", "payload.npy"])
def test_zip_bomb_is_refused_before_inflating(tmp_path, key, member, monkeypatch):
    """A 64 MiB entry that compresses to ~64 KiB: rejected from the zip's directory alone."""
    monkeypatch.setattr(checkpoint, "META_LIMIT", 2**20)  # so a 64 MiB __meta__ is too big
    path = checkpoint.save(tmp_path / "c.npz", _tree(key))
    members = _members(path)
    big = 2**26
    if member == "__meta__.npy":
        members[member] = _npy(shape=(), descr=f"<U{big // 4}", data=b"\0" * big)
    else:
        members[member] = _npy(shape=(big // 8,), data=b"\0" * big)
    _rewrite(path, members, deflated={member})
    assert path.stat().st_size < big // 100
    del members  # the test's own copy of the bomb must not count in the peak below

    def restore():
        with pytest.raises(checkpoint.CheckpointError, match=r"bytes|compressed|unknown entry"):
            checkpoint.restore(path, _tree(key))

    assert _peak_bytes(restore) < big // 8


def test_compressed_entries_are_refused(tmp_path, key):
    path = checkpoint.save(tmp_path / "c.npz", _tree(key))
    _rewrite(path, _members(path), deflated={"leaf_00001.npy"})
    with pytest.raises(checkpoint.CheckpointError, match=r"leaf_00001.npy.* compressed"):
        checkpoint.restore(path, _tree(key))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("shapes"), r"metadata lacks 'shapes'"),
        (lambda m: m.pop("extra"), r"metadata lacks 'extra'"),
        (lambda m: m.update(extra=[1, 2]), r"'extra' must be a dict, got list"),
        (lambda m: m.update(shapes="(5, 3)"), r"'shapes' must be a list of shapes"),
        (lambda m: m["shapes"].__setitem__(0, [5, -3]), r"'shapes' must be a list of shapes"),
        (lambda m: m["shapes"].__setitem__(0, [5, 3.0]), r"'shapes' must be a list of shapes"),
        (lambda m: m.update(dtypes=[1] * len(m["dtypes"])), r"'dtypes' must be a list of"),
        (lambda m: m["dtypes"].__setitem__(0, "float99"), r"'float99' is not a dtype"),
        (lambda m: m["dtypes"].__setitem__(0, "|O"), r"'\|O' is not a numeric dtype"),
        (lambda m: m.update(treedef=7), r"'treedef' must be a str, got int"),
        (lambda m: m["dtypes"].pop(), r"\d+ shapes but \d+ dtypes"),
        (lambda m: m.update(format=None), r"format None, expected 'funcbp-checkpoint-1'"),
    ],
)
def test_bad_metadata_is_a_clear_error(tmp_path, key, change, message):
    path = checkpoint.save(tmp_path / "c.npz", _tree(key), {"epoch": 1})
    meta = _meta(path)
    change(meta)
    _with_meta(path, meta)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.restore(path, _tree(key))
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.read_extra(path)


@pytest.mark.parametrize("raw", [b"[1, 2]", b"not json", b'"a string"'])
def test_metadata_that_is_not_a_json_object(tmp_path, key, raw):
    path = checkpoint.save(tmp_path / "c.npz", _tree(key))
    members = _members(path)
    members["__meta__.npy"] = _npy(np.array(raw.decode()))
    _rewrite(path, members)
    with pytest.raises(checkpoint.CheckpointError, match=r"metadata"):
        checkpoint.restore(path, _tree(key))


def test_metadata_stored_as_numbers_is_refused(tmp_path, key):
    path = checkpoint.save(tmp_path / "c.npz", _tree(key))
    members = _members(path)
    members["__meta__.npy"] = _npy(np.zeros(3))
    _rewrite(path, members)
    with pytest.raises(checkpoint.CheckpointError, match=r"__meta__ .* float64\(3,\)"):
        checkpoint.read_extra(path)


@pytest.mark.parametrize("stored", [np.float64, np.int32])
def test_stored_dtype_is_checked_against_the_template(tmp_path, key, stored):
    """The metadata says float32 but the array in the file is another dtype."""
    path = checkpoint.save(tmp_path / "c.npz", _tree(key))
    members = _members(path)
    leaf = np.load(io.BytesIO(members["leaf_00001.npy"]))  # leaf 0 is adam's int32 count
    assert leaf.dtype == np.float32
    members["leaf_00001.npy"] = _npy(leaf.astype(stored))
    _rewrite(path, members)
    with pytest.raises(checkpoint.CheckpointError, match=rf"leaf 1 .*stored as {stored.__name__}"):
        checkpoint.restore(path, _tree(key))


def test_missing_or_duplicate_leaf(tmp_path, key):
    path = checkpoint.save(tmp_path / "c.npz", _tree(key))
    members = _members(path)
    del members["leaf_00002.npy"]
    _rewrite(path, members)
    with pytest.raises(checkpoint.CheckpointError, match=r"leaf 2 is missing"):
        checkpoint.restore(path, _tree(key))
    members = _members(checkpoint.save(path, _tree(key)))
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("leaf_00001.npy", members["leaf_00000.npy"])
    with pytest.raises(checkpoint.CheckpointError, match=r"'leaf_00001.npy' twice"):
        checkpoint.restore(path, _tree(key))


def test_restore_accepts_a_shape_only_template(tmp_path, key):
    """Only shapes and dtypes of the template are used: `jax.eval_shape` output is enough."""
    tree = _tree(key)
    path = checkpoint.save(tmp_path / "c.npz", tree)
    restored, _ = checkpoint.restore(path, jax.eval_shape(lambda: tree))
    assert jax.tree.all(jax.tree.map(np.array_equal, restored, tree))


def _fit_extra(epoch=2, steps=3):
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")
    history = {"epoch": list(range(1, epoch + 1))} | {k: [0.5] * epoch for k in keys}
    return {"epoch": epoch, "history": history | {"step_loss": [0.1] * (epoch * steps)}, "seed": 0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("epoch"), r"lacks 'epoch'"),
        (lambda e: e.update(epoch="2"), r"'epoch' must be an int >= 0, got '2'"),
        (lambda e: e.update(epoch=-1), r"'epoch' must be an int >= 0, got -1"),
        (lambda e: e.update(epoch=True), r"'epoch' must be an int >= 0, got True"),
        (lambda e: e.update(epoch=10**9), r"epoch 1000000000 but its history has 2 epochs"),
        (lambda e: e.update(history=[]), r"'history' must be a dict"),
        (lambda e: e["history"].pop("test_loss"), r"history lacks 'test_loss'"),
        (lambda e: e["history"].update(seconds=[0.5, "x"]), r"history\['seconds'\] must be a"),
        (lambda e: e["history"].update(epoch=[2, 1]), r"history\['epoch'\] must be \[1, 2\]"),
        (lambda e: e["history"]["step_loss"].pop(), r"5 step losses for 2 epochs of 3 steps"),
        (lambda e: e.update(seed=1.5), r"'seed' must be an int"),
    ],
)
def test_training_extra_is_validated(tmp_path, key, change, message):
    extra = _fit_extra()
    checkpoint.validate_training_extra(extra, epochs=2, steps_per_epoch=3)  # the good one
    change(extra)
    path = checkpoint.save(tmp_path / "c.npz", _tree(key), extra)
    check = lambda e: checkpoint.validate_training_extra(e, steps_per_epoch=3)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.restore(path, _tree(key), validate_extra=check)


def test_training_extra_beyond_the_requested_epochs(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match=r"after epoch 3 .* only 2 epochs"):
        checkpoint.validate_training_extra(_fit_extra(epoch=3), epochs=2)


def test_save_refuses_an_extra_that_is_not_a_dict(tmp_path, key):
    with pytest.raises(TypeError, match=r"extra must be a dict"):
        checkpoint.save(tmp_path / "c.npz", _tree(key), [1, 2])
    assert not (tmp_path / "c.npz").exists()
