"""GPT training step: hand VJPs vs autodiff (and the explicit engine), one process; the GPT
as a composition (`funcbp.nn.gpt`) side by side with the monolithic GPT it replaced
(`benchmarks.legacy_gpt`, its own hand-written backward).

    python -m benchmarks.gpt_bench [--repeats 15] [--inner 10] [--configs small large]

For each config, jitted AdamW train steps on the same batch, for each model (``new``: the
composition, ``old``: the monolith) and gradient source:

* ``hand``      `jax.grad` through the ops' custom VJPs (the default training path);
* ``autodiff``  `jax.grad` of the ops' plain references;
* ``explicit``  the explicit reverse pass (`funcbp.backprop`): the ops' ``bwd`` called by hand.

Time: each variant is compiled and warmed up, then timed in interleaved rounds (every round
runs each variant once, ``--inner`` steps back to back, the order alternating forwards and
backwards between rounds so drift on a shared machine hits all variants alike); the table
shows the median over rounds per step. Memory: XLA's compiled temporary buffer size of the
whole step, ``jit(step).lower(...).compile().memory_analysis().temp_size_in_bytes``.
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

from benchmarks import legacy_gpt
from funcbp.nn.gpt import GPTConfig, gpt
from funcbp.training import make_train_step

CONFIGS = {
    # the `funcbp train --model gpt` default: 2-digit addition, T = 9
    "small": (GPTConfig(vocab=13, context=9, layers=2, heads=4, width=64), 128),
    # a longer context and a wider, deeper model
    "large": (GPTConfig(vocab=64, context=64, layers=4, heads=8, width=256), 16),
}
SOURCES = ("hand", "autodiff", "explicit")
MODELS = ("new", "old")


def _block(tree):
    jax.tree.map(lambda a: a.block_until_ready(), tree)
    return tree


def _model(which: str, config: GPTConfig):
    if which == "new":
        return gpt(config)
    legacy = legacy_gpt.LegacyGPTConfig(
        config.vocab, config.context, config.layers, config.heads, config.width, config.mlp_ratio
    )
    return legacy_gpt.gpt(legacy)


def bench_config(config: GPTConfig, batch: int, repeats: int, inner: int, seed: int = 0):
    """``{variant: {"ms": median ms/step, "temp_bytes": int, "rounds": [...]}}``; variants
    ``"<source>"`` (the composition) and ``"<source> old"`` (the monolith)."""
    key = jax.random.key(seed)
    k_init, k_x, k_y = jax.random.split(key, 3)
    x = jax.random.randint(k_x, (batch, config.context), 0, config.vocab)
    y = jax.random.randint(k_y, (batch, config.context), 0, config.vocab)
    opt = optax.adamw(1e-3, weight_decay=0.1)
    steps, temp, inputs = {}, {}, {}
    for which in MODELS:
        model = _model(which, config)
        _, params, state = model.init(k_init, (config.context,), jnp.float32)
        opt_state = opt.init(params)
        for source in SOURCES:
            name = source if which == "new" else f"{source} old"
            step = make_train_step(model, opt, source=source)
            compiled = step.lower(params, opt_state, state, (x, y), None).compile()
            temp[name] = int(compiled.memory_analysis().temp_size_in_bytes)
            steps[name], inputs[name] = compiled, (params, opt_state, state)
            _block(compiled(params, opt_state, state, (x, y), None))  # warm-up

    def run(name):
        p, o, state = inputs[name]
        t0 = time.perf_counter()
        for _ in range(inner):
            p, o, _, _ = steps[name](p, o, state, (x, y), None)
        _block(p)
        return (time.perf_counter() - t0) / inner

    order = list(steps)
    rounds = {name: [] for name in order}
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            rounds[name].append(run(name))
    return {
        name: {"ms": 1e3 * statistics.median(rounds[name]), "temp_bytes": temp[name],
               "rounds_ms": [1e3 * t for t in rounds[name]]}
        for name in rounds
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--inner", type=int, default=10, help="steps per timed call")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform} ({jax.devices()[0]}), "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    )
    header = (
        f"{'config':<44} {'variant':<9} {'ms/step':>9} {'vs hand':>8} "
        f"{'temp MiB':>9} {'vs hand':>8}"
    )
    print(header)
    print("-" * len(header))
    results = {}
    for cname in args.configs:
        config, batch = CONFIGS[cname]
        res = bench_config(config, batch, args.repeats, args.inner)
        results[cname] = {"config": dataclasses.asdict(config) | {"batch": batch}, "results": res}
        label = (
            f"{cname}: L{config.layers} W{config.width} H{config.heads} "
            f"T{config.context} V{config.vocab} B{batch}"
        )
        hand = res["hand"]
        for name in res:
            r = res[name]
            print(
                f"{label:<44} {name:<9} {r['ms']:9.3f} {r['ms'] / hand['ms']:8.2f} "
                f"{r['temp_bytes'] / 2**20:9.2f} "
                f"{r['temp_bytes'] / max(hand['temp_bytes'], 1):8.2f}"
            )
            label = ""
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=np.asarray)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
