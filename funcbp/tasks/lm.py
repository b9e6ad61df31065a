"""Language-model helpers shared by the tasks that generate text: sampling settings, greedy and
sampled decoding, with or without a KV cache.

* `decode` — the model run on the whole fixed-size buffer at every step (no cache: any causal
  model, e.g. the GPT with learned positions); `greedy_decode` is its temperature-0 case.
* `decode_cached` — the prompt once (the prefill), then one token per step through a KV cache
  held in the model's state (`funcbp.nn.kv_cache`): every layer's work is done once per token.

Sampling (`sample_next`): temperature 0 is greedy (argmax, deterministic); otherwise logits /
temperature, restricted to the ``top_k`` largest when ``top_k > 0``, sampled with a PRNG key
split once per step from ``jax.random.key(seed)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

__all__ = ["Sampling", "decode", "decode_cached", "greedy_decode", "logits", "sample_next"]


def logits(out):
    """A language model's logits (..., V): its output, or ``x Eᵀ`` from a fused head's
    ``(x, E)`` (`funcbp.nn.HeadInputs`; decoding needs a few positions' logits only)."""
    if isinstance(out, tuple):
        x, table = out
        return jnp.einsum("...d,vd->...v", x, table)
    return out


def _last_logits(out, i):
    """The logits (N, V) at position ``i`` of a model output (logits, or a fused head's
    ``(x, E)``: only that position's ``x Eᵀ`` is formed)."""
    if isinstance(out, tuple):
        x, table = out
        return logits((jax.lax.dynamic_index_in_dim(x, i, axis=1, keepdims=False), table))
    return jax.lax.dynamic_index_in_dim(out, i, axis=1, keepdims=False)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to continue a prompt: ``max_new_tokens`` (None: the task's own default),
    ``temperature`` (0: greedy), ``top_k`` (0: the whole vocabulary) and the ``seed`` of the
    draws."""

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        n = self.max_new_tokens
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"--max-new-tokens must be a positive int, got {n!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not (0 <= t < math.inf):
            raise ValueError(f"--temperature must be a finite number >= 0, got {t!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"--top-k must be an int >= 0, got {self.top_k!r}")


def sample_next(z, key, temperature: float, top_k: int):
    """logits z (N, V) -> ids (N,): argmax at temperature 0; else a draw from
    softmax(z / temperature) over the ``top_k`` largest logits (all when 0)."""
    if temperature == 0:
        return jnp.argmax(z, axis=-1)
    z = z / temperature
    if 0 < top_k < z.shape[-1]:
        kth = jax.lax.top_k(z, top_k)[0][:, -1:]  # (N, 1) the k-th largest
        z = jnp.where(z < kth, -jnp.inf, z)
    return jax.random.categorical(key, z, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "n_new", "temperature", "top_k"))
def _decode(model, params, state, prompts, key, n_new, temperature, top_k):
    n, p = prompts.shape
    buf = jnp.concatenate([prompts, jnp.zeros((n, n_new), prompts.dtype)], axis=1)  # (N, P+n)
    keys = jax.random.split(key, n_new)

    def step(i, buf):
        # Causal attention: positions after P + i − 1 (still zeros) do not affect its logits,
        # so the whole fixed-size buffer is fed each step and one shape compiles once.
        out, _ = model.apply(params, state, buf[:, :-1], key=None, train=False)
        last = _last_logits(out, p - 1 + i)  # (N, V)
        nxt = sample_next(last, keys[i], temperature, top_k).astype(buf.dtype)  # (N,)
        return jax.lax.dynamic_update_index_in_dim(buf, nxt[:, None], p + i, axis=1)

    buf = jax.lax.fori_loop(0, n_new, step, buf)
    return buf[:, p:]


def _check(where, prompts, n_new):
    prompts = jnp.asarray(prompts)
    if prompts.ndim != 2 or not jnp.issubdtype(prompts.dtype, jnp.integer) or not prompts.size:
        raise ValueError(
            f"{where}: prompts must be an integer array (N, P) with P >= 1, got shape "
            f"{tuple(prompts.shape)} dtype {prompts.dtype}"
        )
    if isinstance(n_new, bool) or not isinstance(n_new, int) or n_new < 1:
        raise ValueError(f"{where}: n_new must be a positive int, got {n_new!r}")
    return prompts


def decode(model, params, state, prompts, n_new: int, sampling: Sampling | None = None):
    """Continue ``prompts`` (N, P) int by ``n_new`` tokens -> (N, n_new) int, without a cache.

    Jitted with fixed shapes (one compile per ``(model, N, P, n_new, temperature, top_k)``):
    each step runs the model on the whole (N, P + n_new − 1) buffer, which must fit the model's
    context, and samples at the last written position (`sample_next`). ``model`` must be
    causal. ``sampling.max_new_tokens`` is not read (``n_new`` is)."""
    prompts, sampling = _check("decode", prompts, n_new), sampling or Sampling()
    key = jax.random.key(sampling.seed)
    return _decode(model, params, state, prompts, key, n_new, sampling.temperature, sampling.top_k)


def greedy_decode(model, params, state, prompts, n_new: int):
    """Greedy continuation of ``prompts`` (N, P) int by ``n_new`` tokens -> (N, n_new) int:
    `decode` at temperature 0."""
    _check("greedy_decode", prompts, n_new)
    return decode(model, params, state, prompts, n_new)


@functools.partial(jax.jit, static_argnames=("model", "n_new", "temperature", "top_k"))
def _decode_cached(model, params, cache, prompts, key, n_new, temperature, top_k):
    out, cache = model.apply(params, cache, prompts, key=None, train=False)  # the prefill
    keys = jax.random.split(key, n_new)
    last = _last_logits(out, prompts.shape[1] - 1)
    first = sample_next(last, keys[0], temperature, top_k).astype(prompts.dtype)

    def step(carry, k):
        nxt, cache = carry
        out, cache = model.apply(params, cache, nxt[:, None], key=None, train=False)
        new = sample_next(_last_logits(out, 0), k, temperature, top_k).astype(prompts.dtype)
        return (new, cache), new

    _, rest = jax.lax.scan(step, (first, cache), keys[1:])  # (n_new − 1, N)
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def decode_cached(model, params, cache, prompts, n_new: int, sampling: Sampling | None = None):
    """Continue ``prompts`` (N, P) int by ``n_new`` tokens -> (N, n_new) int with a KV cache.

    ``cache``: the model's state with empty caches for at least P + n_new − 1 positions (e.g.
    `funcbp.nn.llama.init_cache`). The prompt runs once (T = P), then each new token once
    (T = 1), inside one jitted `lax.scan`; sampling as in `decode` (the same keys: at
    temperature 0 both give the same tokens)."""
    prompts, sampling = _check("decode_cached", prompts, n_new), sampling or Sampling()
    key = jax.random.key(sampling.seed)
    return _decode_cached(model, params, cache, prompts, key, n_new, sampling.temperature,
                          sampling.top_k)  # fmt: skip
