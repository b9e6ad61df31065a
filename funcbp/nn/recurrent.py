"""Recurrent layers over batch-major sequences (N, T, D), with an explicit BPTT engine.

``apply`` runs `funcbp.ops.rnn` / `funcbp.ops.lstm` (a `lax.scan` of the custom-VJP cell: JAX's
scan transpose calls the hand cell ``bwd`` once per step). ``forward``/``backward`` are the
explicit engine's backpropagation through time: a scan of the cells' ``fwd`` that stacks each
step's residuals, then a *reverse* scan of the cells' ``bwd`` that carries dL/dh (and dL/dc)
from step t to step t−1 and sums the weight gradients over time — no autodiff involved.

``remat=True`` trades memory for one more forward of each cell: only the states entering each
step are kept (the inputs are the layer's own), and the reverse scan re-runs the cell's ``fwd``
to rebuild that step's residuals (gates, tanh of the cell state) right before its ``bwd``;
``apply`` uses the cells' `Op.remat` (``jax.checkpoint`` of the cell on the autodiff path).
Memory and time: ``python -m benchmarks.remat --ops`` (numbers in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcbp.nn.core import Layer, leaf
from funcbp.nn.init import lecun_normal
from funcbp.ops._precision import acc_dtype
from funcbp.ops.recurrent import (
    lstm,
    lstm_cell_bwd,
    lstm_cell_fwd,
    rnn,
    rnn_cell_bwd,
    rnn_cell_fwd,
)

__all__ = ["RNN", "LSTM"]


def _check_input(name, input_shape):
    if len(input_shape) != 2:
        raise ValueError(f"{name}: input must be (T, D) per example, got {input_shape}")


def _outputs(hs_tm, h_last, return_sequences):
    """Time-major hidden states (T, N, H) -> (N, T, H), or the last one (N, H)."""
    return jnp.swapaxes(hs_tm, 0, 1) if return_sequences else h_last


def _seed(dy, shape_tm, return_sequences):
    """dL/dh_t for every t, time-major: dy itself, or zeros but for the last step."""
    if return_sequences:
        return jnp.swapaxes(dy, 0, 1)
    return jnp.zeros(shape_tm, dy.dtype).at[-1].set(dy)


def _accumulators(*weights):
    """Zero sums of the weights' gradients over time, in the cells' accumulation dtype (float32
    for half-precision weights, as each cell's ``bwd`` returns them)."""
    return tuple(jnp.zeros(w.shape, acc_dtype(w)) for w in weights)


def _as_params(params, dwx, dwh, db):
    """The summed gradients in the params' own dtypes."""
    grads = {"wx": dwx, "wh": dwh, "b": db}
    return {k: g.astype(params[k].dtype) for k, g in grads.items()}


def _rnn_forward(params, x, hidden, remat):
    """A scan of the cell's ``fwd`` over (N, T, D): ``(hs (T, N, H), h_T, (residuals, shape))``
    — each step's input, state and output (only input and state with ``remat``); the weights
    are kept once, not T times."""
    wx, wh, b = params["wx"], params["wh"], params["b"]
    xs = jnp.swapaxes(x, 0, 1)  # (T, N, D)

    def step(h, x_t):
        h_new, (x_r, h_r, _, _, hn_r) = rnn_cell_fwd(x_t, h, wx, wh, b)
        return h_new, (h_new, (x_r, h_r) if remat else (x_r, h_r, hn_r))

    h_last, (hs, res) = jax.lax.scan(step, jnp.zeros((x.shape[0], hidden), x.dtype), xs)
    return hs, h_last, (res, hs.shape)


def _rnn_backward(params, residuals, dy, remat, return_sequences):
    """BPTT: a reverse scan of the cell's ``bwd`` carrying dL/dh_t to step t−1 and summing the
    weight gradients over time; with ``remat`` each step's residuals are rebuilt first."""
    res, shape_tm = residuals
    wx, wh, b = params["wx"], params["wh"], params["b"]

    def step(carry, inputs):
        dh_next, dwx, dwh, db = carry
        r, dh_out = inputs
        if remat:  # rebuild this step's residuals once its incoming gradient exists
            (x_t, h_t), dh_out = jax.lax.optimization_barrier((r, dh_out))
            _, full = rnn_cell_fwd(x_t, h_t, wx, wh, b)
        else:
            x_t, h_t, hn_t = r
            full = (x_t, h_t, wx, wh, hn_t)
        dx, dh, dwx_t, dwh_t, db_t = rnn_cell_bwd(full, dh_out + dh_next)
        return (dh, dwx + dwx_t, dwh + dwh_t, db + db_t), dx

    zeros = (jnp.zeros(shape_tm[1:], dy.dtype), *_accumulators(wx, wh, b))
    (_, dwx, dwh, db), dxs = jax.lax.scan(
        step, zeros, (res, _seed(dy, shape_tm, return_sequences)), reverse=True
    )
    return _as_params(params, dwx, dwh, db), jnp.swapaxes(dxs, 0, 1)


def RNN(hidden: int, *, return_sequences: bool = True, remat: bool = False) -> Layer:
    """Elman RNN, h_t = tanh(x_t Wx + h_{t−1} Wh + b), h_0 = 0: (N, T, D) -> (N, T, H)
    (or (N, H), the last state, with ``return_sequences=False``).
    Params ``{"wx": (D, H), "wh": (H, H), "b": (H,)}``, LeCun-initialised (tanh)."""

    def init(key, input_shape, dtype):
        _check_input("RNN", input_shape)
        k1, k2 = jax.random.split(key)
        params = {
            "wx": lecun_normal()(k1, (input_shape[-1], hidden), dtype),
            "wh": lecun_normal()(k2, (hidden, hidden), dtype),
            "b": jnp.zeros((hidden,), dtype),
        }
        out = (input_shape[0], hidden) if return_sequences else (hidden,)
        return out, params, {}

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        xs = jnp.swapaxes(x, 0, 1)  # (T, N, D)
        h0 = jnp.zeros((x.shape[0], hidden), x.dtype)
        hs, h_last = rnn(
            xs, h0, params["wx"], params["wh"], params["b"], source=source, remat=remat
        )
        return _outputs(hs, h_last, return_sequences), state

    def forward(params, state, x, *, key=None, train=False):
        hs, h_last, residuals = _rnn_forward(params, x, hidden, remat)
        return _outputs(hs, h_last, return_sequences), state, residuals

    def backward(params, residuals, dy):
        return _rnn_backward(params, residuals, dy, remat, return_sequences)

    return leaf(f"rnn{hidden}" + ("_remat" if remat else ""), init, apply, forward, backward)


def _lstm_forward(params, x, hidden, remat):
    """A scan of the cell's ``fwd``: ``(hs, h_T, (residuals, shape))``; each step keeps its
    residuals but the weights (kept once), or only what enters it with ``remat``."""
    wx, wh, b = params["wx"], params["wh"], params["b"]
    xs = jnp.swapaxes(x, 0, 1)

    def step(carry, x_t):
        h, c = carry
        (h_new, c_new), res = lstm_cell_fwd(x_t, h, c, wx, wh, b)
        per_step = res[:3] if remat else res[:3] + res[5:]  # never wx, wh (res[3], res[4])
        return (h_new, c_new), (h_new, per_step)

    h0 = jnp.zeros((x.shape[0], hidden), x.dtype)
    (h_last, _), (hs, res) = jax.lax.scan(step, (h0, h0), xs)
    return hs, h_last, (res, hs.shape)


def _lstm_backward(params, residuals, dy, remat, return_sequences):
    """BPTT: a reverse scan of the cell's ``bwd`` carrying (dL/dh, dL/dc) to step t−1 and
    summing the weight gradients; with ``remat`` each step's gates are rebuilt first."""
    res, shape_tm = residuals
    wx, wh, b = params["wx"], params["wh"], params["b"]

    def step(carry, inputs):
        dh_next, dc_next, dwx, dwh, db = carry
        r, dh_out = inputs
        if remat:  # rebuild this step's residuals once its incoming gradient exists
            (x_t, h_t, c_t), dh_out = jax.lax.optimization_barrier((r, dh_out))
            _, full = lstm_cell_fwd(x_t, h_t, c_t, wx, wh, b)
        else:
            full = r[:3] + (wx, wh) + r[3:]
        dx, dh, dc, dwx_t, dwh_t, db_t = lstm_cell_bwd(full, (dh_out + dh_next, dc_next))
        return (dh, dc, dwx + dwx_t, dwh + dwh_t, db + db_t), dx

    z = jnp.zeros(shape_tm[1:], dy.dtype)
    zeros = (z, z, *_accumulators(wx, wh, b))
    (_, _, dwx, dwh, db), dxs = jax.lax.scan(
        step, zeros, (res, _seed(dy, shape_tm, return_sequences)), reverse=True
    )
    return _as_params(params, dwx, dwh, db), jnp.swapaxes(dxs, 0, 1)


def LSTM(
    hidden: int, *, return_sequences: bool = True, forget_bias: float = 1.0, remat: bool = False
) -> Layer:
    """LSTM (gates i, f, o, g), h_0 = c_0 = 0: (N, T, D) -> (N, T, H) (or (N, H)).
    Params ``{"wx": (D, 4H), "wh": (H, 4H), "b": (4H,)}``; the forget gate's bias starts at
    ``forget_bias`` (1: remember by default, the usual advice)."""

    def init(key, input_shape, dtype):
        _check_input("LSTM", input_shape)
        k1, k2 = jax.random.split(key)
        b = jnp.zeros((4 * hidden,), dtype).at[hidden : 2 * hidden].set(forget_bias)
        params = {
            "wx": lecun_normal()(k1, (input_shape[-1], 4 * hidden), dtype),
            "wh": lecun_normal()(k2, (hidden, 4 * hidden), dtype),
            "b": b,
        }
        out = (input_shape[0], hidden) if return_sequences else (hidden,)
        return out, params, {}

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        xs = jnp.swapaxes(x, 0, 1)
        h0 = jnp.zeros((x.shape[0], hidden), x.dtype)
        hs, (h_last, _) = lstm(
            xs, h0, h0, params["wx"], params["wh"], params["b"], source=source, remat=remat
        )
        return _outputs(hs, h_last, return_sequences), state

    def forward(params, state, x, *, key=None, train=False):
        hs, h_last, residuals = _lstm_forward(params, x, hidden, remat)
        return _outputs(hs, h_last, return_sequences), state, residuals

    def backward(params, residuals, dy):
        return _lstm_backward(params, residuals, dy, remat, return_sequences)

    return leaf(f"lstm{hidden}" + ("_remat" if remat else ""), init, apply, forward, backward)
