"""Whole-network divergence report: where, walking back from the loss, do hand and autodiff part?

For a `serial` model ``x_0 → f_0 → x_1 → f_1 → … → f_{n−1} → x_n → loss`` (``model.children``
are the layers ``f_i``, 0-based as in the report; ``params``/``state`` tuples with one entry
per layer), the report compares, layer by layer from the loss backwards, the gradient of every
activation ``dL/dx_i`` and of every parameter, computed two ways:

* **hand** — the explicit engine (`funcbp.backprop`): each layer's ``forward`` (the ops' ``fwd``
  rules, keeping residuals), the loss's ``fwd``/``bwd``, then each layer's ``backward`` (the ops'
  hand ``bwd``) in reverse, keeping every ``dy`` and ``dx``. No JAX autodiff is involved.
  (``hand="grad"``: `jax.grad` through the custom VJPs instead, as training runs.)
* **autodiff** — `jax.grad` of the loss with respect to the params and to additive zero
  perturbations ``ε_i`` inserted after each layer (``x_i + ε_i``, so ``∂L/∂ε_i = dL/dx_i``), the
  model run with ``apply(..., gradients="autodiff")`` (the ops' plain references).

Row ``i`` holds the errors of what layer ``f_i``'s backward produced — ``dL/dW_i`` and ``dL/dx_i``
(its input's gradient) — given the hand ``dL/dx_{i+1}`` (its output's) from the rows above.
The *first divergence* is the first row, from the loss backwards, whose outputs exceed the
tolerance: every layer above it passed a correct gradient down, so the bug is in that layer
(or the loss). The ``local`` columns
isolate each layer completely: its hand ``backward`` fed the TRUE ``dL/dx_{i+1}`` (from autodiff).

Errors are relative, ‖hand − autodiff‖/‖autodiff‖ per leaf (`funcbp.check.compare`), and the
tolerance is `funcbp.check.MODEL_TOLERANCE` for the dtype. A model with no ``children`` (the GPT
is one monolithic layer with its own explicit backward) gets one row for the whole model.

CLI: `check_model_cli` builds ``mlp``, ``cnn`` (digits) or ``gpt`` (bundled addition task),
prints the table and returns an exit code (0 no divergence, 1 divergence, 2 bad name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcbp import backprop, check, ops
from funcbp.nn.core import Layer

__all__ = [
    "Divergence",
    "DivergenceReport",
    "Row",
    "check_model_cli",
    "divergence_report",
    "MODELS",
]


class Divergence(NamedTuple):
    """Where hand and autodiff first part: the layer's index in ``model.children`` and its name
    (index ``len(children)`` is the loss)."""

    index: int
    name: str


@dataclasses.dataclass(frozen=True)
class Row:
    """One layer (or the loss), the errors of what its backward produced.

    ``dy``: error of the incoming ``dL/d(output)`` (None for the loss: its seed is 1);
    ``dparams``: worst error over the layer's parameter leaves (None without params);
    ``dx``: error of ``dL/d(input)`` (None for integer inputs); ``local_*``: the same, with the
    layer's hand backward fed the true incoming gradient (None for ``hand="grad"``).
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

    @property
    def ok(self) -> bool:
        errs = [e for e in (self.dparams, self.dx) if e is not None]
        return all(bool(np.isfinite(e)) and e <= self.tol for e in errs)


@dataclasses.dataclass(frozen=True)
class DivergenceReport:
    """Rows ordered from the loss backwards; ``first_divergence`` or None when all agree."""

    model: str
    dtype: str
    hand: str
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

    def format_table(self):
        """A rich `Table` of the rows, the first divergence highlighted."""
        from rich import box
        from rich.markup import escape
        from rich.table import Table

        first = self.first_divergence
        where = "none" if first is None else f"layer {first.index} ({first.name})"
        table = Table(
            title=f"{self.model} ({self.dtype}): hand ({self.hand}) vs autodiff, loss "
            f"{self.loss:.4g}, tol {self.rows[0].tol:.0e}; first divergence: {where}",
            caption="relative errors, from the loss backwards; local = the layer's hand "
            "backward fed the true dL/dout",
            box=box.SIMPLE_HEAD,
            padding=(0, 1),
            collapse_padding=True,
        )
        for col in ("#", "layer", "dL/dout", "dL/dW", "dL/din", "local dW", "local din", ""):
            numeric = col not in ("#", "layer", "")
            table.add_column(
                col,
                justify="left" if col in ("layer", "") else "right",
                no_wrap=True,
                min_width=7 if numeric else None,
                max_width=16 if col == "layer" else None,
            )
        fmt = lambda e: "—" if e is None else f"{e:.1e}"
        for row in self.rows:
            mark = "[green]ok[/green]" if row.ok else "[red]DIVERGES[/red]"
            if first is not None and row.index == first.index:
                mark = "[red bold]FIRST[/red bold]"
            name = row.name + (f" ({row.worst_param})" if row.worst_param else "")
            table.add_row(
                str(row.index),
                escape(name),
                fmt(row.dy),
                fmt(row.dparams),
                fmt(row.dx),
                fmt(row.local_dparams),
                fmt(row.local_dx),
                mark,
            )
        return table

    def __str__(self) -> str:
        first = self.first_divergence
        lines = [
            f"{self.model} [{self.dtype}] hand ({self.hand}) vs autodiff: first divergence {first}"
        ]
        for r in self.rows:
            lines.append(
                f"  {r.index:3d} {r.name:24s} dparams {r.dparams} dx {r.dx} "
                f"{'ok' if r.ok else 'DIVERGES'}"
            )
        return "\n".join(lines)


