"""Train-step speed and memory per model: hand VJPs vs autodiff (and the explicit engine).

For each model, every variant is a jitted `funcbp.training` step with the same params, batch,
key and optimizer (plain SGD), compiled once for its FLOPs and temporary memory, then timed
interleaved (`benchmarks.common.interleaved`). Variants:

* ``hand``      ``make_train_step(source="hand")``: `jax.grad` through the ops' custom VJPs;
* ``autodiff``  ``make_train_step(source="autodiff")``: `jax.grad` of the ops' references;
* ``explicit``  ``make_train_step(source="explicit")``: the layers' ``bwd`` called in reverse;
* ``lean``      the hand path without the step's guard and metrics (no finiteness flags, no
  ``where`` keeping old params, no gradient norm or accuracy): what a PyTorch loop computes,
  so it is the JAX side of the comparison with PyTorch eager;
* ``matmuls``   (MLPs only; a bound, not a step) the step's matrix products and the SGD update
  of the weights and nothing else: per Dense layer X·W forward, Xᵀ·dY and dY·Wᵀ backward (no
  dY·Wᵀ for the first layer, as in the real step), ``W − η dW``. How close a step comes to
  this is how much it spends outside its GEMMs.

Also the fused multi-step (`funcbp.training.make_multi_step`): steps/s with k steps per dispatch
vs one dispatch per step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from benchmarks.common import auto_inner, block, compiled_stats, interleaved
from funcbp import nn
from funcbp.training import make_loss_fn, make_multi_step, make_train_step
from funcbp.training.loop import init_model

__all__ = [
    "ModelSpec",
    "VARIANTS",
    "model_specs",
    "make_batch",
    "make_lean_step",
    "make_variant_step",
    "bench_model",
    "bench_multi_step",
]

VARIANTS = ("hand", "autodiff", "explicit", "lean")
LEARNING_RATE = 1e-2


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: how to build it and the shape of one batch."""

    name: str
    kind: str  # "mlp" | "cnn" | "gpt"
    batch: int
    input_shape: tuple[int, ...]  # one example's shape (GPT: (T,) token ids)
    n_classes: int
    sizes: tuple[int, ...] = ()  # mlp: Dense output widths
    cnn_kwargs: tuple[tuple[str, Any], ...] = ()
    gpt_config: Any = None

    def build(self) -> nn.Layer:
        if self.kind == "mlp":
            return nn.mlp(list(self.sizes))
        if self.kind == "cnn":
            return nn.cnn(self.n_classes, **dict(self.cnn_kwargs))
        if self.kind == "gpt":
            from funcbp.nn.gpt import gpt

            return gpt(self.gpt_config)
        raise ValueError(f"ModelSpec: unknown kind {self.kind!r}")

    @property
    def label(self) -> str:
        if self.kind == "mlp":
            shape = "-".join(str(s) for s in (*self.input_shape, *self.sizes))
            return f"{self.name} ({shape}, batch {self.batch})"
        if self.kind == "cnn":
            shape = "x".join(map(str, self.input_shape))
            return f"{self.name} ({shape}, batch {self.batch})"
        c = self.gpt_config
        return (
            f"{self.name} (L{c.layers} W{c.width} H{c.heads} T{c.context} V{c.vocab}, "
            f"batch {self.batch})"
        )


def _gpt_config(scale: str):
    try:
        from funcbp.nn.gpt import GPTConfig
    except ImportError:
        return None
    if scale == "tiny":
        return GPTConfig(vocab=7, context=4, layers=1, heads=2, width=8)
    # the `funcbp train --model gpt` default (2-digit addition), as in benchmarks/gpt_bench.py
    return GPTConfig(vocab=13, context=9, layers=2, heads=4, width=64)


def model_specs(scale: str = "full") -> list[ModelSpec]:
    """The suite's models. ``scale="tiny"``: same structure, toy sizes (for the smoke test)."""
    if scale not in ("full", "tiny"):
        raise ValueError(f"model_specs: scale must be 'full' or 'tiny', got {scale!r}")
    if scale == "full":
        specs = [
            ModelSpec("mlp-small", "mlp", 32, (64,), 10, (128, 128, 10)),
            ModelSpec("mlp-medium", "mlp", 256, (784,), 10, (1024, 1024, 10)),
            ModelSpec("mlp-large", "mlp", 1024, (4096,), 10, (4096, 4096, 4096, 10)),
            ModelSpec("cnn", "cnn", 128, (8, 8, 1), 10),
        ]
        gpt_batch = 128
    else:
        specs = [
            ModelSpec("mlp-small", "mlp", 4, (8,), 3, (16, 3)),
            ModelSpec("mlp-large", "mlp", 8, (32,), 3, (32, 32, 3)),
            ModelSpec(
                "cnn", "cnn", 4, (8, 8, 1), 3, cnn_kwargs=(("channels", (2, 4)), ("hidden", 8))
            ),
        ]
        gpt_batch = 2
    config = _gpt_config(scale)
    if config is not None:
        specs.append(
            ModelSpec(
                "gpt-small", "gpt", gpt_batch, (config.context,), config.vocab, gpt_config=config
            )
        )
    return specs


