"""Combinators: models as compositions. Each owns its (hand) backward; none loops over layers
itself — `serial` hands its children to the one walk (`funcbp.backprop.walk`).

* `serial` — children in order, positional (params a tuple) or named (params a dict, so a
  parameter's path reads like the model: ``['blocks'][3]['attn']['qkv']['w']``).
* `residual` — ``y = x + f(x)``. Backward: the skip passes ``dy`` unchanged and the branch's
  ``dx`` adds to it, ``dx = dy + f.backward(dy).dx`` (micrograd's ``+=``, llm.c's
  ``residual_backward``).
* `tie` — weight sharing: one array used at two places of a model (a tied token embedding and
  output head). Backward: the shared array's gradient is the sum of its uses' gradients.
* `parallel` — a fan-out: the same input to every branch, a tuple of their outputs (stax's
  ``FanOut`` + ``parallel``). Backward: each branch gets its own part of ``dy`` and their
  ``dx`` add up (the input was used once per branch).

`funcbp.nn.remat` holds the recomputing wrapper. Combinators are transparent to the params
tree where they add no level (`residual`, `tie` and `remat` have their child's params).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from funcbp.backprop import (
    backward_layer,
    check_source,
    child_state,
    layer_keys,
    run_layer,
    walk,
    walk_back,
)
from funcbp.nn.core import Layer

__all__ = ["pack", "parallel", "residual", "serial", "tie"]


def _check_layer(where: str, name, layer) -> None:
    if not isinstance(layer, Layer):
        raise TypeError(f"{where}: child {name!r} is {type(layer).__name__}, not a Layer")


def pack(children: Sequence, values: dict) -> Any:
    """Values by child name -> the container of a serial's params: a tuple when the children
    are positional (names 0, 1, …), else a dict in the children's order."""
    names = [n for n, _ in children]
    if names == list(range(len(names))):
        return tuple(values[n] for n in names)
    return {n: values[n] for n in names}


def serial(*layers: Layer, name: str | None = None, **named: Layer) -> Layer:
    """Compose layers in order: ``serial(a, b, c)`` (params a tuple, one entry per layer) or
    ``serial(ln=LayerNorm(), fc=Dense(8))`` (params a dict keyed by the names).

    ``apply``/``forward`` run the children through the walk (`funcbp.backprop.walk`) and
    ``backward`` walks them in reverse (`funcbp.backprop.walk_back`). Each child gets its own
    PRNG key (``jax.random.split`` of the serial's, in order).
    """
    if layers and named:
        raise ValueError("serial: give the layers either all positionally or all by name")
    children = tuple(enumerate(layers)) if layers else tuple(named.items())
    if not children:
        raise ValueError("serial: needs at least one layer")
    for child_name, layer in children:
        _check_layer("serial", child_name, layer)
    n = len(children)

    def init(key, input_shape, dtype):
        params, state, shape = {}, {}, input_shape
        for (child, layer), k in zip(children, layer_keys(key, n), strict=True):
            shape, params[child], state[child] = layer.init(k, shape, dtype)
        return shape, pack(children, params), pack(children, state)

    def apply(params, state, x, *, key=None, train=False, source="hand", tap=None, path=()):
        check_source(source, "serial: source")
        y, new_state, _ = walk(
            children, params, state, x,
            keys=layer_keys(key, n), train=train, source=source, tap=tap, path=path,
        )  # fmt: skip
        return y, pack(children, new_state)

    def forward(params, state, x, *, key=None, train=False, tap=None, path=()):
        y, new_state, tape = walk(
            children, params, state, x,
            keys=layer_keys(key, n), train=train, source="explicit", tap=tap, path=path,
        )  # fmt: skip
        return y, pack(children, new_state), tape

    def backward(params, tape, dy, *, tap=None, path=()):
        grads, dx = walk_back(children, params, tape, dy, tap=tap, path=path)
        return pack(children, grads), dx

    name = name or "serial"
    return Layer(name, init, apply, forward, backward, children=children, kind="serial",
                 rebuild=lambda new: _serial_of(new, name))  # fmt: skip


