"""Save vs recompute: rematerialise a model's forward on the backward pass (`jax.checkpoint`).

``remat_model(model, policy=..., segment=k)`` returns a `Layer` with the same ``init``, params
and state as ``model`` whose forward keeps less for the backward pass and recomputes the rest:

* ``segment=None``: the whole ``apply`` is one `jax.checkpoint`;
* ``segment=k`` (`serial` models): every ``k`` consecutive layers form one checkpointed
  segment: only each segment's input is kept, its insides are recomputed during the backward.
  With Dense→activation pairs, ``k = 2`` keeps one activation per pair instead of two.

``policy`` says what may still be saved inside a segment: a name from `POLICIES`
(``"nothing_saveable"``, ``"dots_saveable"`` — keep matmul outputs, recompute only the cheap
elementwise ops —, ``"dots_with_no_batch_dims_saveable"``, ``"everything_saveable"``), a
`jax.checkpoint_policies` callable, or ``None`` (JAX's default: save nothing but the inputs).
The hand VJPs work unchanged: under `jax.checkpoint` an op's ``fwd`` is re-run on the backward
pass to rebuild its residuals, then its ``bwd`` runs as usual.

The explicit engine (``forward``/``backward``, no autodiff) rematerialises by hand: ``forward``
keeps only each segment's input (and state and keys), ``backward`` re-runs the segment's
``forward`` to rebuild the residuals right before walking it backwards. An optimization barrier
ties the recomputation to the incoming gradient, so it is scheduled in the backward pass (XLA
may still merge a recomputed matmul with the forward one and recompute only the cheap
elementwise ops, as it does for `jax.checkpoint` below).

Gradients are unchanged (tested equal to ~1e-12 in float64); what changes is memory and time.
Measured with `main` (``python -m funcbp.remat``): MLP 512→512×4→10, batch 256, float32, one
jitted gradient step (``jax.grad`` through the hand VJPs unless noted); temp bytes from XLA's
``memory_analysis()``, FLOPs from ``cost_analysis()``, median/min of 100 interleaved timings.
Machine: 2-core CPU, shared with other jobs (load average 5-8 while measuring: times are noisy,
bytes and FLOPs are exact); jax 0.10.2.

====================================  ==========  ==========  ==========  ==========
GELU MLP                              temp MB     GFLOP       median ms   min ms
====================================  ==========  ==========  ==========  ==========
no remat                              4.73        1.493       5.44        4.50
whole model, nothing_saveable         4.20        1.898       6.56        5.62
segment=2, nothing_saveable           2.62        1.493       5.49        4.60
segment=2, dots_saveable              2.62        1.494       5.43        4.52
segment=1, nothing_saveable           2.11        1.493       5.80        4.78
autodiff path, no remat               4.73        1.495       5.58        4.56
autodiff path, segment=2              2.62        1.494       5.41        4.54
explicit engine, no remat             4.73        1.493       5.47        4.50
explicit engine, segment=2            2.62        1.493       5.47        4.61
ReLU MLP, no remat                    2.63        1.487       5.01        4.04
ReLU MLP, segment=2                   2.62        1.487       4.99        4.05
ReLU MLP, whole model                 2.62        1.487       5.08        4.12
====================================  ==========  ==========  ==========  ==========

Reading it:

* Whole-model remat re-runs the forward (+27% FLOPs, the 4 extra matmuls; +20-25% time) and
  saves little: the recomputed forward's residuals are all live again before the backward starts.
* Segments of two (Dense+GELU) halve the temporary memory (4.73 → 2.62 MB) at no FLOP cost:
  GELU keeps its input z and Dense its input y = gelu(z), two activations per layer; with the
  segment checkpointed XLA keeps z and recomputes the cheap elementwise gelu(z) (the recomputed
  matmul is merged with the forward one: the lowered program has 18 dots, the compiled one 14).
  The explicit engine's hand-written remat gets the same 2.62 MB.
* The ReLU MLP gains nothing from remat: ReLU keeps its OUTPUT, which is also the next Dense's
  input, so the hand residuals are already one activation per layer (the residual choice made
  in `funcbp.ops.activations` is the memory optimisation that remat would otherwise provide).
* XLA's buffer assignment, not the list of saved residuals, sets the peak: ``segment=1`` saves
  more residuals than ``segment=2`` (`jax.ad_checkpoint.print_saved_residuals`) yet peaks lower.

Per op
------
``op.remat`` (`funcbp.ops.Op.remat`) is the same op keeping only its inputs and re-running its
``fwd`` on the backward pass; ``nn.op_layer(..., remat=True)`` and ``nn.LSTM/RNN(...,
remat=True)`` use it inside models (the explicit engine rebuilds the residuals by hand the same
way). ``python -m funcbp.remat --ops``: ``jax.grad`` of ``Σ sin(op(...))``, float32, same machine
(load ~3: times noisy; bytes, FLOPs and the gradient difference exact):

====================================  ========  ========  =========  =========
case                                  temp MB   GFLOP     median ms  rel Δgrad
====================================  ========  ========  =========  =========
LSTM(128) over T=64, N=32             9.73      0.016     10.5
LSTM(128), remat                      4.49      0.022     11.7       0
RNN(128) over T=64, N=32              4.47      0.004     3.3
RNN(128), remat                       3.42      0.005     3.7        0
attention (8, 256, 64), causal        4.19      0.409     2.9
attention, remat                      4.19      0.476     3.1        0
layer_norm (4096, 256)                16.79     0.019     6.2
layer_norm, remat                     12.60     0.024     4.9        2e-8
softmax (4096, 256)                   8.39      0.008     1.3
softmax, remat                        4.21      0.013     1.5        0
gelu (4096, 256)                      0.00      0.012     2.8
gelu, remat                           0.00      0.012     2.8        0
====================================  ========  ========  =========  =========

* The LSTM is where per-op remat pays: the hand cell keeps seven (N, H) arrays per step (h, c,
  the four gates, tanh c'); with remat two (h, c), so temporary memory falls 2.2× for +12% time
  (one more 4H-wide GEMM per step).
* Softmax keeps its output y, which is not its input: recomputing y from x halves memory.
  Layer norm keeps x̂ and 1/σ: recompute keeps x instead (and here is faster: XLA fuses the
  recomputed normalisation into the backward). float32 rounding of the fused recomputation
  differs by ~2e-8 relative (`check.compare`, against the tree norm).
* GELU keeps its input, which is what remat keeps: nothing to gain. Attention already keeps
  only q, k, v, o and the row log-sum-exp (never the T × S probabilities), so recomputing o
  saves nothing measurable and costs the forward's two GEMMs (+16% FLOPs).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from funcbp import backprop
from funcbp.nn.core import Layer, check_gradients

__all__ = ["POLICIES", "measure", "remat_model", "resolve_policy"]

POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def resolve_policy(policy: str | Callable | None) -> Callable | None:
    """A policy name from `POLICIES`, a `jax.checkpoint_policies` callable, or None."""
    if policy is None or callable(policy):
        return policy
    if policy not in POLICIES:
        raise ValueError(
            f"remat_model: policy must be one of {sorted(POLICIES)}, a callable or "
            f"None, got {policy!r}"
        )
    return POLICIES[policy]


def _segments(n: int, segment: int) -> list[tuple[int, int]]:
    return [(a, min(a + segment, n)) for a in range(0, n, segment)]


def remat_model(
    model: Layer, policy: str | Callable | None = None, *, segment: int | None = None
) -> Layer:
    """``model`` with its forward recomputed on the backward pass; same params and state.

    Args:
      model: any `Layer`; with ``segment`` a `serial` model (non-empty ``children``).
      policy: what `jax.checkpoint` may save inside a segment (see `POLICIES`).
      segment: layers per checkpointed segment, or None for one checkpoint around ``apply``.
    """
    policy = resolve_policy(policy)
    if segment is not None:
        if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
            raise ValueError(
                f"remat_model: segment must be a positive int or None, got {segment!r}"
            )
        if not model.children:
            raise ValueError(
                f"remat_model: segment={segment} needs a serial model with "
                f"children; {model.name} has none (use segment=None)"
            )
    layers = tuple(model.children) if segment is not None else (model,)
    spans = _segments(len(layers), segment or 1)

    def unpack(tree):  # whole-model mode: the model's params are the one "layer"'s params
        return tree if segment is not None else (tree,)

    def pack(tree):
        return tree if segment is not None else tree[0]

    def run(part, train, gradients):
        def fn(params, state, x, keys):
            new_state = []
            for layer, p, s, k in zip(part, params, state, keys, strict=True):
                x, s = layer.apply(p, s, x, key=k, train=train, gradients=gradients)
                new_state.append(s)
            return x, tuple(new_state)

        return fn

    def keys_for(key):
        return backprop.layer_keys(key, len(layers)) if segment is not None else [key]

    def apply(params, state, x, *, key=None, train=False, gradients="hand"):
        check_gradients(gradients)
        params, state, keys = unpack(params), unpack(state), keys_for(key)
        new_state = []
        for a, b in spans:
            fn = jax.checkpoint(run(layers[a:b], train, gradients), policy=policy)
            x, s = fn(params[a:b], state[a:b], x, keys[a:b])
            new_state.extend(s)
        return x, pack(tuple(new_state))

    def forward(params, state, x, *, key=None, train=False):
        params, state, keys = unpack(params), unpack(state), keys_for(key)
        tape, new_state = [], []
        for a, b in spans:
            tape.append((x, state[a:b], keys[a:b]))
            for layer, p, s, k in zip(layers[a:b], params[a:b], state[a:b], keys[a:b], strict=True):
                x, s, _ = layer.forward(p, s, x, key=k, train=train)  # residuals dropped
                new_state.append(s)
        return x, pack(tuple(new_state)), (train, tuple(tape))

    def backward(params, tape, dy):
        params = unpack(params)
        train, segments = tape
        grads: list[Any] = [None] * len(layers)
        for (a, b), (x, state, keys) in zip(reversed(spans), reversed(segments), strict=True):
            x, dy = jax.lax.optimization_barrier((x, dy))  # recompute only once dy exists
            residuals = []
            for layer, p, s, k in zip(layers[a:b], params[a:b], state, keys, strict=True):
                x, _, res = layer.forward(p, s, x, key=k, train=train)
                residuals.append(res)
            for i in reversed(range(a, b)):
                grads[i], dy = layers[i].backward(params[i], residuals[i - a], dy)
        return pack(tuple(grads)), dy

    name = f"remat({model.name}, segment={segment})"
    return Layer(name, model.init, apply, forward, backward, children=model.children)


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

    ``variants`` maps a label to ``(model, engine)`` with engine ``"hand"``, ``"autodiff"``
    (`jax.grad` through that path) or ``"explicit"`` (`funcbp.backprop`). All models must share
    the params structure. Returns one dict per variant: ``label, temp_bytes, flops`` (XLA's
    ``cost_analysis``: the recomputation shows here exactly), ``seconds`` (the median over
    ``repeats`` interleaved rounds) and ``min_seconds``.
    """
    from funcbp import ops
    from funcbp.train import make_loss_fn

    loss = loss if loss is not None else ops.softmax_cross_entropy
    compiled, rows = {}, {}
    for label, (model, engine) in variants.items():
        if engine == "explicit":
            fn = lambda p, m=model: backprop.loss_and_grad(m, loss, p, state, x, y)[1]
        else:
            loss_fn = make_loss_fn(model, loss, gradients=engine)
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
    """Print the per-op table (``python -m funcbp.remat --ops``)."""
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
