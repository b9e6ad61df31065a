"""Atomic checkpoints: round trip, and clear errors for missing/corrupt/other-architecture files."""

from __future__ import annotations

import os

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