def _serial_of(children, name):
    """`serial` over ``(name, layer)`` pairs: positional when the names are 0, 1, …"""
    if [n for n, _ in children] == list(range(len(children))):
        return serial(*(layer for _, layer in children), name=name)
    return serial(**dict(children), name=name)


def residual(branch: Layer, *, name: str | None = None) -> Layer:
    """``y = x + branch(x)`` (a residual connection); params and state are ``branch``'s.

    Backward: ``dx = dy + branch.backward(dy).dx`` — the gradient goes down both the skip and
    the branch and adds up where they meet; ``dparams`` are the branch's.
    """
    _check_layer("residual", "branch", branch)
    children = ((None, branch),)

    def init(key, input_shape, dtype):
        shape, params, state = branch.init(key, input_shape, dtype)
        if tuple(shape) != tuple(input_shape):
            raise ValueError(
                f"residual: the branch {branch.name} maps {tuple(input_shape)} to "
                f"{tuple(shape)}; y = x + f(x) needs f to keep the shape"
            )
        return shape, params, state

    def apply(params, state, x, *, key=None, train=False, source="hand", tap=None, path=()):
        fx, new_state, _ = run_layer(
            branch, params, state, x, key=key, train=train, source=source, tap=tap, path=path
        )
        return x + fx, new_state

    def forward(params, state, x, *, key=None, train=False, tap=None, path=()):
        fx, new_state, tape = run_layer(
            branch, params, state, x, key=key, train=train, source="explicit", tap=tap, path=path
        )
        return x + fx, new_state, tape

    def backward(params, tape, dy, *, tap=None, path=()):
        dparams, dx = backward_layer(branch, params, tape, dy, tap=tap, path=path)
        return dparams, dy + dx  # skip + branch

    remade = lambda new: residual(new[0][1], name=name)
    name = name or f"residual({branch.name})"
    return Layer(name, init, apply, forward, backward, children=children, kind="residual",
                 rebuild=remade)  # fmt: skip


# -- paths into nested params (dicts and tuples) --------------------------------------------
def get_in(tree, path: Sequence[Hashable]):
    """``tree[p0][p1]…``."""
    for p in path:
        tree = tree[p]
    return tree


