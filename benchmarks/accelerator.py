"""The accelerator benchmark: one command, whatever backend JAX sees (GPU, TPU or CPU).

    python -m benchmarks.accelerator            # GPT-2-124M shapes; < 8 minutes on one H100/H200
    python -m benchmarks.accelerator --smoke    # tiny shapes, seconds on a CPU (the CI test)

Prints the device, then measures, each part's variants timed interleaved in one process
(`benchmarks.common.interleaved`, alternating order, after a compiling warm-up, every call
ending in ``block_until_ready``):

1. **GPT-2-124M training step** (12 layers, width 768, 12 heads, context 1024, vocab 50304,
   tied head; 16 sequences = 16,384 tokens per step; AdamW) under the bf16 policy (float32
   masters, bfloat16 compute: `funcbp.training.precision`): hand VJPs vs autodiff. Tokens/s and
   model FLOPs utilisation, MFU = tokens/s · (6N + 6·L·C·T) / peak, FLOPs per token as llm.c
   counts them (N parameters, L layers, C width, T context; the second term is causal
   attention). The peak is the device's dense bf16 rate from `PEAK_TFLOPS` (by device kind), or
   else a bf16 matmul measured here (said so in the output). The materialised attention of
   `funcbp.nn.gpt` is what runs (the blockwise op is the next row).
2. **Blockwise attention** (`funcbp.ops.flash_attention`, hand VJP) vs
   `jax.nn.dot_product_attention` (cuDNN where JAX finds it) and the materialised
   `funcbp.ops.attention`: causal, bf16, forward + backward, TFLOP/s counted as FlashAttention's
   benchmarks do (4·B·H·T²·D / 2 forward, 2.5× that backward), with each variant's output and
   gradients checked against `jax.nn.dot_product_attention`'s.
3. **MLP and CNN train steps**: hand / autodiff step time, float32 and bf16.

Writes ``benchmarks/RESULTS-<device>.md`` (``--out`` to change), with the machine, versions
and this command. Nothing is downloaded: the data are random token ids and images.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

from benchmarks.common import block, interleaved, machine_info, md_table
from funcbp import nn, ops
from funcbp.nn.gpt import GPTConfig, gpt
from funcbp.training import make_train_step
from funcbp.training.precision import apply_policy

__all__ = ["PEAK_TFLOPS", "Sizes", "SIZES", "device_name", "main", "peak_tflops", "run"]

PEAK_TFLOPS = (  # dense bfloat16 tensor-core peak per chip, TFLOP/s (vendor data sheets)
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("TPU v6", 918.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 197.0),  # v5e ("TPU v5 lite")
    ("TPU v4", 275.0),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures: the GPT and its batch, attention shapes (B, H, T, D), the MLP
    widths and batch, the CNN batch and channels, the precisions of the MLP/CNN rows, the
    timed rounds, steps per timed call, and the matmul size of a measured peak."""

    gpt: GPTConfig
    gpt_batch: int
    attention: tuple[tuple[int, int, int, int], ...]
    mlp: tuple[int, ...]
    mlp_batch: int
    cnn_batch: int
    cnn_channels: tuple[int, int]
    precisions: tuple[str, ...]
    repeats: int
    inner: int
    matmul: int


SIZES = {
    "full": Sizes(
        GPTConfig(vocab=50304, context=1024, layers=12, heads=12, width=768), 16,
        ((16, 12, 1024, 64), (4, 12, 4096, 64)), (4096, 4096, 4096, 10), 1024, 512, (32, 64),
        ("f32", "bf16"), repeats=7, inner=5, matmul=8192,
    ),
    "smoke": Sizes(
        GPTConfig(vocab=16, context=8, layers=1, heads=2, width=8), 2,
        ((1, 2, 16, 8),), (8, 10), 4, 2, (2, 2), ("bf16",), repeats=2, inner=1, matmul=64,
    ),
}  # fmt: skip


def device_name(device=None) -> str:
    """A file-name slug of the device kind: ``nvidia-h200``, ``tpu-v5-lite``, ``cpu``."""
    device = device or jax.devices()[0]
    kind = device.platform if device.platform == "cpu" else device.device_kind
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "device"


def _matmul_tflops(n: int, repeats: int) -> float:
    """Measured bf16 matmul rate (n³, float32 accumulation), TFLOP/s: the ceiling where the
    device kind is not in `PEAK_TFLOPS`."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    dot = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    times = interleaved({"dot": lambda: block(dot(a, a))}, repeats=repeats)
    return 2 * n**3 / times["dot"].median / 1e12


def peak_tflops(sizes: Sizes, device=None) -> tuple[float, str]:
    """``(TFLOP/s, source)``: the table's dense bf16 peak for this device kind, else measured."""
    device = device or jax.devices()[0]
    kind = device.device_kind.upper()
    for name, tflops in PEAK_TFLOPS:
        if name.upper() in kind:
            return tflops, f"{name} dense bf16 data-sheet peak"
    return _matmul_tflops(sizes.matmul, sizes.repeats), f"measured bf16 matmul {sizes.matmul}³"


