"""The one walk over layers: forward (storing residuals) and the explicit reverse pass.

Every model is a tree of layers (`funcbp.nn.Layer`): *leaves* compute (an op, a reshape) and
*combinators* (``serial``, ``residual``, ``tie``, ``remat``) compose. This module holds the only
loop over layers. For a chain ``x_0 → f_1 → x_1 → … → f_n → x_n → loss`` it is the classic
derivation as code:

1. forward (`walk`): run each layer in order, storing its residuals — the layer's input,
   output and weights as the op chose to keep them (the *tape*);
2. loss: ``e = loss(x_n, y)``; seed the reverse pass with ``dE/dE = 1``;
3. backward (`walk_back`): walk the layers in reverse, each ``backward`` (the ops' hand ``bwd``)
   turning ``dE/dx_n`` into ``dE/dx_{n-1}`` and ``dE/dW_n`` — every gradient is computed from
   the stored (pre-update) weights;
4. only then may an optimizer update all weights at once.

The *sources* of a gradient share the walk (one word for one concept, `SOURCES`): ``"hand"``
runs each leaf's ``apply`` through the ops' `jax.custom_vjp` functions (`jax.grad` then calls
the hand ``bwd`` rules), ``"autodiff"`` runs the ops' plain references (`jax.grad`
differentiates them), ``"explicit"`` runs each leaf's ``forward`` and keeps the tape for
`walk_back` — no `jax.grad`, `jax.vjp` or custom_vjp machinery at all — and ``"forward"`` runs
the ops' `jax.custom_jvp` functions (their hand JVP rules: forward mode, Hessians).

An optional *tap* observes the walk (the divergence report uses it): before a leaf runs
(``tap.enter``, which may return perturbed params and input), after it (``tap.leave``, which
may return a perturbed output) and after its backward (``tap.backward``). Paths name leaves by
the keys of their params in the model's params tree, so ``('blocks', 3, 'attn', 'qkv')`` is the
layer whose weight is ``params['blocks'][3]['attn']['qkv']['w']``.

Everything here is jittable: the tape is a pytree of arrays plus static Python values.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from funcbp.ops import Op

__all__ = [
    "SOURCES",
    "Tap",
    "check_source",
    "child_state",
    "layer_keys",
    "loss_and_grad",
    "loss_inputs",
    "path_str",
    "run_layer",
    "backward_layer",
    "walk",
    "walk_back",
]

SOURCES = ("hand", "explicit", "autodiff", "forward")
"""Where a gradient comes from: the hand VJPs under `jax.grad`, the explicit reverse pass,
`jax.grad` of the plain references (the ground truth), or the hand JVPs (each op's
`forward_mode`: `jax.jvp`, `jax.hessian` and forward-over-reverse run through hand rules only;
`jax.grad` transposes them)."""

Path = tuple[Hashable, ...]


def check_source(source: str, where: str = "source") -> str:
    """``source`` if it is one of `SOURCES`, else a ``ValueError`` naming ``where``."""
    if source not in SOURCES:
        raise ValueError(f"{where} must be one of {SOURCES}, got {source!r}")
    return source


def path_str(path: Path) -> str:
    """``('blocks', 3, 'attn')`` -> ``"blocks.3.attn"`` (``"·"`` for the root)."""
    return ".".join(str(p) for p in path) or "·"


class Tap(Protocol):
    """An observer of the walk (all three methods are called for leaf layers only)."""

    def enter(self, path: Path, layer, params, x) -> tuple[Any, Any]:
        """Before the leaf at ``path`` runs: returns the ``(params, x)`` it runs on."""

    def leave(self, path: Path, layer, y) -> Any:
        """After it ran: returns the output passed on."""

    def backward(self, path: Path, layer, params, residuals, dy, grads) -> None:
        """After its explicit backward turned ``dy`` into ``grads = (dparams, dx)``."""


def layer_keys(key, n: int) -> list:
    """One independent key per layer (``None`` for all when ``key`` is ``None``)."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def run_layer(layer, params, state, x, *, key, train, source, tap=None, path: Path = ()):
    """Run one layer: ``(y, new_state, residuals)``; residuals are ``None`` unless
    ``source == "explicit"``. Combinators walk their own children (passing ``tap`` and
    ``path`` on); leaves are observed by ``tap``."""
    if layer.children:
        kw = dict(key=key, train=train, tap=tap, path=path)
        if source == "explicit":
            return layer.forward(params, state, x, **kw)
        y, new_state = layer.apply(params, state, x, source=source, **kw)
        return y, new_state, None
    if tap is not None:
        params, x = tap.enter(path, layer, params, x)
    if source == "explicit":
        y, new_state, residuals = layer.forward(params, state, x, key=key, train=train)
    else:
        y, new_state = layer.apply(params, state, x, key=key, train=train, source=source)
        residuals = None
    if tap is not None:
        y = tap.leave(path, layer, y)
    return y, new_state, residuals


