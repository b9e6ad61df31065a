"""The NaN guard of the training step: which tensor of a step is non-finite.

A step never writes a non-finite number into the params: when the loss, an input or a gradient
is NaN/Inf (or the update would make a param non-finite), the step leaves params and optimizer
state unchanged and reports *which* tensor was bad in ``metrics["finite"]`` (one flag per
tensor, named by `finite_flag_names`); `funcbp.training.loop` then stops with a message naming
the step and the tensor, keeping the last good checkpoint.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["finite_flag_names", "guard"]


def _finite(tree) -> jax.Array:
    """True iff every element of every leaf is finite: ``Σ x·0`` is 0 for finite x and NaN for
    ±inf or NaN, so one fused multiply-reduce per leaf decides it exactly (no overflow: the
    products are all 0)."""
    total = sum(jnp.sum(x * 0) for x in jax.tree.leaves(tree))
    return jnp.isfinite(total)


def finite_flag_names(params) -> list[str]:
    """Names of the entries of ``metrics["finite"]`` for a model with these ``params`` (or
    gradients: the same tree), in the order the step checks them: the input batch, the loss,
    each gradient leaf (as a `jax.tree_util.keystr` path), the params after the update."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return ["input batch x", "loss", *(f"gradient {p}" for p in paths), "params after the update"]


def guard(x, loss, grads, new_params) -> tuple[jax.Array, jax.Array]:
    """``(flags, grad_norm)``: one bool per tensor of `finite_flag_names`, and ‖grads‖₂.

    A gradient leaf's flag is ``isfinite(Σ g²)``: the squared norm is needed for ``grad_norm``
    anyway, so finiteness costs no second pass over the gradients (which also lets XLA keep
    them out of temporary memory). It is false for any NaN/±inf entry and also when ‖g‖² itself
    overflows (‖g‖ > ~1.8e19 in float32): a divergence the step refuses too. The input and the
    updated params are checked exactly (`_finite`). The loss and gradient checks are one
    ``isfinite`` over a stacked vector rather than one boolean scalar each (fewer one-byte
    buffers for XLA to pack); the cost of the guard is measured in benchmarks/RESULTS.md.
    """
    g_sq = [jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)]
    middle = jnp.isfinite(jnp.stack([loss, *(jnp.asarray(s, loss.dtype) for s in g_sq)]))
    flags = jnp.concatenate([_finite(x)[None], middle, _finite(new_params)[None]])
    grad_norm = jnp.sqrt(sum(g_sq)) if g_sq else jnp.zeros((), jnp.float32)
    return flags, grad_norm