def _chain(step, args, inner):
    """``run()``: ``inner`` steps from the same start, params fed back, blocking at the end."""

    def run():
        params, opt_state, state, batch, key = args
        for _ in range(inner):
            params, opt_state, state, _ = step(params, opt_state, state, batch, key)
        return block(params)

    return run


def _time_steps(model, batch, sizes: Sizes, optimizer, sources=("hand", "autodiff")) -> dict:
    """Compile and time ``model``'s train step per source: ``{source: {"seconds", "compile_s",
    "flops", "temp_bytes"}}`` (seconds per step: the median of the interleaved rounds)."""
    x, _ = batch
    _, params, state = model.init(jax.random.key(0), tuple(x.shape[1:]), jnp.float32)
    args = (params, optimizer.init(params), state, batch, jax.random.key(1))
    runs, out = {}, {}
    for source in sources:
        t0 = time.perf_counter()
        compiled = make_train_step(model, optimizer, source=source).lower(*args).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        out[source] = {
            "compile_s": time.perf_counter() - t0,
            "flops": float((cost or {}).get("flops", float("nan"))),
            "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
        }
        runs[source] = _chain(compiled, args, sizes.inner)
    times = interleaved(runs, repeats=sizes.repeats, inner=sizes.inner)
    for source in sources:
        out[source] |= {"seconds": times[source].median, "min_s": times[source].min,
                        "max_s": times[source].max}  # fmt: skip
    return out


def gpt_flops_per_token(config: GPTConfig, n_params: int) -> float:
    """6N + 6·L·C·T (llm.c): the matmuls' forward + backward per token, attention causal."""
    return 6 * n_params + 6 * config.layers * config.width * config.context


def bench_gpt(sizes: Sizes, peak: float) -> dict[str, Any]:
    """The GPT step under the bf16 policy, hand vs autodiff: tokens/s and MFU."""
    config, b = sizes.gpt, sizes.gpt_batch
    model = apply_policy(gpt(config), "bf16")
    kx, ky = jax.random.split(jax.random.key(2))
    ids = jax.random.randint(kx, (b, config.context), 0, config.vocab)
    targets = jax.random.randint(ky, (b, config.context), 0, config.vocab)
    _, params, _ = jax.eval_shape(
        lambda: model.init(jax.random.key(0), (config.context,), jnp.float32)
    )
    n = sum(p.size for p in jax.tree.leaves(params))
    optimizer = optax.adamw(3e-4, weight_decay=0.1)
    res = _time_steps(model, (ids, targets), sizes, optimizer)
    tokens, per_token = b * config.context, gpt_flops_per_token(config, n)
    for r in res.values():
        r["tokens_per_s"] = tokens / r["seconds"]
        r["mfu"] = r["tokens_per_s"] * per_token / (peak * 1e12)
    return {"config": dataclasses.asdict(config), "batch": b, "tokens": tokens, "n_params": n,
            "flops_per_token": per_token, "sources": res}  # fmt: skip


def attention_flops(b: int, h: int, t: int, d: int) -> float:
    """Causal attention forward + backward FLOPs as FlashAttention's benchmarks count them:
    forward 4·B·H·T²·D / 2 (two GEMMs, half the scores masked), backward 2.5× the forward."""
    return 3.5 * 4 * b * h * t * t * d / 2


def _attention_variants(shape):
    """``{name: (fn(q, k, v), layout)}``: layout "bhtd" (funcbp) or "bthd" (jax.nn)."""
    return {
        "flash_attention (hand)": (lambda q, k, v: ops.flash_attention(q, k, v, causal=True),
                                   "bhtd"),
        "attention (hand, materialised)": (lambda q, k, v: ops.attention(q, k, v, causal=True),
                                           "bhtd"),
        "jax.nn.dot_product_attention": (
            lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True), "bthd"),
    }  # fmt: skip


