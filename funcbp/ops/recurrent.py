"""Recurrent cells with hand VJPs (tanh RNN, LSTM) and sequences through `lax.scan`.

A cell is one time step: an `Op` like any other (reference, fwd, bwd side by side). The
sequence helpers `rnn` and `lstm` are plain functions, not ops: they run `lax.scan` over a cell,
and the gradient of a whole sequence comes from JAX transposing the scan, which calls the cell's
hand ``bwd`` once per step (in reverse time order) with the residuals the scan stacked. So
backpropagation through time needs no code of its own: the per-step VJP is the whole story.

Shapes: ``B`` is any leading batch shape (``(N,)``, ``(N, M)`` or none), ``D`` input features,
``H`` hidden units. Sequences are TIME-MAJOR: ``xs`` is ``(T, *B, D)``, the layout `lax.scan`
walks without a transpose.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcbp.ops import _sample
from funcbp.ops._checks import require_float, require_ndim, require_same_dtype
from funcbp.ops._op import Op, register
from funcbp.ops._precision import acc_matmul, acc_sum

__all__ = ["rnn_cell", "lstm_cell", "rnn", "lstm"]


def _lift(b, ndim):
    """Bias ``(K,)`` -> ``(1, ..., 1, K)`` with ``ndim`` dims (explicit: no rank promotion)."""
    return b.reshape((1,) * (ndim - 1) + b.shape)


def _preactivation(x, h, wx, wh, b):
    """z = x wx + h wh + b: (..., D), (..., H), (D, K), (H, K), (K,) -> (..., K)."""
    z = x @ wx + h @ wh  # (..., K)
    return z + _lift(b, z.ndim)


def _affine_bwd(x, h, wx, wh, dz):
    """VJP of z = x wx + h wh + b for a cotangent dz (..., K): the linear layer's, twice.

    dx = dz wxᵀ (..., D);  dh = dz whᵀ (..., H);  dwx = Σ_batch xᵀ dz (D, K);
    dwh = Σ_batch hᵀ dz (H, K);  db = Σ_batch dz (K,).  Leading dims are flattened so each weight
    gradient is one GEMM whatever the batch rank.
    """
    dx = dz @ wx.T  # (..., D)
    dh = dz @ wh.T  # (..., H)
    dz2 = dz.reshape(-1, dz.shape[-1])  # (N, K)
    dwx = acc_matmul(x.reshape(-1, x.shape[-1]).T, dz2)  # (D, K), float32 for half inputs
    dwh = acc_matmul(h.reshape(-1, h.shape[-1]).T, dz2)  # (H, K)
    db = acc_sum(dz2, 0)  # (K,)
    return dx, dh, dwx, dwh, db


def _affine_jvp(x, h, wx, wh, dx, dh, dwx, dwh, db):
    """JVP of z = x wx + h wh + b: dz = dx wx + x dwx + dh wh + h dwh + db (..., K).

    The product rule on each of the two bilinear terms (the linear layer's JVP, twice).
    """
    dz = dx @ wx + x @ dwx + dh @ wh + h @ dwh  # (..., K)
    return dz + _lift(db, dz.ndim)


def _validate_cell(op, x, states, wx, wh, b, gates):
    """Shared checks: x (..., D); each state (..., H) with x's leading dims; wx (D, G·H),
    wh (H, G·H), b (G·H,) with G = ``gates`` (1 for the RNN, 4 for the LSTM); one float dtype."""
    arrays = {"x": x, **states, "wx": wx, "wh": wh, "b": b}
    for name, a in arrays.items():
        require_float(op, name, a)
    require_ndim(op, "x", x, (1, None), "(..., D)")
    require_ndim(op, "wx", wx, 2, f"(D, {'4H' if gates == 4 else 'H'})")
    require_ndim(op, "wh", wh, 2, f"(H, {'4H' if gates == 4 else 'H'})")
    require_ndim(op, "b", b, 1, f"({'4H' if gates == 4 else 'H'},)")
    width = wh.shape[1]
    if gates == 4 and width % 4:
        raise ValueError(
            f"{op}: the gate axis of wh must have 4H entries (gates i, f, o, g), got "
            f"{width}, not divisible by 4 (wh {tuple(wh.shape)})"
        )
    n_hidden = width // gates
    want = "4H" if gates == 4 else "H"
    if wh.shape[0] != n_hidden:
        raise ValueError(
            f"{op}: wh must have shape (H, {want}) = ({n_hidden}, {width}), got {tuple(wh.shape)}"
        )
    if x.shape[-1] != wx.shape[0]:
        raise ValueError(
            f"{op}: x has {x.shape[-1]} features but wx expects {wx.shape[0]} "
            f"(x {tuple(x.shape)}, wx {tuple(wx.shape)})"
        )
    if wx.shape[1] != width:
        raise ValueError(
            f"{op}: wx must have {width} columns ({want} with H = {n_hidden}, from wh "
            f"{tuple(wh.shape)}), got wx {tuple(wx.shape)}"
        )
    if b.shape[0] != width:
        raise ValueError(
            f"{op}: b must have shape ({width},) ({want} with H = {n_hidden}), got {tuple(b.shape)}"
        )
    state_shape = (*x.shape[:-1], n_hidden)
    for name, s in states.items():
        if tuple(s.shape) != state_shape:
            raise ValueError(
                f"{op}: {name} must have shape {state_shape} (x's leading dims "
                f"{tuple(x.shape[:-1])} and H = {n_hidden}), got {tuple(s.shape)}"
            )
    require_same_dtype(op, **arrays)


def _sample_sizes(gen):
    """Random leading batch shape (0-2 dims), D and H: small, every shape recompiles."""
    lead = _sample.batch_shape(gen, max_dims=2, max_size=4)
    n_in, n_hidden = (int(v) for v in gen.integers(1, 6, size=2))
    return lead, n_in, n_hidden


def _sample_weights(key, n_in, n_hidden, width, dtype):
    """Weights scaled ~1/√fan_in so pre-activations are O(1): gates neither saturated (tiny
    gradients) nor linear (a weak test of the nonlinearity's derivative)."""
    kx, kh, kb = _sample.split3(key)
    wx = _sample.normal(kx, (n_in, width), dtype, scale=1.0 / n_in**0.5)
    wh = _sample.normal(kh, (n_hidden, width), dtype, scale=1.0 / n_hidden**0.5)
    b = _sample.normal(kb, (width,), dtype, scale=0.5)
    return wx, wh, b


# -- rnn_cell ------------------------------------------------------------------------------
def rnn_cell_reference(x, h, wx, wh, b):
    """x (..., D), h (..., H), wx (D, H), wh (H, H), b (H,) -> h' (..., H).

    h' = tanh(x wx + h wh + b).
    """
    return jnp.tanh(_preactivation(x, h, wx, wh, b))


def rnn_cell_fwd(x, h, wx, wh, b):
    """Forward; keeps x (for dwx), h (for dwh), wx (for dx), wh (for dh) and the output h'
    (tanh' = 1 − h'²: the pre-activation itself is never needed). b is not needed. Under
    `lax.scan` the weights are loop-invariant residuals, which JAX hoists and saves once, not
    per step (`jax.ad_checkpoint.print_saved_residuals` shows xs, wx, wh and two (T, *B, H)
    stacks: h and h')."""
    h_new = rnn_cell_reference(x, h, wx, wh, b)
    return h_new, (x, h, wx, wh, h_new)


def rnn_cell_bwd(res, g):
    """dz = g ⊙ (1 − h'²);  dx = dz wxᵀ;  dh = dz whᵀ;  dwx = xᵀ dz;  dwh = hᵀ dz;  db = Σ dz.

    With z = x wx + h wh + b and h' = tanh(z), the Jacobian of h' in z is diagonal,
    ∂h'_k/∂z_k = 1 − tanh²(z_k) = 1 − h'_k², so dz = g ⊙ (1 − h'²) (..., H). The rest is the
    linear layer's VJP for each of the two products (sums over the flattened batch dims).
    """
    x, h, wx, wh, h_new = res
    dz = g * (1 - h_new * h_new)  # (..., H)
    return _affine_bwd(x, h, wx, wh, dz)


def rnn_cell_jvp(primals, tangents):
    """dh' = (1 − h'²) ⊙ dz,  dz = dx wx + x dwx + dh wh + h dwh + db.

    h' = tanh(z) is elementwise in z (tanh' = 1 − tanh²) and z is affine in each weight and
    bilinear in (x, wx), (h, wh): the tangent of z is the product rule term by term.
    """
    x, h, wx, wh, b = primals
    dz = _affine_jvp(x, h, wx, wh, *tangents)  # (..., H)
    h_new = rnn_cell_reference(x, h, wx, wh, b)
    return h_new, (1 - h_new * h_new) * dz


def _validate_rnn_cell(x, h, wx, wh, b):
    _validate_cell("rnn_cell", x, {"h": h}, wx, wh, b, gates=1)


def _sample_rnn_cell(key, dtype):
    gen = _sample.rng(key)
    lead, n_in, n_hidden = _sample_sizes(gen)
    kx, kh, kw = _sample.split3(key)
    x = _sample.normal(kx, (*lead, n_in), dtype)
    h = _sample.host(np.tanh(np.asarray(_sample.normal(kh, (*lead, n_hidden), dtype))), dtype)
    return (x, h, *_sample_weights(kw, n_in, n_hidden, n_hidden, dtype)), {}


rnn_cell = register(
    Op(
        "rnn_cell",
        rnn_cell_reference,
        rnn_cell_fwd,
        rnn_cell_bwd,
        _sample_rnn_cell,
        5,
        _validate_rnn_cell,
        jvp=rnn_cell_jvp,
    )
)


# -- lstm_cell -----------------------------------------------------------------------------
def _split_gates(z):
    """(..., 4H) -> four (..., H) blocks in the order i, f, o, g."""
    return jnp.split(z, 4, axis=-1)


def _lstm_forward(x, h, c, wx, wh, b):
    """The LSTM step and its intermediates: gate activations (..., 4H), tanh(c'), h', c'."""
    zi, zf, zo, zg = _split_gates(_preactivation(x, h, wx, wh, b))  # 4 × (..., H)
    i, f, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jax.nn.sigmoid(zo)
    g = jnp.tanh(zg)
    c_new = f * c + i * g  # (..., H)
    tanh_c = jnp.tanh(c_new)  # (..., H)
    h_new = o * tanh_c  # (..., H)
    return (i, f, o, g), tanh_c, h_new, c_new


def lstm_cell_reference(x, h, c, wx, wh, b):
    """x (..., D), h (..., H), c (..., H), wx (D, 4H), wh (H, 4H), b (4H,) -> (h', c').

    z = x wx + h wh + b, split along the last axis into gates in the order i, f, o, g:
    i = σ(z_i), f = σ(z_f), o = σ(z_o), g = tanh(z_g);  c' = f ⊙ c + i ⊙ g;  h' = o ⊙ tanh(c').
    """
    _, _, h_new, c_new = _lstm_forward(x, h, c, wx, wh, b)
    return h_new, c_new


def lstm_cell_fwd(x, h, c, wx, wh, b):
    """Forward; keeps x, h (for dwx, dwh), c (for df), wx, wh (for dx, dh), the four gate
    activations i, f, o, g (each derivative is a function of its own output: σ' = s(1 − s),
    tanh' = 1 − t², so z is never needed) and tanh(c') (for do and for the path through h').
    Storing activations instead of z saves recomputing the 4H-wide GEMM and five
    transcendentals per step; c' itself is not needed (only its tanh is). Under `lax.scan`
    the weights are saved once (loop-invariant); per step it stores seven (*B, H) arrays
    (h, c, i, f, o, g, tanh c'), where autodiff of the reference stores twelve."""
    (i, f, o, g), tanh_c, h_new, c_new = _lstm_forward(x, h, c, wx, wh, b)
    return (h_new, c_new), (x, h, c, wx, wh, i, f, o, g, tanh_c)


def lstm_cell_bwd(res, cot):
    """Cotangent (dh', dc') -> (dx, dh, dc, dwx, dwh, db).

    h' depends on c' too, so c' collects gradient along two paths:
      dc_total = dc' + dh' ⊙ o ⊙ (1 − tanh²(c'))     (h' = o ⊙ tanh(c'))
      do = dh' ⊙ tanh(c')
    and c' = f ⊙ c + i ⊙ g is bilinear in its factors:
      di = dc_total ⊙ g;  dg = dc_total ⊙ i;  df = dc_total ⊙ c;  dc = dc_total ⊙ f.
    Each gate is an elementwise function of its own block of z, so dz is diagonal per block:
      dz_i = di ⊙ i(1 − i);  dz_f = df ⊙ f(1 − f);  dz_o = do ⊙ o(1 − o);  dz_g = dg ⊙ (1 − g²)
    concatenated in the order i, f, o, g to dz (..., 4H); then z = x wx + h wh + b gives
      dx = dz wxᵀ;  dh = dz whᵀ (added to nothing: h enters only through z);
      dwx = xᵀ dz;  dwh = hᵀ dz;  db = Σ_batch dz.
    When only h' is used downstream, JAX hands dc' in as zeros (and vice versa): the formulas
    need no special case.
    """
    x, h, c, wx, wh, i, f, o, g, tanh_c = res
    dh_new, dc_new = cot  # (..., H) each
    dc_total = dc_new + dh_new * o * (1 - tanh_c * tanh_c)  # (..., H)
    do = dh_new * tanh_c
    di = dc_total * g
    dg = dc_total * i
    df = dc_total * c
    dc = dc_total * f
    dz = jnp.concatenate(
        [di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - g * g)], axis=-1
    )  # (..., 4H)
    dx, dh, dwx, dwh, db = _affine_bwd(x, h, wx, wh, dz)
    return dx, dh, dc, dwx, dwh, db


def lstm_cell_jvp(primals, tangents):
    """Tangents (dx, dh, dc, dwx, dwh, db) -> ((h', c'), (dh', dc')).

    z = x wx + h wh + b moves by dz = dx wx + x dwx + dh wh + h dwh + db, split into the
    blocks of the gates i, f, o, g; each gate is elementwise in its own block:
      di = i(1 − i) ⊙ dz_i;  df = f(1 − f) ⊙ dz_f;  do = o(1 − o) ⊙ dz_o;  dg = (1 − g²) ⊙ dz_g.
    c' = f ⊙ c + i ⊙ g is bilinear in its factors:  dc' = df ⊙ c + f ⊙ dc + di ⊙ g + i ⊙ dg;
    h' = o ⊙ tanh(c'):  dh' = do ⊙ tanh(c') + o ⊙ (1 − tanh²(c')) ⊙ dc'.
    The backward runs the same graph in reverse (there dc' collects two paths; here dc' feeds
    two terms).
    """
    x, h, c, wx, wh, b = primals
    dx, dh, dc, dwx, dwh, db = tangents
    (i, f, o, g), tanh_c, h_new, c_new = _lstm_forward(x, h, c, wx, wh, b)
    dzi, dzf, dzo, dzg = _split_gates(_affine_jvp(x, h, wx, wh, dx, dh, dwx, dwh, db))
    di, df, do = i * (1 - i) * dzi, f * (1 - f) * dzf, o * (1 - o) * dzo  # (..., H) each
    dg = (1 - g * g) * dzg
    dc_new = df * c + f * dc + di * g + i * dg  # (..., H)
    dh_new = do * tanh_c + o * (1 - tanh_c * tanh_c) * dc_new  # (..., H)
    return (h_new, c_new), (dh_new, dc_new)


def _validate_lstm_cell(x, h, c, wx, wh, b):
    _validate_cell("lstm_cell", x, {"h": h, "c": c}, wx, wh, b, gates=4)


def _sample_lstm_cell(key, dtype):
    gen = _sample.rng(key)
    lead, n_in, n_hidden = _sample_sizes(gen)
    k1, k2, kw = _sample.split3(key)
    kx, kh = jax.random.split(k1)
    x = _sample.normal(kx, (*lead, n_in), dtype)
    h = _sample.host(np.tanh(np.asarray(_sample.normal(kh, (*lead, n_hidden), dtype))), dtype)
    c = _sample.normal(k2, (*lead, n_hidden), dtype)
    return (x, h, c, *_sample_weights(kw, n_in, n_hidden, 4 * n_hidden, dtype)), {}


lstm_cell = register(
    Op(
        "lstm_cell",
        lstm_cell_reference,
        lstm_cell_fwd,
        lstm_cell_bwd,
        _sample_lstm_cell,
        6,
        _validate_lstm_cell,
        jvp=lstm_cell_jvp,
    )
)


# -- sequences -----------------------------------------------------------------------------
def _check_sequence(name, xs, source):
    if source not in ("hand", "autodiff", "explicit", "forward"):
        raise ValueError(
            f"{name}: source must be 'hand', 'autodiff', 'explicit' or 'forward', got {source!r}"
        )
    require_float(name, "xs", xs)
    require_ndim(name, "xs", xs, (2, None), "(T, ..., D), time-major")


def rnn(xs, h0, wx, wh, b, *, source="hand", remat=False):
    """Run `rnn_cell` over a time-major sequence with `lax.scan`.

    Args:
      xs: (T, *B, D) inputs, TIME-MAJOR (step t is ``xs[t]``).
      h0: (*B, H) initial hidden state.
      wx (D, H), wh (H, H), b (H,): the cell's weights, shared by every step.
      source: ``"hand"`` (the cell's custom VJP: the scan's transpose calls `rnn_cell_bwd`
        each step), ``"autodiff"`` (the cell's reference, differentiated by JAX) or
        ``"explicit"`` (the cell's ``fwd``, residuals dropped).
      remat: keep only each step's inputs and recompute the cell's residuals on the backward
        pass (`Op.remat`; ``jax.checkpoint`` of the cell on the autodiff path).

    Returns:
      ``(hs, h_T)``: every hidden state h_1..h_T, (T, *B, H), and the final one, (*B, H).
    """
    _check_sequence("rnn", xs, source)
    cell = rnn_cell.path(source, remat=remat)

    def step(h, x):
        h_new = cell(x, h, wx, wh, b)
        return h_new, h_new

    h_last, hs = lax.scan(step, h0, xs)
    return hs, h_last


def lstm(xs, h0, c0, wx, wh, b, *, source="hand", remat=False):
    """Run `lstm_cell` over a time-major sequence with `lax.scan`.

    Args:
      xs: (T, *B, D) inputs, TIME-MAJOR (step t is ``xs[t]``).
      h0, c0: (*B, H) initial hidden and cell states.
      wx (D, 4H), wh (H, 4H), b (4H,): the cell's weights, gates in the order i, f, o, g.
      source: ``"hand"`` (the cell's custom VJP: the scan's transpose calls `lstm_cell_bwd`
        each step), ``"autodiff"`` (the cell's reference, differentiated by JAX) or
        ``"explicit"`` (the cell's ``fwd``, residuals dropped).
      remat: keep only each step's inputs and recompute the cell's residuals (gates, tanh of
        the cell state) on the backward pass, as for `rnn`.

    Returns:
      ``(hs, (h_T, c_T))``: every hidden state h_1..h_T, (T, *B, H), and the final carry.
    """
    _check_sequence("lstm", xs, source)
    cell = lstm_cell.path(source, remat=remat)

    def step(carry, x):
        h, c = carry
        h_new, c_new = cell(x, h, c, wx, wh, b)
        return (h_new, c_new), h_new

    carry, hs = lax.scan(step, (h0, c0), xs)
    return hs, carry
