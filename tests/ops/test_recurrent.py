"""rnn_cell, lstm_cell and the scanned sequences rnn/lstm: hand VJPs vs jax.grad of the
references and finite differences, for random shapes, dtypes and cotangents."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funcbp import check
from funcbp.ops import recurrent
from funcbp.ops.recurrent import lstm, lstm_cell, rnn, rnn_cell

TOL = {"float64": 1e-10, "float32": 1e-5}
CELLS = {"rnn_cell": rnn_cell, "lstm_cell": lstm_cell}
seeds = st.integers(0, 2**31 - 1)
dtypes = st.sampled_from(["float32", "float64"])


def _assert_close(got, want, tol, what=""):
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for i, (a, b) in enumerate(zip(got_leaves, want_leaves, strict=True)):
        assert a.shape == b.shape and a.dtype == b.dtype, (what, i, a.shape, b.shape)
        err = check.relative_error(a, b)
        assert err <= tol, f"{what} leaf {i}: rel err {err:.2e} > {tol:.0e}"


def _pairing(fn, cotangent):
    """L(*args) = Σ ⟨out_k, u_k⟩ over the output leaves: its gradient is the VJP Jᵀu."""

    def loss(*args):
        out = fn(*args)
        pairs = zip(jax.tree.leaves(out), jax.tree.leaves(cotangent), strict=True)
        return sum(jnp.vdot(o, u) for o, u in pairs)

    return loss


# -- cells: registry-style checks over random shapes ----------------------------------------
# Every hypothesis example draws new shapes, and every new shape recompiles: the slower checks
# run half the profile's examples (the `deep` profile still scales them up).
fewer = settings(max_examples=max(1, settings().max_examples // 2))


@pytest.mark.parametrize("name", sorted(CELLS))
@given(seed=seeds, dtype=dtypes)
def test_cell_hand_vs_autodiff(name, seed, dtype):
    report = check.check_op(CELLS[name], jax.random.key(seed), dtype, "hand", "autodiff")
    assert report.ok, str(report)


@pytest.mark.parametrize("name", sorted(CELLS))
@fewer
@given(seed=seeds)
def test_cell_hand_vs_finite_differences(name, seed):
    report = check.check_op(CELLS[name], jax.random.key(seed), "float64", "hand", "fd")
    assert report.ok, str(report)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_explicit_fwd_bwd_vs_autodiff(name, key):
    """fwd then bwd called by hand (no custom_vjp machinery) against jax.grad of the reference."""
    report = check.check_op(CELLS[name], key, "float64", "explicit", "autodiff")
    assert report.ok, str(report)


# -- cells: jit and eager, every output cotangent pattern ------------------------------------
@pytest.mark.parametrize(("dtype", "jit"), [("float32", True), ("float64", False)])
def test_rnn_cell_grad_jit_and_eager(key, jit, dtype):
    k_sample, k_cot = jax.random.split(key)
    arrays, _ = rnn_cell.sample(k_sample, jnp.dtype(dtype))
    u = jax.random.normal(k_cot, arrays[1].shape, dtype)
    wrap = jax.jit if jit else (lambda f: f)
    argnums = tuple(range(5))
    got = wrap(jax.grad(_pairing(rnn_cell, u), argnums))(*arrays)
    want = wrap(jax.grad(_pairing(recurrent.rnn_cell_reference, u), argnums))(*arrays)
    _assert_close(got, want, TOL[dtype], "rnn_cell")


@pytest.mark.parametrize(
    ("used", "dtype", "jit"),
    [
        ("both", "float64", True),
        ("both", "float32", True),
        ("h_only", "float64", False),
        ("h_only", "float32", True),
        ("c_only", "float64", True),
    ],
)
def test_lstm_cell_cotangent_patterns(key, jit, used, dtype):
    """Random cotangents on both outputs, or a loss that uses only h' (or only c'): JAX then
    feeds the unused output's cotangent to the bwd as materialised zeros."""
    k_sample, kh, kc = jax.random.split(key, 3)
    arrays, _ = lstm_cell.sample(k_sample, jnp.dtype(dtype))
    shape = arrays[1].shape
    uh = jax.random.normal(kh, shape, dtype)
    uc = jax.random.normal(kc, shape, dtype)

    def make_loss(fn):
        def loss(*args):
            h_new, c_new = fn(*args)
            terms = {"both": [(h_new, uh), (c_new, uc)], "h_only": [(h_new, uh)]}
            return sum(jnp.vdot(o, u) for o, u in terms.get(used, [(c_new, uc)]))

        return loss

    wrap = jax.jit if jit else (lambda f: f)
    argnums = tuple(range(6))
    got = wrap(jax.grad(make_loss(lstm_cell), argnums))(*arrays)
    want = wrap(jax.grad(make_loss(recurrent.lstm_cell_reference), argnums))(*arrays)
    _assert_close(got, want, TOL[dtype], f"lstm_cell {used}")