def make_batch(spec: ModelSpec, key, dtype=jnp.float32):
    """Random ``(x, y)`` for one step: float inputs (token ids for GPT), int32 class labels."""
    kx, ky = jax.random.split(key)
    if spec.kind == "gpt":
        shape = (spec.batch, *spec.input_shape)
        x = jax.random.randint(kx, shape, 0, spec.gpt_config.vocab, dtype=jnp.int32)
        y = jax.random.randint(ky, shape, 0, spec.n_classes, dtype=jnp.int32)
        return x, y
    x = jax.random.normal(kx, (spec.batch, *spec.input_shape), dtype)
    y = jax.random.randint(ky, (spec.batch,), 0, spec.n_classes, dtype=jnp.int32)
    return x, y


def make_lean_step(model: nn.Layer, optimizer, source: str = "hand", *, jit: bool = True):
    """The bare step: value-and-grad and the optimizer update, nothing else (jitted)."""
    loss_fn = make_loss_fn(model, source=source)
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def step(params, opt_state, state, batch, key=None):
        x, y = batch
        (loss, (new_state, _)), grads = value_and_grad(params, state, x, y, key, True)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_state, {"loss": loss}

    return jax.jit(step) if jit else step


def _is_dense(t) -> bool:
    return isinstance(t, dict) and "w" in t


def _layer_params(params) -> list:
    """A `serial` MLP's per-layer params, Dense dicts kept whole (activations have none)."""
    return jax.tree.leaves(params, is_leaf=_is_dense)


def _dense_weights(params) -> list:
    """The ``"w"`` of every Dense layer of a `serial` MLP's params, in order."""
    return [p["w"] for p in _layer_params(params) if _is_dense(p)]


def matmul_step(ws, x, lr=LEARNING_RATE):
    """The MLP step's matrix products and weight update only (see ``matmuls`` above)."""
    acts = [x.reshape(x.shape[0], -1)]
    for w in ws:
        acts.append(acts[-1] @ w)
    dy = acts[-1]
    new = []
    for i in reversed(range(len(ws))):
        new.append(ws[i] - lr * (acts[i].T @ dy))
        if i:  # the input's gradient is never needed
            dy = dy @ ws[i].T
    return tuple(reversed(new))


def _make_matmul_bound(params):
    """``matmuls`` as a jitted function with the step's signature (other params unchanged)."""
    treedef = jax.tree.structure(params, is_leaf=_is_dense)

    def step(params, opt_state, state, batch, key=None):
        ws = iter(matmul_step(tuple(_dense_weights(params)), batch[0]))
        new = [dict(p, w=next(ws)) if _is_dense(p) else p for p in _layer_params(params)]
        return jax.tree.unflatten(treedef, new), opt_state, state, {}

    return jax.jit(step)


def make_variant_step(model: nn.Layer, optimizer, variant: str):
    """The jitted step of one of `VARIANTS`."""
    if variant == "hand":
        return make_train_step(model, optimizer, source="hand")
    if variant == "autodiff":
        return make_train_step(model, optimizer, source="autodiff")
    if variant == "explicit":
        return make_train_step(model, optimizer, source="explicit")
    if variant == "lean":
        return make_lean_step(model, optimizer, "hand")
    if variant == "matmuls":
        return None  # built from the params: see `bench_model`
    raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")


def _n_params(params) -> int:
    return int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))


def setup(spec: ModelSpec, seed: int = 0, dtype=jnp.float32):
    """``(model, params, state, batch, key)`` for ``spec``, the same for every variant."""
    model = spec.build()
    params, state = init_model(model, seed, spec.input_shape, dtype)
    batch = make_batch(spec, jax.random.key(seed + 1), dtype)
    return model, params, state, batch, jax.random.key(seed + 2)


def step_runner(step, params, opt_state, state, batch, key):
    """``run(k)``: k chained calls of ``step`` from the same start, blocking on the result."""

    def run(k):
        p, o, s = params, opt_state, state
        for _ in range(k):
            p, o, s, _ = step(p, o, s, batch, key)
        block(p)

    return run