# -- the two sides ---------------------------------------------------------------------------
def _float(a) -> bool:
    return a is not None and hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.inexact)


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if _float(a) else a, tree)


def _autodiff_side(layers, loss, train):
    """``(loss, dparams, [dL/dx_0 .. dL/dx_n])`` by jax.grad of the references."""

    def run(params, state, x, y, keys, eps, gradients):
        h = x + eps[0] if eps[0] is not None else x
        for i, (layer, p, s, k) in enumerate(zip(layers, params, state, keys, strict=True)):
            h, _ = layer.apply(p, s, h, key=k, train=train, gradients=gradients)
            h = h + eps[i + 1]
        return loss.path(gradients)(h, y)

    def side(params, state, x, y, keys, gradients="autodiff"):
        def shapes(x):
            outs, h = [], x
            for layer, p, s, k in zip(layers, params, state, keys, strict=True):
                h, _ = layer.apply(p, s, h, key=k, train=train, gradients=gradients)
                outs.append(h)
            return outs

        outs = jax.eval_shape(shapes, x)
        eps = [jnp.zeros_like(x) if _float(x) else None]
        eps += [jnp.zeros(o.shape, o.dtype) for o in outs]
        objective = lambda p, e: run(p, state, x, y, keys, e, gradients)
        value, (dparams, deps) = jax.value_and_grad(objective, argnums=(0, 1))(params, eps)
        return value, dparams, deps

    return side


def _explicit_side(layers, loss, train):
    """The explicit engine, keeping each layer's ``dy``/``dx``; also each layer's backward fed
    the true incoming gradients ``true_dys`` (the local check)."""

    def side(params, state, x, y, keys, true_dys):
        xs, tapes = [x], []
        for layer, p, s, k in zip(layers, params, state, keys, strict=True):
            h, _, tape = layer.forward(p, s, xs[-1], key=k, train=train)
            xs.append(h)
            tapes.append(tape)
        value, loss_res = loss.fwd(xs[-1], y)
        dy = loss.bwd(loss_res, jnp.ones((), value.dtype))[0]
        n = len(layers)
        dparams, dxs, local = [None] * n, [None] * (n + 1), [None] * n
        dxs[n] = dy
        for i in reversed(range(n)):
            dparams[i], dy = layers[i].backward(params[i], tapes[i], dy)
            dxs[i] = dy
            local[i] = layers[i].backward(params[i], tapes[i], true_dys[i + 1])
        return value, tuple(dparams), dxs, local

    return side


