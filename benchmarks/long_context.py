"""Long context and large vocabularies: blockwise attention and the chunked head, hand vs autodiff.

    python -m benchmarks.long_context              # memory sweeps (compile only, ~1 min), plot,
                                                   # RESULTS.md section, long_context.json
    python -m benchmarks.long_context --time       # + interleaved timing at T = 2048, 4096 and
                                                   # V = 32768 (minutes; on a quiet machine)
    python -m benchmarks.long_context --quick --out /tmp/lc   # toy sizes, memory + timing smoke

What is measured (float32, one process):

1. **Attention, memory vs T** (T = S = 512 … 16384, D = 64, causal, ``--heads`` heads): the
   temporary memory of ``jit(grad(⟨attention(q, k, v), u⟩))`` w.r.t. q, k, v, from XLA's
   ``memory_analysis().temp_size_in_bytes`` of the compiled program (exact; nothing is run),
   for ``ops.flash_attention`` (hand, blockwise), ``ops.attention`` (hand, whole T × S blocks)
   and autodiff of the materialised reference (``jax.grad`` of
   `funcbp.ops.attention.attention_reference`).
2. **Head, memory vs V** (N = 8192 tokens, D = 256): ``jit(grad)`` of the mean softmax CE of
   ``x @ w`` w.r.t. x and w: ``ops.linear_cross_entropy`` (gradients in the forward, the op),
   its variant that recomputes the logits in the backward, and autodiff of softmax-CE over the
   full logits; plus a chunk-size sweep at V = 32768.
3. **FLOPs.** XLA's ``cost_analysis`` counts a while-loop body once, not once per trip, so for
   the chunked head the loop bodies' count is multiplied by the number of chunks (both loops of
   each variant run that many trips; the work outside them is negligible), and checked against
   the GEMM count 2·N·D·V per GEMM. For blockwise attention the trips differ per query block
   (skipped blocks), so the table gives the GEMM FLOPs counted from the blocks actually computed.
4. **Time** (``--time``, or toy sizes with ``--quick``): hand vs autodiff, interleaved rounds
   (A B, B A, …) after a warm-up that compiles, medians with min–max. Not run at scale by
   default: the machine is shared (see /work/shared/BENCHMARKING.md).

Targets (issue 20): flash_attention temp ≥ 20× lower than autodiff of the materialised
reference at T = 4096 and ≥ 32× at T = 16384; linear_cross_entropy ≥ 4.8× lower than autodiff
at N = 8192, D = 256, V = 32768.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import block, compiled_stats, interleaved, machine_info, md_table
from funcbp import ops
from funcbp.ops.attention import attention_reference
from funcbp.ops.linear_cross_entropy import (
    DEFAULT_CHUNK,
    linear_cross_entropy_recompute,
    linear_cross_entropy_reference,
)

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 2**20
SECTION_BEGIN, SECTION_END = "<!-- long_context -->", "<!-- /long_context -->"

FULL = {
    "ts": [512, 1024, 2048, 4096, 8192, 16384],
    "d": 64,
    "block": 128,
    "n": 8192,
    "dm": 256,
    "vs": [4096, 8192, 16384, 32768, 65536, 131072],
    "chunk": DEFAULT_CHUNK,
    "chunks": [256, 512, 1024, 2048],
    "v_chunks": 32768,
    "time_ts": [2048, 4096],
    "time_v": 32768,
}
QUICK = {
    "ts": [64, 128, 256],
    "d": 16,
    "block": 32,
    "n": 256,
    "dm": 32,
    "vs": [256, 512, 1024],
    "chunk": 64,
    "chunks": [32, 64],
    "v_chunks": 1024,
    "time_ts": [128],
    "time_v": 512,
}


# -- attention ----------------------------------------------------------------------------------
def attention_losses(block_size: int) -> dict[str, Any]:
    """name -> f(q, k, v, u) = ⟨attention(q, k, v), u⟩ (causal); its grad is the VJP at u."""
    return {
        "flash_attention (hand)": lambda q, k, v, u: jnp.vdot(
            ops.flash_attention(q, k, v, causal=True, block_size=block_size), u
        ),
        "attention (hand)": lambda q, k, v, u: jnp.vdot(ops.attention(q, k, v, causal=True), u),
        "autodiff (materialised)": lambda q, k, v, u: jnp.vdot(
            attention_reference(q, k, v, True), u
        ),
    }


def _flash_gemm_flops(t: int, d: int, heads: int, block: int) -> float:
    """GEMM FLOPs of flash_attention's forward + backward (causal, T = S, D = Dv), counted over
    the blocks it computes: forward QKᵀ and PV (2 GEMMs), backward QKᵀ, dV, dP, dK, dQ (5)."""
    b = min(block, t)
    n = -(-t // b)
    visible = sum(min(n, (min((i + 1) * b, t) - 1) // b + 1) for i in range(n))
    return 7 * 2.0 * b * b * d * visible * heads


def attention_memory(cfg: dict, heads: int, log=print) -> list[dict[str, Any]]:
    """Temp bytes of jit(grad) per T and variant (compiled, not run)."""
    rows = []
    d, block_size = cfg["d"], cfg["block"]
    for t in cfg["ts"]:
        x = jax.ShapeDtypeStruct((heads, t, d), jnp.float32)
        row: dict[str, Any] = {"T": t, "D": d, "heads": heads, "block_size": block_size}
        for name, loss in attention_losses(block_size).items():
            stats = compiled_stats(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), x, x, x, x)
            row[name] = {"temp_bytes": stats["temp_bytes"], "xla_flops": stats["flops"]}
        row["flash_gemm_flops"] = _flash_gemm_flops(t, d, heads, block_size)
        row["materialised_gemm_flops"] = 6 * 2.0 * t * t * d * heads  # QKᵀ; dP, dV, dQ, dK; PV
        hand, auto = row["flash_attention (hand)"], row["autodiff (materialised)"]
        row["ratio"] = auto["temp_bytes"] / max(hand["temp_bytes"], 1)
        log(
            f"attention T={t}: flash {hand['temp_bytes'] / MIB:.2f} MiB, autodiff "
            f"{auto['temp_bytes'] / MIB:.1f} MiB ({row['ratio']:.0f}x)"
        )
        rows.append(row)
    return rows


# -- head ---------------------------------------------------------------------------------------
def head_losses(chunk_size: int) -> dict[str, Any]:
    return {
        "linear_cross_entropy (hand)": lambda x, w, y: ops.linear_cross_entropy(
            x, w, y, chunk_size=chunk_size
        ),
        "recompute variant (hand)": lambda x, w, y: linear_cross_entropy_recompute(
            x, w, y, chunk_size=chunk_size
        ),
        "autodiff (full logits)": linear_cross_entropy_reference,
    }


def head_row(n: int, dm: int, v: int, chunk_size: int) -> dict[str, Any]:
    """Temp bytes and FLOPs of jit(grad) w.r.t. x, w for each variant at one (N, D, V)."""
    x = jax.ShapeDtypeStruct((n, dm), jnp.float32)
    w = jax.ShapeDtypeStruct((dm, v), jnp.float32)
    y = jax.ShapeDtypeStruct((n,), jnp.int32)
    chunks = -(-n // min(chunk_size, n))
    row: dict[str, Any] = {"N": n, "D": dm, "V": v, "chunk_size": chunk_size, "chunks": chunks}
    for name, loss in head_losses(chunk_size).items():
        stats = compiled_stats(jax.jit(jax.grad(loss, argnums=(0, 1))), x, w, y)
        trips = 1 if name.startswith("autodiff") else chunks  # loop bodies are counted once
        row[name] = {"temp_bytes": stats["temp_bytes"], "flops": stats["flops"] * trips}
    row["gemm_flops"] = 2.0 * n * dm * v  # one N × D × V GEMM
    hand, auto = row["linear_cross_entropy (hand)"], row["autodiff (full logits)"]
    row["ratio"] = auto["temp_bytes"] / max(hand["temp_bytes"], 1)
    return row


def head_memory(cfg: dict, log=print) -> dict[str, list[dict[str, Any]]]:
    chunk = cfg["chunk"]
    over_v = []
    for v in cfg["vs"]:
        over_v.append(head_row(cfg["n"], cfg["dm"], v, chunk))
        r = over_v[-1]
        log(
            f"head V={v}: hand {r['linear_cross_entropy (hand)']['temp_bytes'] / MIB:.1f} MiB, "
            f"autodiff {r['autodiff (full logits)']['temp_bytes'] / MIB:.0f} MiB "
            f"({r['ratio']:.1f}x)"
        )
    over_chunk = [head_row(cfg["n"], cfg["dm"], cfg["v_chunks"], c) for c in cfg["chunks"]]
    return {"over_v": over_v, "over_chunk": over_chunk}


# -- timing ---------------------------------------------------------------------------------------
def _timed(fns: dict[str, Any], args: tuple, repeats: int) -> dict[str, Any]:
    jitted = {k: jax.jit(f) for k, f in fns.items()}
    calls = {k: (lambda f=f: block(f(*args))) for k, f in jitted.items()}
    times = interleaved(calls, repeats=repeats)
    return {k: t.to_dict() for k, t in times.items()}


def timing(cfg: dict, heads: int, repeats: int, log=print) -> dict[str, Any]:
    """Interleaved medians of jit(grad): flash vs autodiff per T, the head vs autodiff."""
    out: dict[str, Any] = {"attention": [], "head": None}
    gen = np.random.default_rng(0)
    normal = lambda *s: jnp.asarray(gen.standard_normal(s), jnp.float32)
    for t in cfg["time_ts"]:
        q, k, v, u = (normal(heads, t, cfg["d"]) for _ in range(4))
        losses = attention_losses(cfg["block"])
        fns = {
            n: jax.grad(losses[n], argnums=(0, 1, 2))
            for n in ("flash_attention (hand)", "autodiff (materialised)")
        }
        res = _timed(fns, (q, k, v, u), repeats)
        out["attention"].append({"T": t, **res})
        log(
            f"time attention T={t}: "
            + ", ".join(f"{n} {r['median_s'] * 1e3:.1f} ms" for n, r in res.items())
        )
    n, dm, vv = cfg["n"], cfg["dm"], cfg["time_v"]
    x, w = normal(n, dm), normal(dm, vv) / math.sqrt(dm)
    y = jnp.asarray(gen.integers(0, vv, n), jnp.int32)
    losses = head_losses(cfg["chunk"])
    fns = {k: jax.grad(f, argnums=(0, 1)) for k, f in losses.items()}
    out["head"] = {"N": n, "D": dm, "V": vv, **_timed(fns, (x, w, y), repeats)}
    log(
        "time head: "
        + ", ".join(
            f"{k} {r['median_s'] * 1e3:.1f} ms"
            for k, r in out["head"].items()
            if isinstance(r, dict)
        )
    )
    return out


# -- report ---------------------------------------------------------------------------------------
def plot(res: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    att = res["attention"]
    ts = [r["T"] for r in att]
    for name, style in [
        ("autodiff (materialised)", "o-"),
        ("attention (hand)", "s--"),
        ("flash_attention (hand)", "^-"),
    ]:
        a.loglog(ts, [r[name]["temp_bytes"] / MIB for r in att], style, label=name, base=2)
    a.set(
        xlabel="sequence length T = S",
        ylabel="jit(grad) temp memory (MiB)",
        title=f"attention, D={att[0]['D']}, {att[0]['heads']} head(s), f32, causal",
    )
    head = res["head"]["over_v"]
    vs = [r["V"] for r in head]
    for name, style in [
        ("autodiff (full logits)", "o-"),
        ("recompute variant (hand)", "s--"),
        ("linear_cross_entropy (hand)", "^-"),
    ]:
        b.loglog(vs, [r[name]["temp_bytes"] / MIB for r in head], style, label=name, base=2)
    b.set(
        xlabel="vocabulary V",
        ylabel="jit(grad) temp memory (MiB)",
        title=f"linear + softmax CE, N={head[0]['N']}, D={head[0]['D']}, "
        f"chunk {head[0]['chunk_size']}, f32",
    )
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _fmt_time(t: dict) -> str:
    ms = lambda k: t[k] * 1e3
    return f"{ms('median_s'):.1f} ms ({ms('min_s'):.1f}–{ms('max_s'):.1f})"


def _mib(b: int) -> str:
    return f"{b / MIB:.2f}" if b < 10 * MIB else f"{b / MIB:.0f}"


def targets(res: dict) -> list[str]:
    att = {r["T"]: r["ratio"] for r in res["attention"]}
    head = {r["V"]: r["ratio"] for r in res["head"]["over_v"]}
    lines = []
    for t, want in ((4096, 20), (16384, 32)):
        if t in att:
            ok = "met" if att[t] >= want else "NOT met"
            lines.append(
                f"- flash_attention temp ≥ {want}× lower than autodiff at T={t}: "
                f"**{ok}** ({att[t]:.0f}×)"
            )
    if 32768 in head:
        ok = "met" if head[32768] >= 4.8 else "NOT met"
        lines.append(
            f"- linear_cross_entropy temp ≥ 4.8× lower than autodiff at V=32768: "
            f"**{ok}** ({head[32768]:.1f}×)"
        )
    return lines


def markdown(res: dict) -> str:
    m = res["machine"]
    v = m["versions"]
    out = [
        SECTION_BEGIN,
        "## Long context and large vocabularies: blockwise attention and the chunked head",
        "",
        f"Written by `benchmarks/long_context.py` ({m['date']}; CPU: {m['cpu']}, "
        f"{m['usable_cores']} cores, backend {m['jax_backend']}; jax {v['jax']}, jaxlib "
        f"{v['jaxlib']}, numpy {v['numpy']}; load {', '.join(f'{x:.2f}' for x in m['loadavg'])}). "
        f"Reproduce: `{res['command']}`. Memory is XLA's "
        "`memory_analysis().temp_size_in_bytes` of the compiled `jit(grad)` (exact, nothing run; "
        "inputs, outputs and parameters are not temporaries). Plot: `long_context.png`.",
        "",
        *targets(res),
        "",
        f"**Attention** (causal, T = S, D = {res['attention'][0]['D']}, "
        f"{res['attention'][0]['heads']} head(s), float32, block "
        f"{res['attention'][0]['block_size']}; GEMM GFLOP of forward + backward counted from "
        "the computed blocks):",
        "",
    ]
    rows = [
        [
            r["T"],
            _mib(r["flash_attention (hand)"]["temp_bytes"]),
            _mib(r["attention (hand)"]["temp_bytes"]),
            _mib(r["autodiff (materialised)"]["temp_bytes"]),
            f"{r['ratio']:.0f}×",
            f"{r['flash_gemm_flops'] / 1e9:.2f}",
            f"{r['materialised_gemm_flops'] / 1e9:.2f}",
        ]
        for r in res["attention"]
    ]
    out.append(
        md_table(
            [
                "T",
                "flash_attention MiB",
                "attention (hand) MiB",
                "autodiff MiB",
                "autodiff ÷ flash",
                "flash GFLOP",
                "materialised GFLOP",
            ],
            rows,
        )
    )
    h = res["head"]["over_v"][0]
    out += [
        "",
        f"**Head** (mean softmax CE of x @ w, N = {h['N']}, D = {h['D']}, float32, chunk "
        f"{h['chunk_size']}; GFLOP = XLA's count, loop bodies × chunks):",
        "",
    ]
    rows = [
        [
            r["V"],
            _mib(r["linear_cross_entropy (hand)"]["temp_bytes"]),
            _mib(r["recompute variant (hand)"]["temp_bytes"]),
            _mib(r["autodiff (full logits)"]["temp_bytes"]),
            f"{r['ratio']:.1f}×",
            f"{r['linear_cross_entropy (hand)']['flops'] / r['gemm_flops']:.2f}",
            f"{r['recompute variant (hand)']['flops'] / r['gemm_flops']:.2f}",
            f"{r['autodiff (full logits)']['flops'] / r['gemm_flops']:.2f}",
        ]
        for r in res["head"]["over_v"]
    ]
    out.append(
        md_table(
            [
                "V",
                "linear_cross_entropy MiB",
                "recompute variant MiB",
                "autodiff MiB",
                "autodiff ÷ op",
                "op FLOPs / NDV-GEMM",
                "recompute FLOPs / GEMM",
                "autodiff FLOPs / GEMM",
            ],
            rows,
        )
    )
    out += ["", f"Chunk size at V = {res['head']['over_chunk'][0]['V']}:", ""]
    rows = [
        [
            r["chunk_size"],
            _mib(r["linear_cross_entropy (hand)"]["temp_bytes"]),
            _mib(r["recompute variant (hand)"]["temp_bytes"]),
            _mib(r["autodiff (full logits)"]["temp_bytes"]),
            f"{r['ratio']:.1f}×",
        ]
        for r in res["head"]["over_chunk"]
    ]
    out.append(md_table(["chunk_size", "op MiB", "recompute MiB", "autodiff MiB", "ratio"], rows))
    if res.get("time"):
        out += ["", "Time (jit(grad), interleaved medians, min–max):", ""]
        rows = [
            [
                f"attention T={r['T']}",
                *(_fmt_time(r[n]) for n in ("flash_attention (hand)", "autodiff (materialised)")),
            ]
            for r in res["time"]["attention"]
        ]
        hd = res["time"]["head"]
        rows.append(
            [
                f"head V={hd['V']}",
                *(
                    _fmt_time(hd[n])
                    for n in ("linear_cross_entropy (hand)", "autodiff (full logits)")
                ),
            ]
        )
        out.append(md_table(["case", "hand", "autodiff"], rows))
    out += ["", SECTION_END]
    return "\n".join(out)


def write_section(path: str, section: str) -> None:
    """Replace this script's section of ``path`` (between its markers) or append it."""
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    pattern = re.escape(SECTION_BEGIN) + r".*?" + re.escape(SECTION_END)
    if re.search(pattern, text, re.S):
        text = re.sub(pattern, lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


# -- command line ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="toy sizes; memory and a timing smoke")
    p.add_argument("--time", action="store_true", help="also time hand vs autodiff (minutes)")
    p.add_argument("--repeats", type=int, default=None, help="timing rounds (default 9; quick 2)")
    p.add_argument("--heads", type=int, default=1, help="attention heads (default 1)")
    p.add_argument(
        "--out",
        default=None,
        help="folder for the outputs (default: benchmarks/; --quick: a temp dir)",
    )
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    out_dir = args.out or (tempfile.mkdtemp(prefix="long_context_") if args.quick else HERE)
    os.makedirs(out_dir, exist_ok=True)
    log = lambda s: print(s, flush=True)
    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "machine": machine_info(),
        "quick": args.quick,
        "command": shlex.join(
            ["python", "-m", "benchmarks.long_context", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    res["attention"] = attention_memory(cfg, args.heads, log)
    res["head"] = head_memory(cfg, log)
    if args.time or args.quick:
        res["time"] = timing(cfg, args.heads, args.repeats or (2 if args.quick else 9), log)
    res["seconds"] = time.perf_counter() - t0
    res["loadavg_end"] = list(os.getloadavg())
    with open(os.path.join(out_dir, "long_context.json"), "w") as f:
        json.dump(res, f, indent=1)
    plot(res, os.path.join(out_dir, "long_context.png"))
    write_section(os.path.join(out_dir, "RESULTS.md"), markdown(res))
    log("\n".join(targets(res)) + f"\n({res['seconds']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