def bench_model(
    spec: ModelSpec,
    *,
    repeats: int,
    variants: tuple[str, ...] = VARIANTS,
    target_s: float = 0.1,
    budget_s: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Compile and time every variant of ``spec``'s train step, interleaved.

    Returns ``{"model", "label", "batch", "n_params", "inner", "variants": {name: {"time":
    Timing, "flops", "temp_bytes", "arg_bytes", "out_bytes"}}}``. Each timed call runs
    ``inner`` chained steps (params fed back) from the same starting params, so each call does
    the same work; ``inner`` is chosen so a call lasts about ``target_s``. ``budget_s`` caps
    the timed rounds' total (fewer rounds, at least 3, for slow steps).
    """
    model, params, state, batch, key = setup(spec, seed)
    optimizer = optax.sgd(LEARNING_RATE)
    opt_state = optimizer.init(params)
    args = (params, opt_state, state, batch, key)

    steps, stats = {}, {}
    for v in variants:
        steps[v] = make_variant_step(model, optimizer, v) or _make_matmul_bound(params)
        s = compiled_stats(steps[v], *args)
        s.pop("compiled")
        stats[v] = s

    runs = {v: step_runner(steps[v], params, opt_state, state, batch, key) for v in variants}
    inner, dt = auto_inner(runs[variants[0]], target_s)
    if budget_s is not None:
        per_round = len(variants) * inner * dt
        repeats = max(min(3, repeats), min(repeats, int(budget_s / per_round)))
    for v in variants[1:]:
        runs[v](1)  # compile (jit's own cache) before the timed rounds
    times = interleaved(
        {v: (lambda r=runs[v]: r(inner)) for v in variants}, repeats=repeats, inner=inner, warmup=0
    )
    return {
        "model": spec.name,
        "label": spec.label,
        "batch": spec.batch,
        "n_params": _n_params(params),
        "inner": inner,
        "repeats": repeats,
        "variants": {v: {"time": times[v], **stats[v]} for v in variants},
    }


def bench_multi_step(
    spec: ModelSpec, *, ks: tuple[int, ...] = (10, 50), repeats: int, seed: int = 0
) -> dict[str, Any]:
    """Steps/s of `make_multi_step` with k steps per call vs one jitted call per step.

    Every timed call runs the same ``n = lcm(ks)`` steps over the same n distinct batches,
    chained: ``n`` single-step calls, or ``n / k`` fused calls. Returns ``{"model", "n",
    "variants": {"1 step/dispatch" | "k=..": {"time": Timing (per step), "steps_per_s"}}}``.
    """
    model, params, state, _, key = setup(spec, seed)
    optimizer = optax.sgd(LEARNING_RATE)
    opt_state = optimizer.init(params)
    n = math.lcm(*ks)
    stacked = jax.vmap(lambda k: make_batch(spec, k))(jax.random.split(jax.random.key(seed + 3), n))
    keys = jax.random.split(key, n)
    raw = make_train_step(model, optimizer, jit=False)
    single = jax.jit(raw)
    multi = make_multi_step(raw)
    # slices made before timing: indexing a jax array in the loop is itself a dispatch
    singles = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)]
    single_keys = [keys[i] for i in range(n)]
    chunks = {
        k: [
            (
                jax.tree.map(lambda a, j=j, k=k: a[j * k : (j + 1) * k], stacked),
                keys[j * k : (j + 1) * k],
            )
            for j in range(n // k)
        ]
        for k in ks
    }
    block((singles, single_keys, chunks))

    def run_single():
        p, o, s = params, opt_state, state
        for i in range(n):
            p, o, s, _ = single(p, o, s, singles[i], single_keys[i])
        block(p)

    def run_multi(k):
        def run():
            p, o, s = params, opt_state, state
            for batches, ks_ in chunks[k]:
                p, o, s, _ = multi(p, o, s, batches, ks_)
            block(p)

        return run

    variants = {"1 step/dispatch": run_single} | {f"k={k}": run_multi(k) for k in ks}

    # Lower bounds for the fused step, same k: the scan of the lean step (no guard, no
    # metrics), and the scan of only the step's matrix products and weight update
    # (`matmul_step`) on the same shapes.
    k_max = max(ks)
    lean = make_multi_step(make_lean_step(model, optimizer, jit=False))
    dense = tuple(_dense_weights(params))
    gemms_only = jax.jit(
        lambda ws, xs: jax.lax.scan(lambda ws, x: (matmul_step(ws, x), None), ws, xs)
    )

    def run_lean():
        p, o, s = params, opt_state, state
        for batches, ks_ in chunks[k_max]:
            p, o, s, _ = lean(p, o, s, batches, ks_)
        block(p)

    def run_gemms():
        ws = dense
        for batches, _ in chunks[k_max]:
            ws, _ = gemms_only(ws, batches[0])
        block(ws)

    variants |= {
        f"bound: k={k_max}, no guard or metrics": run_lean,
        f"bound: k={k_max}, the matmuls and update only": run_gemms,
    }
    times = interleaved(variants, repeats=repeats, inner=n)
    return {
        "model": spec.name,
        "label": spec.label,
        "n": n,
        "variants": {name: {"time": t, "steps_per_s": 1.0 / t.median} for name, t in times.items()},
    }
