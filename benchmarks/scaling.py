"""MLP step time vs width and vs batch: where dispatch overhead ends and GEMM time dominates.

Two sweeps of a 2-hidden-layer ReLU MLP (``width → width → width → 10``), hand vs autodiff
(and the ``lean`` step: hand gradients without the step's guard and metrics) interleaved at
every point:

* width sweep at a fixed batch;
* batch sweep at a fixed width.

Beside them, the dispatch floor: the time of one call of a jitted function that does almost
nothing (``x + 1`` on a scalar), i.e. the fixed cost of a Python→XLA call on this machine.
A step costs about ``fixed + params·c + flops / rate``: a fixed part (the call, and one small
kernel launch per op), a part proportional to the parameter count (the optimizer update and the
guard's passes over every parameter: it dominates at small batch) and the GEMMs; once the
step's GFLOP/s approaches the matmul ceiling it is GEMM-bound.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.common import interleaved
from benchmarks.models import ModelSpec, bench_model

__all__ = ["dispatch_floor", "sweep", "plot", "FULL", "TINY"]

FULL = {
    "widths": (16, 64, 256, 1024, 2048),
    "width_batch": 256,
    "batches": (1, 16, 256, 1024, 4096),
    "batch_width": 512,
}
SWEEP_VARIANTS = ("hand", "autodiff", "lean")
TINY = {"widths": (4, 8), "width_batch": 4, "batches": (1, 4), "batch_width": 8}


def dispatch_floor(repeats: int, inner: int = 200) -> dict[str, Any]:
    """Seconds per call of a jitted ``x + 1`` on a float32 scalar (blocking on the last)."""
    f = jax.jit(lambda x: x + 1)
    x = jnp.float32(0)
    f(x).block_until_ready()

    def run():
        y = x
        for _ in range(inner):
            y = f(y)
        y.block_until_ready()

    return {"time": interleaved({"floor": run}, repeats=repeats, inner=inner)["floor"]}


def _spec(width: int, batch: int) -> ModelSpec:
    return ModelSpec(f"mlp-w{width}-b{batch}", "mlp", batch, (width,), 10, (width, width, 10))


def sweep(config: dict[str, Any], *, repeats: int, target_s: float = 0.05) -> dict[str, Any]:
    """Both sweeps; each point is `benchmarks.models.bench_model` with hand and autodiff."""
    out: dict[str, Any] = {"config": dict(config), "width": [], "batch": []}
    for w in config["widths"]:
        r = bench_model(
            _spec(w, config["width_batch"]),
            repeats=repeats,
            variants=SWEEP_VARIANTS,
            target_s=target_s,
        )
        out["width"].append({"width": w, "batch": config["width_batch"], **r})
    for b in config["batches"]:
        r = bench_model(
            _spec(config["batch_width"], b),
            repeats=repeats,
            variants=SWEEP_VARIANTS,
            target_s=target_s,
        )
        out["batch"].append({"width": config["batch_width"], "batch": b, **r})
    return out


def plot(
    result: dict[str, Any],
    path: str,
    *,
    floor_s: float | None = None,
    peak_gflops: float | None = None,
) -> str:
    """Write a 2×2 PNG (ms/step and GFLOP/s, vs width and vs batch) with matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for col, (axis, fixed) in enumerate((("width", "batch"), ("batch", "width"))):
        points = result[axis]
        if not points:
            continue
        xs = [p[axis] for p in points]
        for variant, style in (("hand", "o-"), ("autodiff", "s--"), ("lean", "^:")):
            ms = [1e3 * p["variants"][variant]["time"].median for p in points]
            lo = [1e3 * p["variants"][variant]["time"].min for p in points]
            hi = [1e3 * p["variants"][variant]["time"].max for p in points]
            gf = [
                p["variants"][variant]["flops"] / p["variants"][variant]["time"].median / 1e9
                for p in points
            ]
            axes[0, col].plot(xs, ms, style, label=variant)
            axes[0, col].fill_between(xs, lo, hi, alpha=0.2)
            axes[1, col].plot(xs, gf, style, label=variant)
        if floor_s is not None:
            axes[0, col].axhline(1e3 * floor_s, color="gray", ls=":", label="dispatch floor")
        if peak_gflops is not None:
            axes[1, col].axhline(peak_gflops, color="gray", ls=":", label="matmul peak")
        fixed_value = points[0][fixed]
        for row in range(2):
            ax = axes[row, col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"{axis} ({fixed} {fixed_value})")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        axes[0, col].set_ylabel("ms / train step (median, band: min–max)")
        axes[1, col].set_ylabel("GFLOP/s (XLA cost_analysis flops / median)")
        axes[0, col].set_title(
            f"MLP {axis}→{axis}→{axis}→10 step time vs {axis}"
            if axis == "width"
            else "MLP step time vs batch"
        )
    fig.suptitle("funcbp MLP train step (SGD): hand VJPs vs autodiff")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