def backward_layer(layer, params, residuals, dy, *, tap=None, path: Path = ()):
    """One layer's explicit backward: ``dy -> (dparams, dx)``."""
    if layer.children:
        return layer.backward(params, residuals, dy, tap=tap, path=path)
    grads = layer.backward(params, residuals, dy)
    if tap is not None:
        tap.backward(path, layer, params, residuals, dy, grads)
    return grads


def child_state(state, name):
    """``state[name]``; an empty state (``{}``, ``()``, ``None``: a stateless model) gives
    every child ``{}``."""
    return state[name] if state else {}


def walk(children: Sequence, params, state, x, *, keys, train, source, tap=None, path=()):
    """Run ``children`` (``(name, layer)`` pairs) in order: ``(y, new_state, tape)``.

    ``params[name]``/``state[name]`` are each child's (a dict or a tuple indexed by position);
    ``keys`` one PRNG key (or None) per child. ``new_state`` and ``tape`` are dicts by name.
    """
    new_state, tape = {}, {}
    for (name, layer), k in zip(children, keys, strict=True):
        x, new_state[name], tape[name] = run_layer(
            layer, params[name], child_state(state, name), x,
            key=k, train=train, source=source, tap=tap, path=(*path, name),
        )  # fmt: skip
    return x, new_state, tape


def walk_back(children: Sequence, params, tape, dy, *, tap=None, path=()):
    """Walk ``children`` in reverse: ``dE/dx_n → (dE/dW_n, dE/dx_{n-1})``.

    Returns ``(grads, dx)``: ``grads`` a dict by name, ``dx`` the gradient of the first child's
    input (``None`` when it is not differentiable, e.g. integer ids).
    """
    grads = {}
    for name, layer in reversed(tuple(children)):
        grads[name], dy = backward_layer(
            layer, params[name], tape[name], dy, tap=tap, path=(*path, name)
        )
    return grads, dy


def loss_inputs(out) -> tuple:
    """The loss's model-side arrays: ``(out,)``, or a tuple output's arrays (a fused head's
    ``(h, E)``) with their float arrays in one dtype, the widest among them. Under mixed
    precision (`funcbp.nn.precision.compute_in`) the head's activation ``h`` is bfloat16 while
    its table ``E`` is the float32 master: the fused loss is then formed in float32, as a full
    head's logits are, and ``dh`` goes back in ``h``'s dtype (the cast's VJP, or
    `loss_and_grad`'s cast), while ``dE`` is never rounded to bfloat16."""
    if not isinstance(out, tuple):
        return (out,)
    floats = [a.dtype for a in out if jnp.issubdtype(a.dtype, jnp.floating)]
    wide = jnp.result_type(*floats) if floats else None
    return tuple(
        a.astype(wide) if wide is not None and jnp.issubdtype(a.dtype, jnp.floating) else a
        for a in out
    )


def loss_and_grad(
    model, loss_op: Op, params, state, x, y, *, key=None, train=True, tap=None, seed=1.0
):
    """``((loss, (new_state, outputs)), grads)`` by the explicit reverse pass.

    The same contract as ``jax.value_and_grad(loss_fn, has_aux=True)``: the loss is
    ``loss_op(model(x), y)`` (``loss_op(*model(x), y)`` for a tuple output) and ``grads`` has
    the structure of ``params``. ``seed`` is dE/dE (1; a loss scale S gives the gradients of
    S·loss, `funcbp.training.loss_scale`).
    """
    out, new_state, tape = run_layer(
        model, params, state, x, key=key, train=train, source="explicit", tap=tap
    )
    outs = loss_inputs(out)  # a tuple output: loss(*out, y), its floats in one dtype
    loss, loss_residuals = loss_op.fwd(*outs, y)
    seed = jnp.asarray(seed, loss.dtype)  # dE/dE = 1 (or the loss scale)
    grads = tuple(loss_op.bwd(loss_residuals, seed))
    if isinstance(out, tuple):  # each cotangent in its output's dtype (undo loss_inputs' cast)
        pairs = zip(grads[: len(out)], out, strict=True)
        dout = tuple(g if g is None else g.astype(o.dtype) for g, o in pairs)
    else:
        dout = grads[0]
    grads, _ = backward_layer(model, params, tape, dout, tap=tap)
    return (loss, (new_state, out)), grads
