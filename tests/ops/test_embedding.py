"""embedding: row lookup forward, scatter-add backward, out-of-range ids eager and under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcbp import check
from funcbp.ops import REGISTRY
from funcbp.ops.embedding import embedding, embedding_fwd

seeds = st.integers(0, 2**31 - 1)
FEW = settings(max_examples=max(2, settings.default.max_examples // 2))
OP = REGISTRY["embedding"]


@FEW
@given(seed=seeds)
def test_hand_matches_autodiff_and_fd(seed):
    key = jax.random.key(seed)
    for dtype, b in (("float64", "autodiff"), ("float32", "autodiff"), ("float64", "fd")):
        report = check.check_op(OP, key, dtype, "hand", b)
        assert report.ok, str(report)


def _scatter_numpy(ids, g, n_rows):
    """Independent reference for dtable: NumPy's unbuffered add.at (repeats accumulate)."""
    out = np.zeros((n_rows, g.shape[-1]))
    np.add.at(out, np.asarray(ids).reshape(-1), np.asarray(g).reshape(-1, g.shape[-1]))
    return out


@given(
    ids_shape=st.lists(st.integers(1, 5), min_size=0, max_size=3),
    n_rows=st.integers(1, 6),
    dim=st.integers(1, 4),
    id_dtype=st.sampled_from([jnp.int32, jnp.int64, jnp.uint8]),
    seed=seeds,
    jit=st.booleans(),
)
def test_lookup_and_scatter_add(ids_shape, n_rows, dim, id_dtype, seed, jit):
    """ids of any shape (scalar included) and integer dtype -> ids.shape + (D,); the table's
    gradient is NumPy's add.at of the cotangent rows, equal to jax.grad of the reference."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    ids = jax.random.randint(k1, tuple(ids_shape), 0, n_rows).astype(id_dtype)
    table = jax.random.normal(k2, (n_rows, dim))
    u = jax.random.normal(k3, (*ids_shape, dim))
    wrap = jax.jit if jit else (lambda f: f)

    out = wrap(embedding)(ids, table)
    assert out.shape == (*ids_shape, dim) and out.dtype == table.dtype
    np.testing.assert_array_equal(out, np.asarray(table)[np.asarray(ids)])

    dtable = wrap(jax.grad(lambda t: jnp.vdot(embedding(ids, t), u)))(table)
    auto = jax.grad(lambda t: jnp.vdot(embedding.autodiff(ids, t), u))(table)
    np.testing.assert_allclose(dtable, _scatter_numpy(ids, u, n_rows), rtol=1e-12, atol=1e-12)
    assert check.relative_error(dtable, auto) <= 1e-12


def test_repeated_ids_accumulate(key):
    ids = jnp.array([[1, 1], [3, 1]])
    table = jax.random.normal(key, (5, 3))
    g = jax.random.normal(jax.random.fold_in(key, 1), (2, 2, 3))
    dtable = jax.grad(lambda t: jnp.vdot(embedding(ids, t), g))(table)
    np.testing.assert_allclose(dtable[1], g[0, 0] + g[0, 1] + g[1, 1], rtol=1e-14)
    np.testing.assert_allclose(dtable[3], g[1, 0], rtol=1e-14)
    np.testing.assert_array_equal(dtable[np.array([0, 2, 4])], 0)


def test_ids_get_no_cotangent(key):
    ids = jnp.array([0, 2, 2])
    table = jax.random.normal(key, (3, 2))
    u = jax.random.normal(jax.random.fold_in(key, 1), (3, 2))
    for source in ("hand", "explicit"):
        dids, dtable = check.op_gradients(OP, (ids, table), {}, u, source, jit=False)
        assert dids is None and dtable.shape == table.shape
    _, residuals = embedding_fwd(ids, table)
    assert residuals[0] is ids and residuals[1] is table  # inputs only, nothing new stored


@pytest.mark.parametrize("bad", [-1, 4, 100])
def test_out_of_range_concrete_ids_raise(bad):
    table = jnp.ones((4, 2))
    ids = jnp.array([0, bad, 3])
    with pytest.raises(
        ValueError, match=rf"embedding: ids must lie in \[0, 4\) .* \[{min(bad, 0)}"
    ):
        embedding(ids, table)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\)"):
        jax.grad(lambda t: jnp.sum(embedding(ids, t)))(table)  # ids stay concrete under grad
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\)"):
        embedding(np.asarray(ids), table)  # NumPy ids too


def test_out_of_range_traced_ids_give_nan_rows_and_no_gradient(key):
    """Under jit the values are unknown at trace time: out-of-range ids (negative included, no
    wrap-around) read a row of NaN, and their cotangents are dropped, not scattered anywhere."""
    table = jax.random.normal(key, (4, 3))
    ids = jnp.array([[0, -1], [4, 2], [2, 7]])
    u = jax.random.normal(jax.random.fold_in(key, 1), (3, 2, 3))
    out = np.asarray(jax.jit(embedding)(ids, table))
    valid = np.array([[True, False], [False, True], [True, False]])
    assert np.isnan(out[~valid]).all()
    np.testing.assert_array_equal(out[valid], np.asarray(table)[np.asarray(ids)[valid]])

    dtable = jax.jit(jax.grad(lambda t, i: jnp.vdot(jnp.nan_to_num(embedding(i, t)), u)))(
        table, ids
    )
    expected = np.zeros((4, 3))
    np.add.at(expected, np.asarray(ids)[valid], np.asarray(u)[valid])
    assert np.isfinite(dtable).all()
    np.testing.assert_allclose(dtable, expected, rtol=1e-14)


def test_bad_inputs():
    table = jnp.ones((4, 2))
    with pytest.raises(TypeError, match=r"embedding: ids must be an integer array .* float32"):
        embedding(jnp.array([0.0, 1.0], jnp.float32), table)
    with pytest.raises(TypeError, match="embedding: ids must be an array, got list"):
        embedding([0, 1], table)
    with pytest.raises(TypeError, match="embedding: table must be a floating-point array"):
        embedding(jnp.array([0]), jnp.ones((4, 2), jnp.int32))
    with pytest.raises(ValueError, match=r"embedding: table must have 2 dims \(V, D\)"):
        embedding(jnp.array([0]), jnp.ones((4,)))
    with pytest.raises(TypeError, match="embedding: ids must be an integer array"):
        jax.jit(embedding)(jnp.array([0.0]), table)