def test_lstm_cell_bwd_with_zero_dc_matches_h_only_vjp(key):
    """The bwd called directly with (dh', 0) equals autodiff's VJP of h' alone."""
    k_sample, k_cot = jax.random.split(key)
    arrays, _ = lstm_cell.sample(k_sample, jnp.float64)
    dh = jax.random.normal(k_cot, arrays[1].shape, jnp.float64)
    _, res = recurrent.lstm_cell_fwd(*arrays)
    got = recurrent.lstm_cell_bwd(res, (dh, jnp.zeros_like(dh)))
    _, vjp = jax.vjp(lambda *a: recurrent.lstm_cell_reference(*a)[0], *arrays)
    _assert_close(got, vjp(dh), 1e-10, "lstm_cell bwd (dh, 0)")


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_forward_matches_reference_and_plain_formula(name, key):
    """Forward values: the op, its fwd and a NumPy transcription of the docstring formula."""
    op = CELLS[name]
    arrays, _ = op.sample(key, jnp.float64)
    np_args = [np.asarray(a) for a in arrays]
    sig = lambda v: 1 / (1 + np.exp(-v))
    if name == "rnn_cell":
        x, h, wx, wh, b = np_args
        want = (np.tanh(x @ wx + h @ wh + b),)
    else:
        x, h, c, wx, wh, b = np_args
        zi, zf, zo, zg = np.split(x @ wx + h @ wh + b, 4, axis=-1)
        c_new = sig(zf) * c + sig(zi) * np.tanh(zg)
        want = (sig(zo) * np.tanh(c_new), c_new)
    got = jax.tree.leaves(op(*arrays))
    fwd_out = jax.tree.leaves(op.fwd(*arrays)[0])
    for g, f, w in zip(got, fwd_out, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f, w, rtol=1e-12, atol=1e-12)


def test_lstm_cell_second_order(key):
    """Reverse-over-reverse: grad of a function of the hand gradient matches autodiff's."""
    k_sample, kh, kc = jax.random.split(key, 3)
    arrays, _ = lstm_cell.sample(k_sample, jnp.float64)
    uh = jax.random.normal(kh, arrays[1].shape, jnp.float64)
    uc = jax.random.normal(kc, arrays[1].shape, jnp.float64)

    def outer(fn):
        inner = jax.grad(_pairing(fn, (uh, uc)), argnums=(0, 3))

        def f(*a):
            dx, dwx = inner(*a)
            return jnp.sum(jnp.sin(dx)) + jnp.sum(dwx * dwx)

        return jax.jit(jax.grad(f, argnums=tuple(range(6))))

    got = outer(lstm_cell)(*arrays)
    want = outer(recurrent.lstm_cell_reference)(*arrays)
    _assert_close(got, want, 1e-9, "lstm_cell grad-of-grad")


# -- sequences through lax.scan --------------------------------------------------------------
def _sequence_inputs(key, kind, dtype, sizes=None):
    """Random (T, B, D, H) unless given; xs time-major (T, B, D); weights ~1/√fan_in."""
    gen = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    t, n, d, h = sizes or (int(v) for v in gen.integers(1, 6, size=4))
    width = 4 * h if kind == "lstm" else h
    ks = jax.random.split(key, 6)
    xs = jax.random.normal(ks[0], (t, n, d), dtype)
    states = [jnp.tanh(jax.random.normal(ks[1], (n, h), dtype))]
    if kind == "lstm":
        states.append(jax.random.normal(ks[2], (n, h), dtype))
    wx = jax.random.normal(ks[3], (d, width), dtype) / d**0.5
    wh = jax.random.normal(ks[4], (h, width), dtype) / h**0.5
    b = 0.5 * jax.random.normal(ks[5], (width,), dtype)
    return (xs, *states, wx, wh, b)


