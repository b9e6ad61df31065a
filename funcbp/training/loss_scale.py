"""Dynamic loss scaling for float16 compute, as an optax wrapper (the rule of DeepMind's jmp).

float16 has 5 exponent bits: gradients of activations below ~6e-8 flush to zero. Multiplying the
loss by a scale S multiplies every backward cotangent by S (they are linear in the seed), lifting
them into float16's range; the float32 gradients are divided by S before the update. S is chosen
dynamically::

    S = 2**15, good = 0
    each step:  grads = grad(S · loss) / S
                if all grads finite:  good += 1;  if good == period: S *= factor, good = 0
                else:                 skip the update;  S = max(minimum, S / factor);  good = 0

`dynamic_loss_scale(optimizer)` keeps ``(S, good, skipped, minimum)`` in the optimizer state
(`LossScaleState`), so checkpoints, resume and sharding carry it like any other state. Its
``update`` takes the *unscaled* gradients, skips (zero updates, inner state unchanged) when they
are not finite, and adjusts S. The training step (`funcbp.training.step`) scales the loss by
`current_scale` when the state carries one, and reports a skipped step as a metric instead of a
failure: only a non-finite step at the minimum scale (or a non-finite loss or input) stops `fit`.

Why not jmp itself: it is ~60 lines, unmaintained since 2023, and its policy casts params
*outside* the differentiated function (so gradients come back through the cast in half
precision — the trap funcbp's `Op.cast` avoids); the loss scale rule is reproduced here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["LossScaleState", "adjust", "all_finite", "current_scale", "dynamic_loss_scale"]


class LossScaleState(NamedTuple):
    """``scale`` S (float32 scalar), ``good`` finite steps since S last changed (int32),
    ``skipped`` steps skipped so far (int32), ``minimum`` the floor of S, ``inner`` the wrapped
    optimizer's state."""

    scale: jax.Array
    good: jax.Array
    skipped: jax.Array
    minimum: jax.Array
    inner: Any


def all_finite(grads) -> jax.Array:
    """True iff ``Σ g²`` of every leaf is finite: the NaN guard's test (`funcbp.training.guard`),
    so the step and the wrapper agree on which steps are bad (XLA computes it once)."""
    sums = [jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)]
    return jnp.all(jnp.isfinite(jnp.stack(sums))) if sums else jnp.array(True)


def adjust(scale, good, finite, *, period: int, factor: float, minimum) -> tuple:
    """jmp's rule: ``(scale, good)`` after a step whose gradients were ``finite`` (or not)."""
    grow = good + 1 >= period
    bigger = scale * factor
    grown = jnp.where(grow & jnp.isfinite(bigger), bigger, scale)
    new_scale = jnp.where(finite, grown, jnp.maximum(minimum, scale / factor))
    new_good = jnp.where(finite & ~grow, good + 1, 0).astype(good.dtype)
    return new_scale.astype(scale.dtype), new_good


def dynamic_loss_scale(
    inner: optax.GradientTransformation,
    *,
    initial: float = 2.0**15,
    period: int = 2000,
    factor: float = 2.0,
    minimum: float = 1.0,
) -> optax.GradientTransformation:
    """``inner`` with dynamic loss scaling (module doc). ``update(grads, state, params)`` takes
    the unscaled float32 gradients (``grad(S·loss)/S``)."""
    if not (isinstance(period, int) and period >= 1 and factor > 1 and 0 < minimum <= initial):
        raise ValueError(
            "dynamic_loss_scale: needs period >= 1 (an int), factor > 1 and 0 < minimum <= "
            f"initial; got period={period!r}, factor={factor!r}, minimum={minimum!r}, "
            f"initial={initial!r}"
        )

    def init(params):
        return LossScaleState(
            scale=jnp.asarray(initial, jnp.float32),
            good=jnp.zeros((), jnp.int32),
            skipped=jnp.zeros((), jnp.int32),
            minimum=jnp.asarray(minimum, jnp.float32),
            inner=inner.init(params),
        )

    def update(grads, state, params=None):
        finite = all_finite(grads)
        updates, new_inner = inner.update(grads, state.inner, params)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        updates = keep(updates, jax.tree.map(jnp.zeros_like, updates))
        scale, good = adjust(
            state.scale, state.good, finite, period=period, factor=factor, minimum=state.minimum
        )
        skipped = state.skipped + (~finite).astype(state.skipped.dtype)
        return updates, LossScaleState(scale, good, skipped, state.minimum,
                                       keep(new_inner, state.inner))  # fmt: skip

    return optax.GradientTransformation(init, update)


def current_scale(opt_state) -> jax.Array | None:
    """The loss scale S held by ``opt_state`` (`dynamic_loss_scale`), or ``None``."""
    return opt_state.scale if isinstance(opt_state, LossScaleState) else None
