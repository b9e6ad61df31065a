"""Whole-network divergence report: where, walking back from the loss, do hand and autodiff part?

Every *leaf* layer of the model (an op layer, a reshape; the leaves of any composition of
`serial`, `residual`, `tie`, `remat`) gets one row, from the loss backwards, computed two ways
while the one walk (`funcbp.backprop`) runs the model, observed by a tap:

* **hand** — the explicit engine: each leaf's ``forward`` (the ops' ``fwd`` rules, keeping
  residuals), the loss's ``fwd``/``bwd``, then the combinators' and leaves' ``backward`` (the
  ops' hand ``bwd``) in reverse; the tap keeps every leaf's incoming ``dy``, its ``dparams`` and
  ``dx``. No JAX autodiff is involved. (``source="hand"``: `jax.grad` through the custom VJPs
  instead, as training runs.)
* **autodiff** — `jax.grad` of the loss with respect to zero perturbations the tap adds to
  every leaf's input, params and output (``x + εx``, ``p + εp``, ``y + εy``), the model run on
  the ops' plain references. ``∂L/∂εy`` is the TRUE gradient reaching the leaf's output;
  ``∂L/∂εx`` and ``∂L/∂εp`` are what a correct backward of that leaf returns when fed it (for a
  leaf inside a residual or a shared weight, that use's share alone).

Row ``i`` (leaves numbered 0, 1, … in forward order, the loss last) holds the errors of what leaf
``i``'s backward produced — its ``dparams`` and ``dx`` — given the hand ``dy`` from the rows
above. The *first divergence* is the first row, from the loss backwards, whose outputs exceed the
tolerance: every leaf after it passed a correct gradient down, so the bug is in that leaf (or the
loss). The ``local`` columns isolate each leaf completely: its hand ``backward`` fed the TRUE
``dy``. Errors are relative, ‖hand − autodiff‖/‖autodiff‖ per array (`funcbp.check.compare`),
with the tolerance `funcbp.check.MODEL_TOLERANCE` for the dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcbp import ops
from funcbp.backprop import backward_layer, path_str, run_layer
from funcbp.check.gradients import compare
from funcbp.check.model import MODEL_TOLERANCE
from funcbp.nn.core import Layer
from funcbp.training.step import apply_loss

__all__ = ["Divergence", "DivergenceReport", "Row", "divergence_report"]


class Divergence(NamedTuple):
    """Where hand and autodiff first part: the leaf's index in forward order and its name (index
    ``len(leaves)`` is the loss)."""

    index: int
    name: str


@dataclasses.dataclass(frozen=True)
class Row:
    """One leaf layer (or the loss), the errors of what its backward produced.

    ``dy``: error of the incoming ``dL/d(output)`` (None for the loss: its seed is 1);
    ``dparams``: worst error over the leaf's parameter arrays (None without params);
    ``dx``: error of ``dL/d(input)`` (None for integer inputs); ``local_*``: the same, with the
    leaf's hand backward fed the true incoming gradient (None for ``source="hand"``).
    ``path``: where the leaf sits (``"blocks.1.attn.qkv"``).
    """

    index: int
    name: str
    dy: float | None
    dparams: float | None
    dx: float | None
    local_dparams: float | None
    local_dx: float | None
    tol: float
    worst_param: str = ""
    dx_norm: float = 0.0
    path: str = ""

    @property
    def ok(self) -> bool:
        errs = [e for e in (self.dparams, self.dx) if e is not None]
        return all(bool(np.isfinite(e)) and e <= self.tol for e in errs)


@dataclasses.dataclass(frozen=True)
class DivergenceReport:
    """Rows ordered from the loss backwards; ``first_divergence`` or None when all agree."""

    model: str
    dtype: str
    source: str
    rows: tuple[Row, ...]
    loss: float

    @property
    def first_divergence(self) -> Divergence | None:
        for row in self.rows:
            if not row.ok:
                return Divergence(row.index, row.name)
        return None

    @property
    def ok(self) -> bool:
        return self.first_divergence is None

    def __str__(self) -> str:
        lines = [
            f"{self.model} [{self.dtype}] hand ({self.source}) vs autodiff: first divergence "
            f"{self.first_divergence}"
        ]
        for r in self.rows:
            lines.append(
                f"  {r.index:3d} {r.path:28s} {r.name:20s} dparams {r.dparams} dx {r.dx} "
                f"{'ok' if r.ok else 'DIVERGES'}"
            )
        return "\n".join(lines)


# -- taps --------------------------------------------------------------------------------------
def _is_float(a) -> bool:
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.inexact)


def _specs(tree):
    """``(shape, dtype)`` per float leaf of ``tree`` (None for integer leaves, keys, ...)."""
    return [(a.shape, a.dtype) if _is_float(a) else None for a in jax.tree.leaves(tree)]


def _zeros(specs):
    return [None if s is None else jnp.zeros(*s) for s in specs]


def _add(tree, eps):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten([a if e is None else a + e for a, e in zip(leaves, eps, strict=True)])


class _Shapes:
    """Records every leaf (path, layer) in forward order, with the shapes of its input, params
    and output (`zeros` turns them into the perturbations)."""

    def __init__(self):
        self.leaves, self.eps, self._pending = [], {}, None

    def enter(self, path, layer, params, x):
        self._pending = (_specs(x), _specs(params))
        return params, x

    def leave(self, path, layer, y):
        ex, ep = self._pending
        self.leaves.append((path, layer))
        self.eps[path_str(path)] = {"x": ex, "p": ep, "y": _specs(y)}
        return y

    def zeros(self):
        return {k: {part: _zeros(v) for part, v in e.items()} for k, e in self.eps.items()}

    def backward(self, *args):
        pass


class _Perturb:
    """Adds the perturbations ``eps[path]`` to every leaf's input, params and output."""

    def __init__(self, eps):
        self.eps = eps

    def enter(self, path, layer, params, x):
        e = self.eps[path_str(path)]
        return _add(params, e["p"]), _add(x, e["x"])

    def leave(self, path, layer, y):
        return _add(y, self.eps[path_str(path)]["y"])

    def backward(self, *args):
        pass