def _sequence_loss(kind, gradients, key, args):
    """⟨hs, U⟩ + ⟨final carry, V⟩ with random U, V: every output gets a random cotangent."""
    fn = rnn if kind == "rnn" else lstm
    out = jax.eval_shape(lambda *a: fn(*a), *args)
    cot = check.random_cotangent(key, out)
    return _pairing(lambda *a: fn(*a, source=gradients), cot)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
@fewer
@given(seed=seeds, dtype=dtypes)
def test_sequence_hand_vs_autodiff(kind, seed, dtype):
    """Backprop through time: the scan's transpose calls the cell's bwd at every step."""
    key_in, key_cot = jax.random.split(jax.random.key(seed))
    args = _sequence_inputs(key_in, kind, jnp.dtype(dtype))
    argnums = tuple(range(len(args)))
    hand = jax.grad(_sequence_loss(kind, "hand", key_cot, args), argnums)
    auto = jax.grad(_sequence_loss(kind, "autodiff", key_cot, args), argnums)
    got, want = jax.jit(lambda *a: (hand(*a), auto(*a)))(*args)  # one compile for both
    _assert_close(got, want, TOL[dtype], f"{kind} T,B,D={args[0].shape}")


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_sequence_hand_eager_vs_finite_differences(kind, key):
    """A tiny float64 sequence, un-jitted hand gradients against central differences."""
    key_in, key_cot = jax.random.split(key)
    args = _sequence_inputs(key_in, kind, jnp.float64, sizes=(3, 2, 2, 2))
    argnums = tuple(range(len(args)))
    got = jax.grad(_sequence_loss(kind, "hand", key_cot, args), argnums)(*args)
    ref_loss = _sequence_loss(kind, "autodiff", key_cot, args)
    want = jax.jit(lambda *a: check.finite_difference_grad(ref_loss, a, argnums))(*args)
    _assert_close(got, want, check.FD_TOLERANCE["float64"], f"{kind} vs fd")


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_sequence_forward_is_the_cell_loop(kind, key):
    """hs[t] is the cell applied step by step in Python; the carry is the last step's state."""
    args = _sequence_inputs(key, kind, jnp.float64)
    xs, weights = args[0], args[-3:]
    state = args[1:-3]
    fn = rnn if kind == "rnn" else lstm
    hs, carry = fn(*args)
    ref_cell = recurrent.rnn_cell_reference if kind == "rnn" else recurrent.lstm_cell_reference
    for t in range(xs.shape[0]):
        out = ref_cell(xs[t], *state, *weights)
        state = (out,) if kind == "rnn" else out
        np.testing.assert_allclose(hs[t], state[0], rtol=1e-12, atol=1e-12)
    for c, s in zip(jax.tree.leaves(carry), state, strict=True):
        np.testing.assert_allclose(c, s, rtol=1e-12, atol=1e-12)
    auto = fn(*args, source="autodiff")
    _assert_close(auto, (hs, carry), 1e-15, "autodiff path forward")


def test_sequence_without_batch_dims(key):
    """xs (T, D) and h0 (H,): no batch axis at all is allowed, like the cells."""
    xs, h0, c0, wx, wh, b = _sequence_inputs(key, "lstm", jnp.float64, sizes=(4, 1, 3, 2))
    args = (xs[:, 0], h0[0], c0[0], wx, wh, b)
    hs, (h_last, _) = lstm(*args)
    assert hs.shape == (4, 2) and h_last.shape == (2,)
    loss = lambda g: lambda *a: jnp.vdot(lstm(*a, source=g)[0], jnp.arange(8.0).reshape(4, 2))
    got = jax.grad(loss("hand"), range(6))(*args)
    want = jax.grad(loss("autodiff"), range(6))(*args)
    _assert_close(got, want, 1e-10, "lstm unbatched")


# -- bad input -------------------------------------------------------------------------------
def _rnn_args(dtype=jnp.float64, n=2, d=3, h=4):
    k = jax.random.split(jax.random.key(0), 5)
    return [
        jax.random.normal(k[0], (n, d), dtype),
        jax.random.normal(k[1], (n, h), dtype),
        jax.random.normal(k[2], (d, h), dtype),
        jax.random.normal(k[3], (h, h), dtype),
        jax.random.normal(k[4], (h,), dtype),
    ]