def set_in(tree, path: Sequence[Hashable], value):
    """A copy of ``tree`` with ``tree[p0][p1]…`` set to ``value`` (dicts and tuples)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, tuple):
        return tuple(set_in(v, rest, value) if i == head else v for i, v in enumerate(tree))
    return {**tree, head: set_in(tree.get(head, {}), rest, value)}


def del_in(tree, path: Sequence[Hashable]):
    """A copy of ``tree`` without the dict entry at ``path``."""
    head, rest = path[0], path[1:]
    if not rest:
        return {k: v for k, v in tree.items() if k != head}
    if isinstance(tree, tuple):
        return tuple(del_in(v, rest) if i == head else v for i, v in enumerate(tree))
    return {**tree, head: del_in(tree[head], rest)}


def _lookup(tree, path, where):
    try:
        return get_in(tree, path)
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{where}: the params have no entry at {list(path)}") from None


def tie(
    model: Layer, *, shared: Sequence[Hashable], to: Sequence[Hashable], name: str | None = None
) -> Layer:
    """``model`` with the parameter at path ``shared`` made the SAME array as the one at ``to``
    (e.g. ``tie(gpt, shared=("head", "table"), to=("tok", "table"))``: the output head reads
    the token embedding table). The tied model's params omit ``shared``.

    Backward: the table is used twice, so its gradient is the sum of both uses' gradients,
    ``d to += d shared``.
    """
    _check_layer("tie", "model", model)
    shared, to = tuple(shared), tuple(to)
    where = f"tie({model.name}, {list(shared)} -> {list(to)})"

    def expand(params):
        return set_in(params, shared, get_in(params, to))

    def init(key, input_shape, dtype):
        shape, params, state = model.init(key, input_shape, dtype)
        a, b = _lookup(params, shared, where), _lookup(params, to, where)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"{where}: {a.dtype}{a.shape} cannot share {b.dtype}{b.shape}")
        return shape, del_in(params, shared), state

    def apply(params, state, x, *, key=None, train=False, source="hand", tap=None, path=()):
        y, new_state, _ = run_layer(
            model, expand(params), state, x,
            key=key, train=train, source=source, tap=tap, path=path,
        )  # fmt: skip
        return y, new_state

    def forward(params, state, x, *, key=None, train=False, tap=None, path=()):
        return run_layer(
            model, expand(params), state, x,
            key=key, train=train, source="explicit", tap=tap, path=path,
        )  # fmt: skip

    def backward(params, tape, dy, *, tap=None, path=()):
        grads, dx = backward_layer(model, expand(params), tape, dy, tap=tap, path=path)
        both = get_in(grads, to) + get_in(grads, shared)  # the two uses' gradients add up
        return set_in(del_in(grads, shared), to, both), dx

    children = ((None, model),)
    remade = lambda new: tie(new[0][1], shared=shared, to=to, name=name)
    name = name or f"tied({model.name})"
    return Layer(name, init, apply, forward, backward, children, kind="tie", rebuild=remade)


def _add(a, b):
    """dx of two uses of one input: their sum (``None``: an integer input, no gradient)."""
    if a is None or b is None:
        return a if b is None else b
    return jax.tree.map(jnp.add, a, b)


def parallel(*layers: Layer, name: str | None = None, **named: Layer) -> Layer:
    """A fan-out: x -> ``(f₁(x), f₂(x), …)``, every branch fed the same input; params a dict
    keyed by the names (``parallel(gate=…, up=…)``) or a tuple (positional branches).

    The output is a tuple in the branches' order. Backward: branch i turns ``dy[i]`` into its
    params' gradients and a ``dxᵢ``; x fed every branch, so ``dx = Σᵢ dxᵢ`` (the fan-out's sum,
    micrograd's ``+=``). Each branch gets its own PRNG key.
    """
    if layers and named:
        raise ValueError("parallel: give the branches either all positionally or all by name")
    children = tuple(enumerate(layers)) if layers else tuple(named.items())
    if len(children) < 2:
        raise ValueError(f"parallel: needs at least two branches, got {len(children)}")
    for child_name, layer in children:
        _check_layer("parallel", child_name, layer)
    n = len(children)

    def init(key, input_shape, dtype):
        params, state, shapes = {}, {}, []
        for (child, layer), k in zip(children, layer_keys(key, n), strict=True):
            shape, params[child], state[child] = layer.init(k, input_shape, dtype)
            shapes.append(shape)
        return tuple(shapes), pack(children, params), pack(children, state)

    def run(params, state, x, key, train, source, tap, path):
        outs, new_state, tape = [], {}, {}
        for (child, layer), k in zip(children, layer_keys(key, n), strict=True):
            y, new_state[child], tape[child] = run_layer(
                layer, params[child], child_state(state, child), x,
                key=k, train=train, source=source, tap=tap, path=(*path, child),
            )  # fmt: skip
            outs.append(y)
        return tuple(outs), pack(children, new_state), tape

    def apply(params, state, x, *, key=None, train=False, source="hand", tap=None, path=()):
        check_source(source, "parallel: source")
        y, new_state, _ = run(params, state, x, key, train, source, tap, path)
        return y, new_state

    def forward(params, state, x, *, key=None, train=False, tap=None, path=()):
        return run(params, state, x, key, train, "explicit", tap, path)

    def backward(params, tape, dy, *, tap=None, path=()):
        if len(dy) != n:
            raise ValueError(f"parallel: dy has {len(dy)} parts for {n} branches")
        grads, dx = {}, None
        for (child, layer), d in zip(children, dy, strict=True):
            grads[child], dxi = backward_layer(
                layer, params[child], tape[child], d, tap=tap, path=(*path, child)
            )
            dx = _add(dx, dxi)  # every branch read x: the fan-out sums
        return pack(children, grads), dx

    remade = lambda new: (
        parallel(*(c for _, c in new), name=name) if layers else parallel(name=name, **dict(new))
    )
    name = name or "parallel"
    return Layer(name, init, apply, forward, backward, children=children, kind="parallel",
                 rebuild=remade)  # fmt: skip
