"""Save vs recompute: a layer (or each segment of a `serial`) keeps only its input and re-runs
its forward on the backward pass.

* `remat(layer)` — any layer, params unchanged: on the hand and autodiff paths its ``apply`` is
  a `jax.checkpoint` (``policy`` says what may still be saved inside, `POLICIES`); in the
  explicit engine ``forward`` keeps only ``(x, state, key)`` and ``backward`` re-runs the
  layer's ``forward`` to rebuild the residuals right before walking it backwards. An
  optimization barrier ties the recomputation to the incoming gradient, so XLA schedules it in
  the backward pass instead of merging it with the forward (which would keep the residuals).
* `remat_segments(model, k)` — a `serial`'s children in consecutive segments of ``k``, each
  rematerialised as above; same params, state and PRNG keys as ``model``.

Under `jax.checkpoint` an op's ``fwd`` is re-run on the backward pass, then its hand ``bwd``
runs as usual: gradients are unchanged (tested equal), only memory and time change
(``python -m benchmarks.remat``; numbers in benchmarks/RESULTS.md). The per-op form is
`funcbp.ops.Op.remat` (``op_layer(..., remat=True)``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from funcbp.backprop import (
    backward_layer,
    check_source,
    child_state,
    layer_keys,
    run_layer,
    walk,
    walk_back,
)
from funcbp.nn.combinators import pack
from funcbp.nn.core import Layer

__all__ = ["POLICIES", "remat", "remat_segments", "resolve_policy"]

POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def resolve_policy(policy: str | Callable | None) -> Callable | None:
    """A policy name from `POLICIES`, a `jax.checkpoint_policies` callable, or None (save
    nothing but the inputs)."""
    if policy is None or callable(policy):
        return policy
    if policy not in POLICIES:
        raise ValueError(
            f"remat: policy must be one of {sorted(POLICIES)}, a callable or None, got {policy!r}"
        )
    return POLICIES[policy]


def _recompute(run_forward, run_backward, x, state, keys, train, dy):
    """The explicit engine's recompute: re-run the forward once ``dy`` exists, then walk back."""
    x, dy = jax.lax.optimization_barrier((x, dy))  # recompute only once dy exists
    tape = run_forward(x, state, keys, train)
    return run_backward(tape, dy)


def remat(layer: Layer, policy: str | Callable | None = None) -> Layer:
    """``layer`` recomputed on the backward pass instead of saving its insides; see the module
    doc. Params, state, values and gradients are ``layer``'s."""
    policy = resolve_policy(policy)

    def apply(params, state, x, *, key=None, train=False, source="hand", tap=None, path=()):
        if check_source(source, "remat: source") == "explicit":
            y, new_state, _ = forward(params, state, x, key=key, train=train, tap=tap, path=path)
            return y, new_state

        def fn(p, s, x, k):
            y, new_state, _ = run_layer(
                layer, p, s, x, key=k, train=train, source=source, tap=tap, path=path
            )
            return y, new_state

        return jax.checkpoint(fn, policy=policy)(params, state, x, key)

    def forward(params, state, x, *, key=None, train=False, tap=None, path=()):
        y, new_state, _ = run_layer(
            layer, params, state, x, key=key, train=train, source="explicit", tap=tap, path=path
        )  # its residuals are dropped: only what enters the layer is kept
        return y, new_state, (x, state, key, train)

    def backward(params, tape, dy, *, tap=None, path=()):
        x, state, key, train = tape

        def run_forward(x, state, key, train):
            return run_layer(
                layer, params, state, x, key=key, train=train, source="explicit", path=path
            )[2]

        def run_backward(residuals, dy):
            return backward_layer(layer, params, residuals, dy, tap=tap, path=path)

        return _recompute(run_forward, run_backward, x, state, key, train, dy)

    children = ((None, layer),)
    return Layer(f"remat({layer.name})", layer.init, apply, forward, backward, children, "remat",
                 rebuild=lambda new: remat(new[0][1], policy))  # fmt: skip