def _lstm_args(dtype=jnp.float64, n=2, d=3, h=4):
    x, hh, _, _, _ = _rnn_args(dtype, n, d, h)
    k = jax.random.split(jax.random.key(1), 4)
    return [
        x,
        hh,
        jax.random.normal(k[0], (n, h), dtype),
        jax.random.normal(k[1], (d, 4 * h), dtype),
        jax.random.normal(k[2], (h, 4 * h), dtype),
        jax.random.normal(k[3], (4 * h,), dtype),
    ]


def _replace(args, i, value):
    args = list(args)
    args[i] = value
    return args


RNN_BAD = [
    (0, jnp.zeros((2, 5)), "x has 5 features but wx expects 3"),
    (1, jnp.zeros((2, 3)), r"h must have shape \(2, 4\)"),
    (1, jnp.zeros((3, 4)), r"h must have shape \(2, 4\)"),
    (2, jnp.zeros((3, 5)), "wx must have 4 columns"),
    (3, jnp.zeros((4, 5)), r"wh must have shape \(H, H\)"),
    (3, jnp.zeros((4,)), "wh must have 2 dims"),
    (4, jnp.zeros((5,)), r"b must have shape \(4,\)"),
    (0, jnp.zeros((2, 3), jnp.float32), "arrays must share one dtype"),
    (0, jnp.zeros((2, 3), jnp.int32), "x must be a floating-point array"),
    (0, [[0.0] * 3] * 2, "x must be an array"),
]


@pytest.mark.parametrize(("i", "value", "match"), RNN_BAD)
def test_rnn_cell_bad_input(i, value, match):
    args = _replace(_rnn_args(), i, value)
    with pytest.raises((ValueError, TypeError), match=f"rnn_cell: .*{match}"):
        rnn_cell(*args)
    with pytest.raises((ValueError, TypeError), match=f"rnn_cell: .*{match}"):
        jax.jit(rnn_cell.autodiff)(*args)


LSTM_BAD = [
    (0, jnp.zeros((2, 5)), "x has 5 features but wx expects 3"),
    (1, jnp.zeros((2, 5)), r"h must have shape \(2, 4\)"),
    (2, jnp.zeros((1, 4)), r"c must have shape \(2, 4\)"),
    (4, jnp.zeros((4, 15)), "not divisible by 4"),
    (4, jnp.zeros((3, 16)), r"wh must have shape \(H, 4H\) = \(4, 16\)"),
    (3, jnp.zeros((3, 12)), "wx must have 16 columns"),
    (5, jnp.zeros((4,)), r"b must have shape \(16,\)"),
    (2, jnp.zeros((2, 4), jnp.float32), "arrays must share one dtype"),
    (5, jnp.zeros((16,), jnp.int32), "b must be a floating-point array"),
]


@pytest.mark.parametrize(("i", "value", "match"), LSTM_BAD)
def test_lstm_cell_bad_input(i, value, match):
    args = _replace(_lstm_args(), i, value)
    with pytest.raises((ValueError, TypeError), match=f"lstm_cell: .*{match}"):
        lstm_cell(*args)
    with pytest.raises((ValueError, TypeError), match=f"lstm_cell: .*{match}"):
        jax.jit(lstm_cell)(*args)


def test_sequence_bad_input():
    xs = jnp.zeros((5, 2, 3))
    x, h, wx, wh, b = _rnn_args()
    with pytest.raises(
        ValueError, match="rnn: source must be 'hand', 'autodiff', 'explicit' or 'forward'"
    ):
        rnn(xs, h, wx, wh, b, source="manual")
    with pytest.raises(ValueError, match=r"rnn: xs must have at least 2 dims .*\(T, \.\.\., D\)"):
        rnn(jnp.zeros((3,)), h, wx, wh, b)
    with pytest.raises(ValueError, match="rnn_cell: x has 7 features"):
        rnn(jnp.zeros((5, 2, 7)), h, wx, wh, b)
    _, h, c, wx4, wh4, b4 = _lstm_args()
    with pytest.raises(ValueError, match=r"lstm_cell: c must have shape \(2, 4\)"):
        lstm(xs, h, c[:1], wx4, wh4, b4)
    with pytest.raises(TypeError, match="lstm: xs must be a floating-point array"):
        lstm(jnp.zeros((5, 2, 3), jnp.int32), h, c, wx4, wh4, b4)
    with pytest.raises(ValueError, match="lstm: source must be"):
        lstm(xs, h, c, wx4, wh4, b4, source=None)
