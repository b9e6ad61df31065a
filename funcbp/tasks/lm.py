"""Language-model helpers shared by the tasks that generate text: greedy decoding."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["greedy_decode", "logits"]


def logits(out):
    """A language model's logits (..., V): its output, or ``x Eᵀ`` from a fused head's
    ``(x, E)`` (`funcbp.nn.HeadInputs`; decoding needs a few positions' logits only)."""
    if isinstance(out, tuple):
        x, table = out
        return jnp.einsum("...d,vd->...v", x, table)
    return out


@functools.partial(jax.jit, static_argnames=("model", "n_new"))
def _decode(model, params, state, prompts, n_new):
    n, p = prompts.shape
    buf = jnp.concatenate([prompts, jnp.zeros((n, n_new), prompts.dtype)], axis=1)  # (N, P+n)

    def step(i, buf):
        # Causal attention: positions after P + i − 1 (still zeros) do not affect its logits,
        # so the whole fixed-size buffer is fed each step and one shape compiles once.
        out, _ = model.apply(params, state, buf[:, :-1], key=None, train=False)
        h = out[0] if isinstance(out, tuple) else out
        last = jax.lax.dynamic_index_in_dim(h, p - 1 + i, axis=1, keepdims=False)  # (N, ·)
        last = logits((last, out[1]) if isinstance(out, tuple) else last)  # (N, V)
        nxt = jnp.argmax(last, axis=-1).astype(buf.dtype)  # (N,)
        return jax.lax.dynamic_update_index_in_dim(buf, nxt[:, None], p + i, axis=1)

    buf = jax.lax.fori_loop(0, n_new, step, buf)
    return buf[:, p:]


def greedy_decode(model, params, state, prompts, n_new: int):
    """Greedy continuation of ``prompts`` (N, P) int by ``n_new`` tokens -> (N, n_new) int.

    Jitted with fixed shapes (one compile per ``(model, N, P, n_new)``): each step runs the
    model on the whole (N, P + n_new − 1) buffer, which must fit the model's context, and takes
    the argmax at the last written position. ``model`` must be causal (`funcbp.nn.gpt.gpt`).
    """
    prompts = jnp.asarray(prompts)
    if prompts.ndim != 2 or not jnp.issubdtype(prompts.dtype, jnp.integer):
        raise ValueError(
            f"greedy_decode: prompts must be an integer array (N, P), got shape "
            f"{tuple(prompts.shape)} dtype {prompts.dtype}"
        )
    if isinstance(n_new, bool) or not isinstance(n_new, int) or n_new < 1:
        raise ValueError(f"greedy_decode: n_new must be a positive int, got {n_new!r}")
    return _decode(model, params, state, prompts, n_new)