def _sub(tree, group):
    """The entries of a serial's params/state for the children of ``group``."""
    return {name: child_state(tree, name) for name, _ in group}


def _segments_apply(groups, policy, params, state, x, keys, **kw):
    """Each segment as one `jax.checkpoint`: ``(y, new_state by name)``."""
    new_state = {}
    for group in groups:

        def fn(p, s, x, ks, group=group):
            y, s, _ = walk(group, p, s, x, keys=ks, **kw)
            return y, s

        ks = [keys[name] for name, _ in group]
        x, s = jax.checkpoint(fn, policy=policy)(_sub(params, group), _sub(state, group), x, ks)
        new_state.update(s)
    return x, new_state


def _segments_forward(groups, params, state, x, keys, *, train, tap, path):
    """Explicit forward keeping only each segment's input, state and keys (its tape)."""
    new_state, tape = {}, []
    for group in groups:
        ks = [keys[name] for name, _ in group]
        tape.append((x, _sub(state, group), ks))
        x, s, _ = walk(
            group, params, state, x, keys=ks, train=train, source="explicit", tap=tap, path=path
        )  # fmt: skip  (the segment's residuals are dropped)
        new_state.update(s)
    return x, new_state, (train, tuple(tape))


def _segments_backward(groups, params, tape, dy, *, tap, path):
    """Walk the segments in reverse, each re-run forward once its ``dy`` exists."""
    train, segments = tape
    grads = {}
    for group, (x, state, ks) in zip(reversed(groups), reversed(segments), strict=True):

        def run_forward(x, state, ks, train, group=group):
            return walk(group, params, state, x, keys=ks, train=train, source="explicit",
                        path=path)[2]  # fmt: skip

        def run_backward(seg_tape, dy, group=group):
            return walk_back(group, params, seg_tape, dy, tap=tap, path=path)

        g, dy = _recompute(run_forward, run_backward, x, state, ks, train, dy)
        grads.update(g)
    return grads, dy


def remat_segments(model: Layer, segment: int, policy: str | Callable | None = None) -> Layer:
    """A `serial` model whose children run in rematerialised segments of ``segment`` layers:
    only each segment's input is kept, its insides are recomputed during the backward pass
    (with Dense→activation pairs, ``segment=2`` keeps one activation per pair instead of two).
    Same params, state and PRNG keys as ``model``."""
    if model.kind != "serial":
        raise ValueError(
            f"remat_segments: segments need a serial model; {model.name} is a {model.kind} "
            f"(use remat(model) for the whole of it)"
        )
    if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
        raise ValueError(f"remat_segments: segment must be a positive int, got {segment!r}")
    policy = resolve_policy(policy)
    children, n = model.children, len(model.children)
    groups = [children[a : a + segment] for a in range(0, n, segment)]
    keyed = lambda key: dict(zip((c for c, _ in children), layer_keys(key, n), strict=True))

    def apply(params, state, x, *, key=None, train=False, source="hand", tap=None, path=()):
        if check_source(source, "remat_segments: source") == "explicit":
            y, new_state, _ = forward(params, state, x, key=key, train=train, tap=tap, path=path)
            return y, new_state
        kw = dict(train=train, source=source, tap=tap, path=path)
        y, new_state = _segments_apply(groups, policy, params, state, x, keyed(key), **kw)
        return y, pack(children, new_state)

    def forward(params, state, x, *, key=None, train=False, tap=None, path=()):
        y, new_state, tape = _segments_forward(
            groups, params, state, x, keyed(key), train=train, tap=tap, path=path
        )
        return y, pack(children, new_state), tape

    def backward(params, tape, dy, *, tap=None, path=()):
        grads, dx = _segments_backward(groups, params, tape, dy, tap=tap, path=path)
        return pack(children, grads), dx

    name = f"remat({model.name}, segment={segment})"
    remade = lambda new: remat_segments(model.rebuild(new), segment, policy)
    return Layer(name, model.init, apply, forward, backward, children, kind="serial",
                 rebuild=remade)  # fmt: skip