class _Observe:
    """Keeps each leaf's hand ``dy``, ``dparams``, ``dx`` and its backward fed the true ``dy``."""

    def __init__(self, true_dy):
        self.true_dy, self.seen = true_dy, {}

    def enter(self, path, layer, params, x):
        return params, x

    def leave(self, path, layer, y):
        return y

    def backward(self, path, layer, params, residuals, dy, grads):
        true = jax.tree.unflatten(jax.tree.structure(dy), self.true_dy[path_str(path)])
        self.seen[path_str(path)] = (dy, grads, layer.backward(params, residuals, true))


# -- the two sides ---------------------------------------------------------------------------
def _autodiff_side(model, loss, train, source):
    """``(loss, {path: grads of the perturbations}, dL/dout)`` by jax.grad on ``source``."""

    def side(params, state, x, y, key, eps, eps_out):
        def objective(eps, eps_out):
            out, _, _ = run_layer(
                model, params, state, x, key=key, train=train, source=source, tap=_Perturb(eps)
            )
            return apply_loss(loss.path(source), jax.tree.map(jnp.add, out, eps_out), y)

        return jax.value_and_grad(objective, argnums=(0, 1))(eps, eps_out)

    return side


def _explicit_side(model, loss, train):
    """The explicit engine with the observing tap; returns ``(loss, seen, dL/dout)``."""

    def side(params, state, x, y, key, true_dy):
        tap = _Observe(true_dy)
        out, _, tape = run_layer(
            model, params, state, x, key=key, train=train, source="explicit", tap=tap
        )
        outs = out if isinstance(out, tuple) else (out,)
        value, res = loss.fwd(*outs, y)
        grads = tuple(loss.bwd(res, jnp.ones((), value.dtype)))
        dout = grads[: len(outs)] if isinstance(out, tuple) else grads[0]
        backward_layer(model, params, tape, dout, tap=tap)
        return value, tap.seen, dout

    return side


def _err(a, b, tol) -> tuple[float | None, str]:
    """Worst leaf error of ``a`` vs ``b`` and the worst leaf's path (None when no leaves)."""
    a = [v for v in jax.tree.leaves(a) if v is not None]
    b = [v for v in jax.tree.leaves(b) if v is not None]
    if not b:
        return None, ""
    report = compare(a, b, tol=tol)
    worst = max(report.leaves, key=lambda leaf: leaf.err)
    return report.worst_rel, worst.path


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if _is_float(a) else a, tree)


