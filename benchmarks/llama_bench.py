"""Llama training step: hand VJPs vs autodiff (and the explicit engine) on the same model, one
process; memory and FLOPs counted exactly by XLA, time measured in interleaved rounds.

    python -m benchmarks.llama_bench [--configs default] [--repeats 15] [--inner 5]

For each config (``default``: the `funcbp train --model llama` model and batch), jitted AdamW
train steps on one batch of bytes, for each gradient source:

* ``hand``      `jax.grad` through the ops' custom VJPs (the default training path);
* ``autodiff``  `jax.grad` of the ops' plain references;
* ``explicit``  the explicit reverse pass (`funcbp.backprop`): the ops' ``bwd`` called by hand.

Memory: ``jit(step).lower(...).compile().memory_analysis().temp_size_in_bytes``; FLOPs:
``cost_analysis()["flops"]`` (exact, noise-free). Time: each variant compiled and warmed up,
then ``--repeats`` rounds, each running every variant ``--inner`` steps back to back, the order
alternating between rounds; medians per step, with tokens per second (batch · context / time)
and the process's CPU time per step (all threads: on a loaded machine, a bound on the wall time
of an idle one, which runs the threads in parallel).
Speed numbers are only meaningful on a quiet machine (see BENCHMARKING.md); the load average
is printed with them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcbp.nn.llama import LlamaConfig, llama
from funcbp.training import make_train_step

_D = dict(vocab=256, context=128, layers=4, width=128, heads=4, kv_heads=2, hidden=352)
CONFIGS = {
    # the `funcbp train --model llama` default model and batch
    "default": (LlamaConfig(**_D), 32),
    "flash": (LlamaConfig(**_D, attention="flash", block_size=64), 32),
    "small": (LlamaConfig(**{**_D, "width": 96, "hidden": 256, "heads": 4, "kv_heads": 2}), 32),
    "wide": (LlamaConfig(**{**_D, "width": 192, "hidden": 512, "heads": 6, "kv_heads": 2}), 32),
    "long": (LlamaConfig(**{**_D, "context": 256}), 16),
}
SOURCES = ("hand", "autodiff", "explicit")


def _block(tree):
    jax.tree.map(lambda a: a.block_until_ready(), tree)
    return tree


def compile_steps(config: LlamaConfig, batch: int, seed: int = 0, sources=SOURCES):
    """``{source: (compiled step, (params, opt_state, state), (x, y))}`` and
    ``{source: {"temp_bytes", "flops"}}`` for one config."""
    k_init, k_x = jax.random.split(jax.random.key(seed))
    ids = jax.random.randint(k_x, (batch, config.context + 1), 0, config.vocab)
    x, y = ids[:, :-1], ids[:, 1:]
    model = llama(config)
    _, params, state = model.init(k_init, (config.context,), jnp.float32)
    opt = optax.adamw(1e-3, weight_decay=0.1)
    opt_state = opt.init(params)
    steps, counts = {}, {}
    for source in sources:
        step = make_train_step(model, opt, source=source)
        compiled = step.lower(params, opt_state, state, (x, y), None).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        counts[source] = {
            "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
            "flops": float(cost.get("flops", float("nan"))),
        }
        steps[source] = (compiled, (params, opt_state, state), (x, y))
    return steps, counts


def time_steps(steps: dict, repeats: int, inner: int) -> dict:
    """Median seconds per step of each compiled step, interleaved rounds (order alternating)."""
    for compiled, (p, o, s), batch in steps.values():
        _block(compiled(p, o, s, batch, None))  # warm-up

    def run(name):
        compiled, (p, o, s), batch = steps[name]
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(inner):
            p, o, _, _ = compiled(p, o, s, batch, None)
        _block(p)
        return (time.perf_counter() - t0) / inner, (time.process_time() - c0) / inner

    order = list(steps)
    rounds = {name: [] for name in order}
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            rounds[name].append(run(name))
    out = {name: statistics.median(t for t, _ in ts) for name, ts in rounds.items()}
    out |= {f"{name}_cpu": statistics.median(c for _, c in ts) for name, ts in rounds.items()}
    return out | {f"{name}_rounds": ts for name, ts in rounds.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["default"])
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--inner", type=int, default=5, help="steps per timed call")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    print(
        f"jax {jax.__version__}, {jax.devices()[0]}, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f}"
    )
    header = (f"{'config':<10} {'variant':<9} {'ms/step':>9} {'vs hand':>8} {'tokens/s':>9} "
              f"{'CPU ms':>8} {'temp MiB':>9} {'vs hand':>8} {'GFLOP':>8}")  # fmt: skip
    print(header)
    print("-" * len(header))
    results = {}
    for cname in args.configs:
        config, batch = CONFIGS[cname]
        steps, counts = compile_steps(config, batch, sources=args.sources)
        times = time_steps(steps, args.repeats, args.inner)
        results[cname] = {"config": dataclasses.asdict(config) | {"batch": batch},
                          "counts": counts, "times": times}  # fmt: skip
        first = args.sources[0]
        for name in args.sources:
            t, c = times[name], counts[name]
            print(
                f"{cname:<10} {name:<9} {1e3 * t:9.2f} {t / times[first]:8.3f} "
                f"{batch * config.context / t:9.0f} {1e3 * times[name + '_cpu']:8.1f} "
                f"{c['temp_bytes'] / 2**20:9.2f} "
                f"{c['temp_bytes'] / max(counts[first]['temp_bytes'], 1):8.3f} "
                f"{c['flops'] / 1e9:8.2f}"
            )
            cname = ""
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=np.asarray)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
