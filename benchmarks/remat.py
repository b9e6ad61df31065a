"""Save vs recompute, measured: temporary memory (XLA ``memory_analysis``), FLOPs
(``cost_analysis``) and time of one jitted gradient step with and without rematerialisation.

    python -m benchmarks.remat          # MLPs: whole model, segments, policies, engines
    python -m benchmarks.remat --ops    # per op: `Op.remat` and the recurrent layers' remat=True

The wrappers measured are the library's: `funcbp.nn.remat` (one layer or a whole model),
`funcbp.nn.remat_segments` (a serial model in segments) and `funcbp.ops.Op.remat` (one op).
The numbers and how to read them are in benchmarks/RESULTS.md ("Save vs recompute").
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from funcbp import backprop, nn
from funcbp.nn.core import Layer

__all__ = ["measure", "measure_ops", "remat_model"]


def remat_model(model: Layer, policy=None, *, segment: int | None = None) -> Layer:
    """`funcbp.nn.remat` of the whole model (``segment=None``) or `funcbp.nn.remat_segments`."""
    return nn.remat(model, policy) if segment is None else nn.remat_segments(model, segment, policy)


# -- measuring -------------------------------------------------------------------------------
def _compile(fn, *args) -> tuple[Any, dict[str, Any]]:
    """``jit(fn)`` compiled for ``args`` and warmed up; ``{"temp_bytes", "flops"}`` from XLA's
    ``memory_analysis`` and ``cost_analysis`` (the recomputation shows in the FLOPs exactly)."""
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost  # older jax: one per computation
    jax.block_until_ready(compiled(*args))
    return compiled, {
        "temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else 0,
        "flops": float((cost or {}).get("flops", float("nan"))),
    }


def _interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, float]]:
    """``{name: {"seconds": median, "min_seconds": min}}`` over ``repeats`` rounds, each round
    calling every variant once, the order reversed every other round (drift in a shared
    machine's load hits every variant alike)."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            jax.block_until_ready(calls[name]())
            times[name].append(time.perf_counter() - t)
    return {n: {"seconds": statistics.median(t), "min_seconds": min(t)} for n, t in times.items()}


def measure(
    variants: dict[str, tuple[Layer, str]],
    params,
    state,
    x,
    y,
    loss=None,
    *,
    repeats: int = 20,
) -> list[dict[str, Any]]:
    """Temp memory (XLA ``memory_analysis``) and median time of one jitted gradient step.

    ``variants`` maps a label to ``(model, source)`` with source ``"hand"``, ``"autodiff"``
    (`jax.grad` through that path) or ``"explicit"`` (`funcbp.backprop`). All models must share
    the params structure. Returns one dict per variant: ``label, temp_bytes, flops`` (XLA's
    ``cost_analysis``: the recomputation shows here exactly), ``seconds`` (the median over
    ``repeats`` interleaved rounds) and ``min_seconds``.
    """
    from funcbp import ops
    from funcbp.training import make_loss_fn

    loss = loss if loss is not None else ops.softmax_cross_entropy
    compiled, rows = {}, {}
    for label, (model, source) in variants.items():
        if source == "explicit":
            fn = lambda p, m=model: backprop.loss_and_grad(m, loss, p, state, x, y)[1]
        else:
            loss_fn = make_loss_fn(model, loss, source=source)
            fn = jax.grad(lambda p, f=loss_fn: f(p, state, x, y)[0])
        compiled[label], rows[label] = _compile(fn, params)
    times = _interleaved({k: (lambda c=c: c(params)) for k, c in compiled.items()}, repeats)
    return [{"label": k} | rows[k] | times[k] for k in variants]


def _op_cases(dtype) -> dict[str, tuple[Callable, tuple]]:
    """Per-op save-vs-recompute cases at training-like sizes: ``name -> (fn(remat), args)``
    where ``fn(remat)(*args)`` is a scalar loss through one op or recurrent layer."""
    import jax.numpy as jnp

    from funcbp import nn, ops

    keys = iter(jax.random.split(jax.random.key(0), 16))
    normal = lambda *shape: jax.random.normal(next(keys), shape, dtype)
    n, t, d, h = 32, 64, 32, 128

    def layer_case(make):
        def fn(remat):
            model = make(remat)
            return lambda p, x: jnp.sum(jnp.sin(model.apply(p, {}, x)[0]))

        _, params, _ = make(False).init(jax.random.key(1), (t, d), dtype)
        return fn, (params, normal(n, t, d))

    def op_case(op, *args, **static):
        def fn(remat):
            f = op.remat if remat else op
            return lambda *a: jnp.sum(jnp.sin(f(*a, **static)))

        return fn, args

    return {
        f"LSTM({h}) over T={t}, N={n}": layer_case(lambda r: nn.LSTM(h, remat=r)),
        f"RNN({h}) over T={t}, N={n}": layer_case(lambda r: nn.RNN(h, remat=r)),
        "attention (8, 256, 64), causal": op_case(
            ops.attention, normal(8, 256, 64), normal(8, 256, 64), normal(8, 256, 64)
        ),
        "layer_norm (4096, 256)": op_case(
            ops.layer_norm, normal(4096, 256), normal(256), normal(256)
        ),
        "gelu (4096, 256)": op_case(ops.gelu, normal(4096, 256)),
        "softmax (4096, 256)": op_case(ops.softmax, normal(4096, 256)),
    }


def measure_ops(dtype=None, repeats: int = 30) -> list[dict[str, Any]]:
    """Temp memory, FLOPs and median time of ``jax.grad`` through each case of `_op_cases`,
    saving residuals vs ``remat`` (`Op.remat`, or the recurrent layers' ``remat=True``).
    ``grad_rel_diff``: the worst ‖Δg‖/‖g‖ over the gradient leaves, remat vs saved."""
    import jax.numpy as jnp

    from funcbp import check

    dtype = dtype or jnp.float32
    out = []
    for label, (fn, args) in _op_cases(dtype).items():
        compiled, rows = {}, {}
        for remat in (False, True):
            grad = jax.grad(fn(remat), argnums=tuple(range(len(args))))
            compiled[remat], rows[remat] = _compile(grad, *args)
        calls = {r: (lambda c=c, a=args: c(*a)) for r, c in compiled.items()}
        times = _interleaved(calls, repeats)
        diff = check.compare(compiled[True](*args), compiled[False](*args), tol=1.0).worst_rel
        for remat in (False, True):
            out.append(
                {"label": label + (", remat" if remat else "")}
                | rows[remat]
                | times[remat]
                | {"grad_rel_diff": diff}
            )
    return out


def _default_variants(model: Layer) -> dict[str, tuple[Layer, str]]:
    return {
        "no remat": (model, "hand"),
        "whole model, nothing_saveable": (remat_model(model, "nothing_saveable"), "hand"),
        "segment=2, nothing_saveable": (remat_model(model, "nothing_saveable", segment=2), "hand"),
        "segment=2, dots_saveable": (remat_model(model, "dots_saveable", segment=2), "hand"),
        "segment=1, nothing_saveable": (remat_model(model, "nothing_saveable", segment=1), "hand"),
        "autodiff, no remat": (model, "autodiff"),
        "autodiff, segment=2": (remat_model(model, "nothing_saveable", segment=2), "autodiff"),
        "explicit engine, no remat": (model, "explicit"),
        "explicit engine, segment=2": (remat_model(model, segment=2), "explicit"),
    }


def main(
    widths: Sequence[int] = (512, 512, 512, 512, 10),
    batch: int = 256,
    activations: Sequence[str] = ("gelu", "relu"),
    repeats: int = 50,
) -> None:
    """Print the memory/time table for MLPs (the numbers in the module docstring)."""
    import jax.numpy as jnp

    from funcbp import nn

    for activation in activations:
        model = nn.mlp(list(widths), activation=activation)
        _, params, state = model.init(jax.random.key(0), (widths[0],), jnp.float32)
        x = jax.random.normal(jax.random.key(1), (batch, widths[0]), jnp.float32)
        y = jax.random.randint(jax.random.key(2), (batch,), 0, widths[-1]).astype(jnp.int32)
        print(f"== {model.name} ({activation}), batch {batch}, float32")
        rows = measure(_default_variants(model), params, state, x, y, repeats=repeats)
        for r in rows:
            print(
                f"{r['label']:32s} temp {r['temp_bytes'] / 1e6:6.2f} MB  "
                f"{r['flops'] / 1e9:6.3f} GFLOP  median "
                f"{r['seconds'] * 1e3:7.2f} ms  min {r['min_seconds'] * 1e3:7.2f} ms"
            )


def main_ops(repeats: int = 30) -> None:
    """Print the per-op table (``python -m benchmarks.remat --ops``)."""
    print(f"{'case':44s} {'temp MB':>8s} {'GFLOP':>8s} {'median ms':>10s}  rel Δgrad")
    for r in measure_ops(repeats=repeats):
        print(
            f"{r['label']:44s} {r['temp_bytes'] / 1e6:8.2f} {r['flops'] / 1e9:8.3f} "
            f"{r['seconds'] * 1e3:10.2f}  {r['grad_rel_diff']:.1e}"
        )


if __name__ == "__main__":
    import sys

    if "--ops" in sys.argv[1:]:
        main_ops()
    else:
        main()