def _err(a, b, tol) -> tuple[float | None, str]:
    """Worst leaf error of ``a`` vs ``b`` and the worst leaf's path (None when no leaves)."""
    if b is None or not jax.tree.leaves(b):
        return None, ""
    report = check.compare(a, b, tol=tol)
    worst = max(report.leaves, key=lambda leaf: leaf.err)
    return report.worst_rel, worst.path


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
    hand: str = "explicit",
    tol: float | None = None,
) -> DivergenceReport:
    """Compare every activation and parameter gradient, hand vs autodiff; see the module doc.

    Args:
      model: a `serial` model (``children`` are the layers; params/state are per-layer tuples),
        or any `Layer` (treated as one layer).
      params, state: as returned by ``model.init``.
      x, y: a batch (x float or integer ids; y the loss's targets).
      loss: the loss `Op` (``loss(outputs, y)`` -> scalar).
      key: PRNG key for dropout (the same per-layer keys feed both sides).
      dtype: cast params, state and float inputs to this dtype first (default: as given).
      train: training mode (batch statistics, dropout on).
      hand: ``"explicit"`` (the explicit engine, with local checks) or ``"grad"`` (jax.grad
        through the custom VJPs).
      tol: relative tolerance (default `funcbp.check.MODEL_TOLERANCE` for the dtype).
    """
    if hand not in ("explicit", "grad"):
        raise ValueError(f"divergence_report: hand must be 'explicit' or 'grad', got {hand!r}")
    if dtype is not None:
        params, state, x = _cast(params, dtype), _cast(state, dtype), _cast(jnp.asarray(x), dtype)
        y = _cast(jnp.asarray(y), dtype)
    x, y = jnp.asarray(x), jnp.asarray(y)
    leaves = [a for a in jax.tree.leaves(params) if _float(a)]
    dtype_name = jnp.dtype(leaves[0].dtype if leaves else x.dtype).name
    tol = check.MODEL_TOLERANCE[dtype_name] if tol is None else tol
    if model.children:
        layers = tuple(model.children)
    else:
        layers, params, state = (model,), (params,), (state,)
    if len(params) != len(layers) or len(state) != len(layers):
        raise ValueError(
            f"divergence_report: {model.name} has {len(layers)} layers but params has "
            f"{len(params)} and state {len(state)} entries (expected one per layer)"
        )
    keys = backprop.layer_keys(key, len(layers))

    value, true_dparams, true_dxs = jax.jit(_autodiff_side(layers, loss, train))(
        params, state, x, y, keys
    )
    if hand == "explicit":
        _, dparams, dxs, local = jax.jit(_explicit_side(layers, loss, train))(
            params, state, x, y, keys, true_dxs
        )
    else:
        grad_side = _autodiff_side(layers, loss, train)
        _, dparams, dxs = jax.jit(lambda *a: grad_side(*a, gradients="hand"))(
            params, state, x, y, keys
        )
        local = [None] * len(layers)

    n = len(layers)
    rows = [
        Row(
            n,
            loss.name,
            None,
            None,
            _err(dxs[n], true_dxs[n], tol)[0],
            None,
            None,
            tol,
            dx_norm=float(np.linalg.norm(np.ravel(true_dxs[n]))),
        )
    ]
    for i in reversed(range(n)):
        dp, worst = _err(dparams[i], true_dparams[i], tol)
        dx = _err(dxs[i], true_dxs[i], tol)[0] if _float(x) or i > 0 else None
        local_dp = local_dx = None
        if local[i] is not None:
            local_dp = _err(local[i][0], true_dparams[i], tol)[0]
            if dx is not None:
                local_dx = _err(local[i][1], true_dxs[i], tol)[0]
        norm = float(np.linalg.norm(np.ravel(true_dxs[i]))) if true_dxs[i] is not None else 0.0
        rows.append(
            Row(
                i,
                layers[i].name,
                _err(dxs[i + 1], true_dxs[i + 1], tol)[0],
                dp,
                dx,
                local_dp,
                local_dx,
                tol,
                worst if dp is not None and dp > tol else "",
                norm,
            )
        )
    return DivergenceReport(model.name, dtype_name, hand, tuple(rows), float(value))


# -- CLI ---------------------------------------------------------------------------------------
def _mlp_problem(seed, batch, dtype):
    from funcbp import data, fit, nn

    ds = data.load_digits()
    model = nn.mlp([64, 64, ds.n_classes])
    params, state = fit.init_model(model, seed, ds.input_shape, dtype)
    return model, params, state, ds.x_train[:batch], ds.y_train[:batch]


def _cnn_problem(seed, batch, dtype):
    from funcbp import data, fit, nn

    ds = data.load_digits(image=True)
    model = nn.cnn(ds.n_classes)
    params, state = fit.init_model(model, seed, ds.input_shape, dtype)
    return model, params, state, ds.x_train[:batch], ds.y_train[:batch]


def _gpt_problem(seed, batch, dtype):
    from funcbp import addition, fit
    from funcbp.nn.gpt import GPTConfig, gpt

    ds = addition.make_dataset(digits=2, n_train=max(batch, 8), n_test=8, seed=seed)
    t = ds.x_train.shape[1]
    model = gpt(GPTConfig(vocab=len(addition.VOCAB), context=t, layers=2, heads=2, width=32))
    params, state = fit.init_model(model, seed, (t,), dtype)
    x, y = ds.x_train[:batch].astype(np.int32), ds.y_train[:batch].astype(np.int32)
    return model, params, state, x, y


MODELS: dict[str, Callable[[int, int, Any], tuple]] = {
    "mlp": _mlp_problem,
    "cnn": _cnn_problem,
    "gpt": _gpt_problem,
}
"""name -> ``(seed, batch, dtype) -> (model, params, state, x, y)`` for `check_model_cli`."""


def check_model_cli(
    name: str,
    *,
    seed: int = 0,
    batch: int = 32,
    dtypes: Sequence[str] = ("float64", "float32"),
    print_fn: Callable[[Any], None] | None = None,
) -> int:
    """``funcbp check --model NAME``: the divergence report of a ready model on bundled data
    (``mlp``/``cnn`` on digits, ``gpt`` on the addition task), one table per dtype.

    Returns 0 when hand and autodiff agree everywhere, 1 when some layer diverges, 2 for an
    unknown model name.
    """
    if print_fn is None:
        from rich.console import Console

        print_fn = Console().print
    if name not in MODELS:
        print_fn(f"funcbp check --model: unknown model {name!r}; known: {sorted(MODELS)}")
        return 2
    jax.config.update("jax_enable_x64", True)
    code = 0
    for dtype in dtypes:
        model, params, state, x, y = MODELS[name](seed, batch, jnp.dtype(dtype))
        report = divergence_report(
            model, params, state, x, y, key=jax.random.key(seed), dtype=dtype
        )
        print_fn(report.format_table())
        code = max(code, 0 if report.ok else 1)
    return code
