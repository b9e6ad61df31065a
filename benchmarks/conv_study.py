"""conv2d on CPU: the lax formulation vs the GEMM (im2col) formulation, and the CNN step.

    python -m benchmarks.conv_study                   # ~2-3 min on 2 cores
    python -m benchmarks.conv_study --quick           # a smoke run (seconds)
    python -m benchmarks.conv_study --wait-load 2.5   # first wait (up to --max-wait s) for quiet

One process; every comparison is timed interleaved (A B …, then … B A) after a warm-up that
compiles, and the median of many rounds is reported with (min–max) and the 1-minute load average
before and after each part (the machine is shared: compare ratios inside one part, not times
across runs).

1. **Per conv layer, at the CNN's shapes** (`funcbp.nn.models.cnn` on digits: batch 128, 8×8×1
   → Conv3×3(32) → … → Conv3×3(64)): one jitted function per variant computing the layer's
   forward Y and the backward pieces the train step needs (dW and db; dX only for the second
   layer, XLA drops the first layer's input gradient), with a fixed random dY. Variants: the
   whole fwd+bwd with ``method="lax"`` (`lax.conv_general_dilated` for Y, dX and dW) and with
   ``method="gemm"`` (im2col GEMMs, `funcbp.ops.conv`), and each of Y, dX, dW alone.
2. **The whole CNN train step** (`benchmarks.models`, SGD, float32): ``hand`` (conv2d with its
   size rule, today's op), ``hand-lax`` (the same model with conv2d forced to the lax
   formulation: the op before this study), ``autodiff`` (jax.grad of the references), and the
   ``lean`` step (no guard or metrics: what a PyTorch loop computes) with each formulation.
   XLA's compiled temp memory and the number of concatenations in the compiled step are
   printed too: hand has two more than hand-lax, one im2col P per conv layer (the backward's
   P merged with the forward's).
3. **PyTorch eager** (`benchmarks.torch_numpy.torch_runner`, the same network, 1 and 2
   threads) against the JAX steps in alternating blocks (`alternating_blocks`): the JAX
   variants interleaved for a few rounds, then PyTorch's, then JAX again, …, each block after
   a pause and an untimed warm call, so both sides are measured warm and over the same minutes.

Measured (AMD EPYC 2 vCPU, jax 0.10.2, torch 2.13.0, quiet: 1-min load 1.1–1.4 with this run's
own 2 threads; ``--repeats 32``): conv2 fwd+bwd gemm ÷ lax 0.90 (dW 0.68, dX 0.73, Y 1.02),
conv1 0.75; CNN step hand 5.14 ms vs hand-lax 7.64 ms (0.67), hand/autodiff 0.51 (was 0.75),
temp 20.4 MiB (hand-lax 8.0, autodiff 20.7); PyTorch 2 threads 4.96 ms: torch/hand 0.98 (was
0.65 against hand-lax in the same run).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import time
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcbp.nn.conv as nn_conv
from benchmarks import models as M
from benchmarks.common import (
    Timing,
    auto_inner,
    block,
    compiled_stats,
    interleaved,
    machine_info,
)
from funcbp.ops import conv as C
from funcbp.ops._op import Op
from funcbp.training.loop import init_model

__all__ = [
    "layer_variants",
    "bench_layer",
    "bench_layers",
    "bench_cnn",
    "alternating_blocks",
    "lax_conv_op",
    "main",
]

LAYERS = {
    # name: (x shape, w shape, whether dX is needed)
    "conv1 128×8×8×1→32": ((128, 8, 8, 1), (3, 3, 1, 32), False),
    "conv2 128×8×8×32→64": ((128, 8, 8, 32), (3, 3, 32, 64), True),
}
QUICK_LAYERS = {
    "conv1 4×8×8×1→2": ((4, 8, 8, 1), (3, 3, 1, 2), False),
    "conv2 4×8×8×2→4": ((4, 8, 8, 2), (3, 3, 2, 4), True),
}


def _load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def _ms(t) -> str:
    return f"{t.median * 1e3:7.3f} ms ({t.min * 1e3:.3f}–{t.max * 1e3:.3f})"


# -- 1. per layer ----------------------------------------------------------------------------
def layer_variants(x, w, b, dy, need_dx: bool, stride=1, padding="SAME") -> dict[str, Any]:
    """name -> jitted function of ``(x, w, b, dy)``: whole fwd+bwd and each piece, per method."""
    strides, pads, out_hw = C._geometry(x, w, stride, padding)

    def whole(method):
        def f(x, w, b, dy):
            y, res = C.conv2d_fwd(x, w, b, stride, padding, method=method)
            dx, dw, db = C.conv2d_bwd(res, dy, stride, padding, method=method)
            return (y, dx, dw, db) if need_dx else (y, dw, db)

        return f

    fns = {
        "fwd+bwd lax": whole("lax"),
        "fwd+bwd gemm": whole("gemm"),
        "fwd+bwd lax, dW gemm": whole(("lax", "lax", "gemm")),
        "fwd+bwd gemm, dX lax": whole(("gemm", "lax", "gemm")),
        "Y lax": lambda x, w, b, dy: C._y_lax(x, w, strides, pads),
        "Y gemm": lambda x, w, b, dy: C._y_gemm(x, w, strides, pads, out_hw),
        "dW lax": lambda x, w, b, dy: C._dw_lax(x, w, dy, strides, pads),
        "dW gemm": lambda x, w, b, dy: C._dw_gemm(x, w, dy, strides, pads),
    }
    if need_dx:
        fns["dX lax"] = lambda x, w, b, dy: C._dx_lax(x, w, dy, strides, pads)
        fns["dX gemm"] = lambda x, w, b, dy: C._dx_gemm(x, w, dy, strides, pads)
    return {k: jax.jit(f) for k, f in fns.items()}


def _runner(f, args):
    def run(n):
        for _ in range(n):
            r = f(*args)
        block(r)

    return run


def bench_layer(xs, ws, need_dx, *, repeats: int, target_s: float) -> dict[str, Any]:
    """Time `layer_variants` at x shape ``xs`` and w shape ``ws`` (float32, random values)."""
    gen = np.random.default_rng(0)
    x = jnp.asarray(gen.standard_normal(xs), jnp.float32)
    w = jnp.asarray(gen.standard_normal(ws) / np.sqrt(np.prod(ws[:3])), jnp.float32)
    b = jnp.asarray(gen.standard_normal(ws[-1:]), jnp.float32)
    dy = jnp.asarray(gen.standard_normal((*xs[:3], ws[-1])), jnp.float32)
    args = (x, w, b, dy)
    fns = layer_variants(*args, need_dx)
    # both formulations agree (float32, different summation orders)
    lax_out, gemm_out = fns["fwd+bwd lax"](*args), fns["fwd+bwd gemm"](*args)
    err = max(
        float(jnp.linalg.norm(a - r) / jnp.linalg.norm(r))
        for a, r in zip(gemm_out, lax_out, strict=True)
    )
    runs = {k: _runner(f, args) for k, f in fns.items()}
    inner, _ = auto_inner(runs["fwd+bwd lax"], target_s)
    for r in runs.values():
        r(1)  # compile
    load0 = _load()
    times = interleaved(
        {k: functools.partial(r, inner) for k, r in runs.items()}, repeats=repeats, inner=inner
    )
    return {"times": times, "inner": inner, "rel_err": err, "load": (load0, _load())}


def bench_layers(layers: dict, *, repeats: int, target_s: float, log=print) -> dict[str, Any]:
    out = {}
    base = {"fwd+bwd": "fwd+bwd lax", "Y": "Y lax", "dW": "dW lax", "dX": "dX lax"}
    for name, (xs, ws, need_dx) in layers.items():
        r = out[name] = bench_layer(xs, ws, need_dx, repeats=repeats, target_s=target_s)
        rule = "gemm" if C.use_gemm(xs, ws, xs[1:3], 4) else "lax"
        log(
            f"\n{name} (the rule picks {rule}): {repeats} rounds × {r['inner']} calls, load "
            f"{r['load'][0]} -> {r['load'][1]}, gemm vs lax rel. err {r['rel_err']:.1e}"
        )
        times = r["times"]
        for k, t in times.items():
            ref = times[base[k.split()[0]]]
            log(f"  {k:22s} {_ms(t)}   ÷ lax {t.median / ref.median:5.2f}")
    return out


# -- 2. and 3. the CNN step -------------------------------------------------------------------
def lax_conv_op() -> Op:
    """conv2d forced to the lax formulation (the op as it was before the GEMM path)."""
    return Op(
        "conv2d",
        C.conv2d_reference,
        functools.partial(C.conv2d_fwd, method="lax"),
        functools.partial(C.conv2d_bwd, method="lax"),
        C._sample_conv2d,
        3,
        C._validate,
    )


def _concats(compiled) -> int:
    return sum(" concatenate(" in line for line in compiled.as_text().splitlines())


def bench_cnn(spec, *, repeats: int, target_s: float, torch: bool, log=print) -> dict[str, Any]:
    model, params, state, batch, key = M.setup(spec)
    with mock.patch.object(nn_conv, "conv2d", lax_conv_op()):
        model_lax = spec.build()
    p_lax, _ = init_model(model_lax, 0, spec.input_shape)
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, p_lax)
    assert all(jax.tree.leaves(same)), "hand-lax must start from the same params"
    optimizer = optax.sgd(M.LEARNING_RATE)
    opt_state = optimizer.init(params)
    args = (params, opt_state, state, batch, key)
    steps = {
        "hand": M.make_variant_step(model, optimizer, "hand"),
        "hand-lax": M.make_variant_step(model_lax, optimizer, "hand"),
        "autodiff": M.make_variant_step(model, optimizer, "autodiff"),
        "lean": M.make_lean_step(model, optimizer, "hand"),
        "lean-lax": M.make_lean_step(model_lax, optimizer, "hand"),
    }
    stats = {}
    for k, s in steps.items():
        st = compiled_stats(s, *args)
        stats[k] = {"temp_MiB": st["temp_bytes"] / 2**20, "concatenates": _concats(st["compiled"])}
    # the two formulations train alike: one step's parameter updates agree (global rel. error;
    # per leaf would be meaningless for conv1's bias, whose gradient is ~0 before batch norm)
    upd = {
        k: jax.tree.leaves(jax.tree.map(jnp.subtract, steps[k](*args)[0], params))
        for k in ("hand", "hand-lax")
    }
    diff = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(*upd.values(), strict=True))
    step_err = (diff / sum(float(jnp.sum(b**2)) for b in upd["hand-lax"])) ** 0.5

    runs = {k: M.step_runner(s, params, opt_state, state, batch, key) for k, s in steps.items()}
    inner, _ = auto_inner(runs["hand"], target_s)
    for r in runs.values():
        r(1)
    res: dict[str, Any] = {"inner": inner, "stats": stats, "hand_vs_lax_params_err": step_err}
    load0 = _load()
    res["jax"] = interleaved(
        {k: (lambda r=r: r(inner)) for k, r in runs.items()}, repeats=repeats, inner=inner
    )
    res["jax_load"] = (load0, _load())
    log(
        f"\nCNN step ({spec.label}), JAX only: {repeats} rounds × {inner} steps, "
        f"load {load0} -> {_load()}; hand vs hand-lax update of 1 step: rel. err "
        f"{step_err:.1e}"
    )
    t = res["jax"]
    for k, v in t.items():
        log(
            f"  {k:9s} {_ms(v)}   temp {stats[k]['temp_MiB']:6.2f} MiB   "
            f"concatenates {stats[k]['concatenates']}"
        )
    log(
        f"  hand/autodiff {t['hand'].median / t['autodiff'].median:.3f}   "
        f"hand-lax/autodiff {t['hand-lax'].median / t['autodiff'].median:.3f}   "
        f"hand/hand-lax {t['hand'].median / t['hand-lax'].median:.3f}   "
        f"lean/lean-lax {t['lean'].median / t['lean-lax'].median:.3f}"
    )

    if not torch:
        return res
    from benchmarks.torch_numpy import have_torch, torch_runner

    if not have_torch():
        log("  PyTorch: not installed")
        return res
    peers = {f"torch-{n}t": torch_runner(spec, threads=n) for n in (1, 2)}
    per = {}
    for k, r in peers.items():
        per[k], _ = auto_inner(r, target_s)
    ours = {k: runs[k] for k in ("hand", "hand-lax", "lean", "lean-lax")}
    per |= dict.fromkeys(ours, inner)
    load0 = _load()
    res["with_torch"] = alternating_blocks(
        ours, peers, per, blocks=max(1, repeats // 4), repeats=min(4, repeats)
    )
    res["torch_load"] = (load0, _load())
    t = res["with_torch"]
    log(
        f"\nCNN step vs PyTorch eager, alternating blocks (JAX variants interleaved, then "
        f"PyTorch's, {max(1, repeats // 4)} times, {min(4, repeats)} rounds each): steps per "
        f"call {per}, load {load0} -> {_load()}"
    )
    for k, v in t.items():
        log(f"  {k:9s} {_ms(v)}")
    best = min(t["torch-1t"].median, t["torch-2t"].median)
    for k in ("hand", "hand-lax", "lean", "lean-lax"):
        log(f"  best torch / {k:8s} = {best / t[k].median:.3f}  (≥ 1: funcbp faster)")
    return res


def alternating_blocks(first: dict, second: dict, inner: dict, *, blocks: int, repeats: int):
    """Time two groups of runners ``name -> run(n)`` in alternating blocks: ``first``'s
    variants interleaved for ``repeats`` rounds, a 0.3 s pause, ``second``'s, a pause, and so
    on ``blocks`` times; each block starts with one untimed call per variant. Returns one
    `Timing` per variant over all blocks.

    Why blocks: PyTorch's OpenMP workers spin after a step and slow the next JAX call, and a
    pause before every call (the cure for that) slows JAX's next step instead (measured here:
    the CNN step 4.9 ms back to back, 7.2 ms with a 0.2 s sleep before each 9-step call, its
    thread pool and caches gone cold). Inside a block every call follows a warm call.
    """
    samples: dict[str, list[float]] = {k: [] for k in (*first, *second)}
    for _ in range(blocks):
        for group in (first, second):
            for k, r in group.items():
                r(inner[k])
            t = interleaved(
                {k: functools.partial(r, inner[k]) for k, r in group.items()},
                repeats=repeats,
                inner={k: inner[k] for k in group},
                warmup=0,
            )
            for k, v in t.items():
                samples[k] += v.samples
            time.sleep(0.3)
    return {k: Timing(v) for k, v in samples.items()}


def _to_json(obj):
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json(v) for v in obj]
    return obj


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31, help="interleaved rounds per part")
    parser.add_argument("--quick", action="store_true", help="toy sizes, few rounds")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch eager")
    parser.add_argument("--skip-layers", action="store_true", help="only the CNN step")
    parser.add_argument("--wait-load", type=float, default=None, help="wait for 1-min load <")
    parser.add_argument("--max-wait", type=float, default=300.0, help="seconds to wait at most")
    parser.add_argument("--json", default=None, help="write the results here")
    a = parser.parse_args(argv)
    if a.wait_load is not None:
        from benchmarks.suite import wait_for_load

        wait_for_load(a.wait_load, a.max_wait)
    m = machine_info()
    print(
        f"{m['cpu']}, {m['usable_cores']} usable cores, jax {m['versions']['jax']}, "
        f"torch {m['versions']['torch']}; load {_load()}"
    )
    repeats = 3 if a.quick else a.repeats
    target = 0.005 if a.quick else 0.08
    res: dict[str, Any] = {"machine": m}
    if not a.skip_layers:
        res["layers"] = bench_layers(
            QUICK_LAYERS if a.quick else LAYERS, repeats=repeats, target_s=target
        )
    spec = next(s for s in M.model_specs("tiny" if a.quick else "full") if s.name == "cnn")
    res["cnn"] = bench_cnn(spec, repeats=repeats, target_s=target, torch=not a.no_torch)
    res["loadavg_end"] = list(os.getloadavg())
    if a.json:
        with open(a.json, "w") as f:
            json.dump(_to_json(res), f, indent=1, default=str)
    return res


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