def _rows(leaves, true, hand, tol):
    """One `Row` per leaf, from the loss backwards. ``true``: ``{path: eps grads}``; ``hand``:
    ``{path: (dy, (dparams, dx), local or None)}``."""
    rows = []
    for i in reversed(range(len(leaves))):
        path, layer = leaves[i]
        key = path_str(path)
        t, (dy, (dparams, dx), local) = true[key], hand[key]
        dp, worst = _err(dparams, t["p"], tol)
        ex = _err(dx, t["x"], tol)[0]
        local_dp = local_dx = None
        if local is not None:
            local_dp, local_dx = _err(local[0], t["p"], tol)[0], _err(local[1], t["x"], tol)[0]
        norm = float(np.sqrt(sum(np.sum(np.square(v)) for v in t["x"] if v is not None)))
        rows.append(
            Row(i, layer.name, _err(dy, t["y"], tol)[0], dp, ex, local_dp, local_dx, tol,
                worst if dp is not None and dp > tol else "", norm, key)
        )  # fmt: skip
    return rows


def divergence_report(
    model: Layer,
    params,
    state,
    x,
    y,
    loss=ops.softmax_cross_entropy,
    key=None,
    dtype=None,
    *,
    train: bool = True,
    source: str = "explicit",
    tol: float | None = None,
) -> DivergenceReport:
    """Compare every leaf's activation and parameter gradients, hand vs autodiff; see the
    module doc.

    Args:
      model: any `Layer` (a composition of combinators and leaves); params, state: its own.
      x, y: a batch (x float or integer ids; y the loss's targets).
      loss: the loss `Op` (``loss(outputs, y)`` -> scalar).
      key: PRNG key for dropout (the same per-layer keys feed both sides).
      dtype: cast params, state and float inputs to this dtype first (default: as given).
      train: training mode (batch statistics, dropout on).
      source: ``"explicit"`` (the explicit engine, with local checks) or ``"hand"`` (jax.grad
        through the custom VJPs).
      tol: relative tolerance (default `funcbp.check.MODEL_TOLERANCE` for the dtype).
    """
    if source not in ("explicit", "hand"):
        raise ValueError(f"divergence_report: source must be 'explicit' or 'hand', got {source!r}")
    if dtype is not None:
        params, state, x, y = (_cast(t, dtype) for t in (params, state, jnp.asarray(x), y))
    x, y = jnp.asarray(x), jnp.asarray(y)
    leaves = [a for a in jax.tree.leaves(params) if _is_float(a)]
    dtype_name = jnp.dtype(leaves[0].dtype if leaves else x.dtype).name
    tol = MODEL_TOLERANCE[dtype_name] if tol is None else tol
    shapes, out = _record_leaves(model, params, state, x, key, train)
    eps_out = jax.tree.map(lambda o: jnp.zeros(o.shape, o.dtype), out)
    value, (true, true_dout) = jax.jit(_autodiff_side(model, loss, train, "autodiff"))(
        params, state, x, y, key, shapes.zeros(), eps_out
    )
    if source == "explicit":
        true_dy = {k: v["y"] for k, v in true.items()}
        _, seen, dout = jax.jit(_explicit_side(model, loss, train))(
            params, state, x, y, key, true_dy
        )
    else:
        _, (got, dout) = jax.jit(_autodiff_side(model, loss, train, "hand"))(
            params, state, x, y, key, shapes.zeros(), eps_out
        )
        seen = {k: (g["y"], (g["p"], g["x"]), None) for k, g in got.items()}
    err_dout = _err(dout, true_dout, tol)[0]
    norm = float(np.sqrt(sum(np.sum(np.square(d)) for d in jax.tree.leaves(true_dout))))
    loss_row = Row(len(shapes.leaves), loss.name, None, None, err_dout, None, None, tol,
                   dx_norm=norm, path="loss")  # fmt: skip
    rows = (loss_row, *_rows(shapes.leaves, true, seen, tol))
    return DivergenceReport(model.name, dtype_name, source, rows, float(value))


def _record_leaves(model, params, state, x, key, train):
    """``(_Shapes, output shape)``: the model's leaves in forward order, traced abstractly."""
    shapes = _Shapes()
    out = jax.eval_shape(
        lambda p, s, a: run_layer(model, p, s, a, key=key, train=train, source="autodiff",
                                  tap=shapes)[0], params, state, x,
    )  # fmt: skip
    return shapes, out


def leaf_paths(model: Layer, params, state, x, *, key=None, train: bool = True) -> list[Any]:
    """The leaves of ``model`` in forward order, as ``(path, layer)`` pairs."""
    return _record_leaves(model, params, state, jnp.asarray(x), key, train)[0].leaves