def bench_attention(sizes: Sizes, shape) -> dict[str, Any]:
    """Forward + backward of each attention in bf16 at ``shape`` (B, H, T, D): seconds,
    TFLOP/s, and the relative error of output and gradients against jax.nn's."""
    b, h, t, d = shape
    keys = jax.random.split(jax.random.key(3), 4)
    qkv_u = [jax.random.normal(k, (b, h, t, d), jnp.bfloat16) for k in keys]
    to_bthd = lambda a: jnp.swapaxes(a, 1, 2)
    runs, values = {}, {}
    for name, (fn, layout) in _attention_variants(shape).items():
        arrays = qkv_u if layout == "bhtd" else [to_bthd(a) for a in qkv_u]

        def fwd_bwd(q, k, v, u, fn=fn):
            o, vjp = jax.vjp(fn, q, k, v)
            return (o, *vjp(u))

        step = jax.jit(fwd_bwd).lower(*arrays).compile()
        out = step(*arrays)
        values[name] = [a if layout == "bhtd" else to_bthd(a) for a in out]
        runs[name] = lambda step=step, arrays=arrays: block(step(*arrays))
    times = interleaved(runs, repeats=sizes.repeats)
    flops, ref = attention_flops(*shape), values["jax.nn.dot_product_attention"]
    err = lambda got: max(float(jnp.linalg.norm((g - r).astype(jnp.float32))
                                / jnp.linalg.norm(r.astype(jnp.float32)))
                          for g, r in zip(got, ref, strict=True))  # fmt: skip
    return {"shape": list(shape), "flops": flops, "variants": {
        name: {"seconds": times[name].median, "tflops": flops / times[name].median / 1e12,
               "rel_err_vs_jax_nn": err(values[name])} for name in runs}}  # fmt: skip


def bench_models(sizes: Sizes) -> dict[str, Any]:
    """MLP and CNN train steps, hand vs autodiff, per precision (float32 and bf16; the smoke
    run: bf16 only): seconds per step."""
    kx, ky = jax.random.split(jax.random.key(4))
    x_vec = jax.random.normal(kx, (sizes.mlp_batch, 784), jnp.float32)
    x_img = jax.random.normal(kx, (sizes.cnn_batch, 8, 8, 1), jnp.float32)
    labels = lambda n: jax.random.randint(ky, (n,), 0, 10)
    models = {
        f"mlp 784-{'-'.join(map(str, sizes.mlp))} (batch {sizes.mlp_batch})":
            (nn.mlp(list(sizes.mlp)), (x_vec, labels(sizes.mlp_batch))),
        f"cnn 8x8x1 (batch {sizes.cnn_batch})": (
            nn.cnn(10, channels=sizes.cnn_channels, hidden=8 * sizes.cnn_channels[0]),
            (x_img, labels(sizes.cnn_batch))),
    }  # fmt: skip
    out = {}
    for name, (model, batch) in models.items():
        for precision in sizes.precisions:
            res = _time_steps(apply_policy(model, precision), batch, sizes, optax.sgd(1e-2))
            out[f"{name} {precision}"] = res
    return out


def run(sizes: Sizes, log=print) -> dict[str, Any]:
    """Every part in order (device, peak, GPT, attention, models); ``log`` gets progress."""
    device = jax.devices()[0]
    log(f"device: {device.device_kind} ({device.platform}, {len(jax.devices())} device(s)), "
        f"jax {jax.__version__}")  # fmt: skip
    t0 = time.perf_counter()
    peak, peak_source = peak_tflops(sizes, device)
    log(f"peak: {peak:.4g} TFLOP/s ({peak_source})")
    res = {"device": device.device_kind, "platform": device.platform, "peak_tflops": peak,
           "peak_source": peak_source}  # fmt: skip
    res["gpt"] = bench_gpt(sizes, peak)
    log(f"gpt done ({time.perf_counter() - t0:.0f} s)")
    res["attention"] = [bench_attention(sizes, shape) for shape in sizes.attention]
    log(f"attention done ({time.perf_counter() - t0:.0f} s)")
    res["models"] = bench_models(sizes)
    res["seconds"] = time.perf_counter() - t0
    res["machine"] = machine_info()
    return res


def _gpt_rows(g: dict) -> list[list]:
    hand = g["sources"]["hand"]["seconds"]
    return [
        [s, f"{1e3 * r['seconds']:.1f}", f"{r['seconds'] / hand:.3f}", f"{r['tokens_per_s']:,.0f}",
         f"{100 * r['mfu']:.1f}%", f"{r['flops'] / 1e12:.2f}", f"{r['temp_bytes'] / 2**30:.2f}",
         f"{r['compile_s']:.0f}"]
        for s, r in g["sources"].items()
    ]  # fmt: skip


