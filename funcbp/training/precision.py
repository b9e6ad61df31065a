"""Precision policies: float32 masters, compute in float32, bfloat16 or float16.

=======  ==========  ==================  ===========================================
name     params      ops compute in      gradients
=======  ==========  ==================  ===========================================
f32      float32     float32             float32
bf16     float32     bfloat16            float32 (weight sums accumulated in float32)
f16      float32     float16             float32, dynamic loss scaling (`loss_scale`)
=======  ==========  ==================  ===========================================

Parameters and optimizer state always stay float32 ("masters"); the model's output (the logits)
comes back in float32, so the loss is formed in float32. `apply_policy` rewrites a built model
(`funcbp.nn.precision.compute_in`: no composition changes), `wrap_optimizer` adds float16's loss
scaling. `funcbp.training.fit` does both from ``FitConfig(precision=...)``; ``funcbp train
--precision bf16`` sets it.

Policies follow DeepMind's jmp (param/compute/output dtypes), with one difference that matters
under `jax.grad` and data parallelism: the casts sit inside each op's custom VJP
(`funcbp.ops.Op.cast`), so a weight gradient is accumulated in float32 and all-reduced once in
float32 — jmp casts the params before the model runs, and their gradients then pass through the
cast's transpose in half precision (JAX #27496).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax

from funcbp.nn.core import Layer
from funcbp.nn.precision import compute_in
from funcbp.training.loss_scale import dynamic_loss_scale

__all__ = ["POLICIES", "PRECISIONS", "Policy", "apply_policy", "get_policy", "wrap_optimizer"]


@dataclasses.dataclass(frozen=True)
class Policy:
    """``name``; ``compute_dtype`` the ops run in (``None``: the params' own, float32);
    ``loss_scale``: the initial dynamic loss scale (float16: 2¹⁵, as jmp), ``None`` for none;
    params and output stay float32."""

    name: str
    compute_dtype: Any = None
    loss_scale: float | None = None
    param_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32


POLICIES = {
    "f32": Policy("f32"),
    "bf16": Policy("bf16", jnp.bfloat16),
    "f16": Policy("f16", jnp.float16, loss_scale=2.0**15),
}
PRECISIONS = tuple(POLICIES)


def get_policy(precision: str | Policy) -> Policy:
    """A `Policy` from its name (``"f32"``, ``"bf16"``, ``"f16"``) or itself."""
    if isinstance(precision, Policy):
        return precision
    if precision not in POLICIES:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return POLICIES[precision]


def apply_policy(model: Layer, precision: str | Policy) -> Layer:
    """``model`` with its ops computing in the policy's dtype and a float32 output."""
    policy = get_policy(precision)
    return compute_in(model, policy.compute_dtype, output_dtype=policy.output_dtype)


def wrap_optimizer(
    optimizer: optax.GradientTransformation, precision: str | Policy
) -> optax.GradientTransformation:
    """``optimizer`` with dynamic loss scaling where the policy asks for it (float16)."""
    initial = get_policy(precision).loss_scale
    return optimizer if initial is None else dynamic_loss_scale(optimizer, initial=initial)
