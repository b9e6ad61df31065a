"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (see
tests/training/test_precision.py): compile one data-parallel training step of a small MLP, CNN
and GPT under the bf16 policy (float32 masters, bfloat16 compute), for the hand VJPs and for
autodiff, and print every all-reduce operand (dtype, shape) as JSON — of the HLO right after
XLA's SPMD partitioner inserted the collectives (``partitioned``: backend-independent), and of
the final compiled program (``compiled``: on CPU, later passes run half-precision collectives
in float32, so only the partitioned HLO shows what a GPU would reduce in)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from funcbp import nn
from funcbp.nn.gpt import GPTConfig, gpt
from funcbp.training import distributed, make_train_step
from funcbp.training.precision import apply_policy

jax.config.update("jax_enable_compilation_cache", False)  # compile, so XLA dumps the HLO

# "f32[16,64]{1,0}" or "bf16[]" inside an all-reduce's result shape
_OPERAND = re.compile(r"\b(pred|bf16|f16|f32|f64|s32|u32)\[([\d,]*)\]")
_ALL_REDUCE = re.compile(r"=\s*(.*?)\s+all-reduce(?:-start)?\(")


def all_reduce_operands(hlo: str) -> list[list]:
    """``[[dtype, [dims...]], ...]``: one entry per array an all-reduce (or its async start)
    reduces, tuple-shaped (combined) all-reduces counted operand by operand."""
    found = []
    for line in hlo.splitlines():
        m = _ALL_REDUCE.search(line)
        if m is None:
            continue
        for dtype, dims in _OPERAND.findall(m.group(1)):
            found.append([dtype, [int(d) for d in dims.split(",") if d]])
    return found


def _compile(step, args) -> dict:
    """``{"partitioned": operands, "compiled": operands}`` of ``step`` compiled for ``args``.

    The persistent compilation cache is off (set below the imports): an executable loaded from it
    is not compiled, so XLA would dump no HLO."""
    with tempfile.TemporaryDirectory() as d:
        dump = {"xla_dump_to": d, "xla_dump_hlo_pass_re": "spmd-partitioning"}
        compiled = step.lower(*args).compile(dump)
        (after,) = Path(d).glob("*after_spmd-partitioning*.txt")
        partitioned = after.read_text()
    return {
        "partitioned": all_reduce_operands(partitioned),
        "compiled": all_reduce_operands(compiled.as_text()),
    }


def _models():
    x_img = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
    x_vec = jax.random.normal(jax.random.key(2), (16, 12))
    ids = jax.random.randint(jax.random.key(3), (16, 8), 0, 11)
    labels = jnp.arange(16) % 5
    return {
        "mlp": (nn.mlp([32, 32, 5]), x_vec, labels),
        "cnn": (nn.cnn(5, channels=(4, 8), hidden=16), x_img, labels),
        "gpt": (gpt(GPTConfig(vocab=11, context=8, layers=1, heads=2, width=16)), ids, ids),
    }


def main() -> None:
    mesh = distributed.make_mesh(8)
    out = {"devices": len(jax.devices())}
    for name, (model, x, y) in _models().items():
        cast = apply_policy(model, "bf16")
        _, params, state = cast.init(jax.random.key(0), x.shape[1:], jnp.float32)
        params = distributed.shard_params(params, mesh)
        state = distributed.shard_params(state, mesh)
        batch = distributed.shard_batch((x, y), mesh)
        opt = optax.sgd(0.1)
        entry = {"params": [[str(p.dtype), list(p.shape)] for p in jax.tree.leaves(params)]}
        for source in ("hand", "autodiff"):
            step = make_train_step(cast, opt, source=source)
            args = (params, opt.init(params), state, batch, jax.random.key(4))
            entry[source] = _compile(step, args)
        out[name] = entry
    print(json.dumps(out))


if __name__ == "__main__":
    main()