def _targets(g: dict) -> list[str]:
    """The issue's targets on an H100/H200: hand <= 1.00x autodiff's step time, MFU >= 38%
    (llm.c's per-GPU rate on 8xH100, about 471K tokens/s for GPT-2 124M)."""
    hand, auto = g["sources"]["hand"], g["sources"]["autodiff"]
    ratio = hand["seconds"] / auto["seconds"]
    mark = lambda ok: "met" if ok else "NOT met"
    return [
        f"- hand / autodiff step time {ratio:.3f} (target <= 1.00: {mark(ratio <= 1.0)})",
        f"- hand MFU {100 * hand['mfu']:.1f}% (target >= 38% on an H100/H200: "
        f"{mark(hand['mfu'] >= 0.38)})",
    ]


def markdown(res: dict, command: str) -> str:
    """The report: device and peak, then one table per part, then the machine."""
    g, c = res["gpt"], res["gpt"]["config"]
    lines = [
        f"# funcbp on {res['device']} ({res['platform']})", "",
        f"Command: `{command}` ({res['seconds']:.0f} s). Peak: {res['peak_tflops']:.4g} TFLOP/s "
        f"({res['peak_source']}).", "",
        "## GPT training step, bf16 policy (float32 masters), AdamW", "",
        f"L{c['layers']} C{c['width']} H{c['heads']} T{c['context']} V{c['vocab']}, "
        f"{g['batch']} sequences = {g['tokens']:,} tokens per step, N = {g['n_params']:,} "
        f"params, {g['flops_per_token'] / 1e6:.1f} MFLOP per token (6N + 6·L·C·T).", "",
        md_table(["source", "ms/step", "vs hand", "tokens/s", "MFU", "XLA TFLOP/step",
                  "temp GiB", "compile s"], _gpt_rows(g)), "", *_targets(g), "",
        "## Causal attention, bf16, forward + backward", "",
    ]  # fmt: skip
    for a in res["attention"]:
        b, h, t, d = a["shape"]
        rows = [[n, f"{1e3 * v['seconds']:.2f}", f"{v['tflops']:.4g}",
                 f"{v['rel_err_vs_jax_nn']:.1e}"] for n, v in a["variants"].items()]  # fmt: skip
        lines += [
            f"B{b} H{h} T{t} D{d}, {a['flops'] / 1e12:.3f} TFLOP:",
            "",
            md_table(["attention", "ms", "TFLOP/s", "rel. error vs jax.nn"], rows),
            "",
        ]
    rows = [[name, f"{1e3 * r['hand']['seconds']:.3f}", f"{1e3 * r['autodiff']['seconds']:.3f}",
             f"{r['autodiff']['seconds'] / r['hand']['seconds']:.3f}"]
            for name, r in res["models"].items()]  # fmt: skip
    lines += ["## MLP and CNN train steps (SGD)", "",
              md_table(["model, precision", "hand ms", "autodiff ms", "autodiff / hand"], rows),
              "", "## Machine", "", "```", _machine(res["machine"]), "```", ""]  # fmt: skip
    return "\n".join(lines)


def _machine(m: dict) -> str:
    keep = ("date", "cpu", "cores", "loadavg", "jax_backend", "jax_devices", "versions", "env")
    return "\n".join(f"{k}: {m[k]}" for k in keep if k in m)


def _summary(res: dict) -> str:
    """The short table printed last."""
    lines = [f"{'part':<46} {'hand':>12} {'autodiff':>12}"]
    g = res["gpt"]["sources"]
    lines.append(f"{'gpt tokens/s':<46} {g['hand']['tokens_per_s']:>12,.0f} "
                 f"{g['autodiff']['tokens_per_s']:>12,.0f}")  # fmt: skip
    lines.append(f"{'gpt MFU':<46} {100 * g['hand']['mfu']:>11.1f}% "
                 f"{100 * g['autodiff']['mfu']:>11.1f}%")  # fmt: skip
    for a in res["attention"]:
        for name, v in a["variants"].items():
            label = f"{name} T{a['shape'][2]} TFLOP/s"
            lines.append(f"{label:<46} {v['tflops']:>12.4g}")
    for name, r in res["models"].items():
        lines.append(f"{name + ' ms':<46} {1e3 * r['hand']['seconds']:>12.3f} "
                     f"{1e3 * r['autodiff']['seconds']:>12.3f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (seconds, any CPU)")
    parser.add_argument(
        "--out", default=None, help="the report's path (default benchmarks/RESULTS-<device>.md)"
    )
    args = parser.parse_args(argv)
    sizes = SIZES["smoke" if args.smoke else "full"]
    res = run(sizes)
    command = "python -m benchmarks.accelerator " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    out = args.out or f"benchmarks/RESULTS-{device_name()}.md"
    with open(out, "w") as f:
        f.write(markdown(res, command.strip()))
    print(_summary(res))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
