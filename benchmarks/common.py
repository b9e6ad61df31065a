"""Shared measuring tools: interleaved timing, compiled cost/memory, the matmul ceiling, machine.

Rules these follow (``/work/shared/BENCHMARKING.md``, measured on this machine):

* variants of one comparison are timed in the same process, interleaved, with the order
  alternating every round (A B, B A, ...), after a warm-up call that compiles;
* every timed call ends in ``block_until_ready`` (JAX dispatch is asynchronous);
* FLOPs and temporary memory come from the compiled program (exact, noise-free), not guesses;
* the matmul ceiling is measured in the same run, with ``jnp.dot`` and with NumPy.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Timing",
    "block",
    "interleaved",
    "paired_ratio",
    "auto_inner",
    "compiled_stats",
    "matmul_peak",
    "machine_info",
    "md_table",
]


@dataclasses.dataclass
class Timing:
    """Seconds per step, one sample per round."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": self.min,
            "max_s": self.max,
            "samples_s": list(self.samples),
        }


def block(tree):
    """Wait for every array in ``tree`` (JAX dispatch is asynchronous)."""
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return tree


def interleaved(
    variants: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    inner: int | dict[str, int] = 1,
    warmup: int = 1,
    pause: float = 0.0,
) -> dict[str, Timing]:
    """Time each ``variants[name]()`` (which must block on its result) in alternating rounds.

    Round r runs every variant once, in the given order when r is even and reversed when odd,
    so slow drift of a shared machine hits all variants alike. Each sample is the wall time of
    one call divided by ``inner`` (how many steps the call runs; per variant if a dict).
    ``pause`` seconds of sleep before each call lets other runtimes' spinning worker threads
    (OpenBLAS, OpenMP) go idle so they do not slow the next variant.
    """
    names = list(variants)
    per = inner if isinstance(inner, dict) else dict.fromkeys(names, inner)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            variants[name]()
            samples[name].append((time.perf_counter() - t0) / per[name])
    return {n: Timing(s) for n, s in samples.items()}


def paired_ratio(a: Timing, b: Timing, confidence: float = 0.95) -> dict[str, float]:
    """The median of the per-round ratios ``a_i / b_i`` with a distribution-free interval.

    `interleaved` runs every variant once per round, side by side, so round i's two samples
    share the machine's state at that moment and their ratio cancels most slow drift of a
    shared host. The interval is the sign test's for a median: order statistics
    ``[r_(k), r_(n+1-k)]`` of the n sorted ratios, k the largest with P(Bin(n, 1/2) < k) ≤
    (1 − confidence) / 2; with too few rounds it is the whole range (k = 1) and ``coverage``
    (the interval's exact confidence) says how much less than asked it holds.
    Returns ``{"median", "lo", "hi", "coverage", "n"}``.
    """
    r = sorted(x / y for x, y in zip(a.samples, b.samples, strict=True))
    n = len(r)

    def tail(k: int) -> float:  # P(Bin(n, 1/2) < k)
        return sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and tail(k + 1) <= (1 - confidence) / 2:
        k += 1
    return {
        "median": statistics.median(r),
        "lo": r[k - 1],
        "hi": r[n - k],
        "coverage": 1 - 2 * tail(k),
        "n": n,
    }


def auto_inner(
    fn: Callable[[int], Any], target_s: float, max_inner: int = 2000
) -> tuple[int, float]:
    """How many steps one timed call should run so it lasts about ``target_s`` seconds.

    ``fn(k)`` runs k steps (and blocks); it is called twice with k = 1 (a warm-up that
    compiles, then a timed one). Returns ``(inner, seconds per step)``.
    """
    fn(1)
    t0 = time.perf_counter()
    fn(1)
    dt = max(time.perf_counter() - t0, 1e-7)
    return int(min(max_inner, max(1, round(target_s / dt)))), dt


def _cost(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def compiled_stats(jitted, *args) -> dict[str, Any]:
    """Compile ``jitted`` for ``args``: ``{"compiled", "flops", "temp_bytes", "arg_bytes",
    "out_bytes"}`` from XLA's own ``cost_analysis`` and ``memory_analysis``."""
    compiled = jitted.lower(*args).compile()
    mem = compiled.memory_analysis()
    return {
        "compiled": compiled,
        "flops": _cost(compiled),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "arg_bytes": int(mem.argument_size_in_bytes),
        "out_bytes": int(mem.output_size_in_bytes),
    }


def matmul_peak(n: int = 2048, repeats: int = 11, seed: int = 0) -> dict[str, Any]:
    """GFLOP/s of an n×n×n float32 matmul with ``jnp.dot`` (jitted) and with NumPy.

    Returns ``{"n", "jnp": Timing, "numpy": Timing, "gflops": {name: median GFLOP/s},
    "best_gflops": float}``. The best of the two medians is the ceiling every step's
    GFLOP/s is compared with.

    The two are timed in separate blocks (jnp first, after a pause), not interleaved: they
    are ceilings, not a comparison, and OpenBLAS's worker threads keep spinning for a while
    after each NumPy call, which slowed the jnp call right after one by 1.4-1.9× (the
    interleaved samples here were bimodal, 39 vs 54-74 ms, under a 0.05 s pause).
    """
    gen = np.random.default_rng(seed)
    a_np = gen.standard_normal((n, n), dtype=np.float32)
    b_np = gen.standard_normal((n, n), dtype=np.float32)
    a, b = jnp.asarray(a_np), jnp.asarray(b_np)
    dot = jax.jit(jnp.dot).lower(a, b).compile()
    out = np.empty((n, n), np.float32)
    time.sleep(0.5)  # let any earlier runtime's spinning threads go idle
    times = interleaved({"jnp": lambda: dot(a, b).block_until_ready()}, repeats=repeats)
    times |= interleaved({"numpy": lambda: np.dot(a_np, b_np, out=out)}, repeats=repeats)
    time.sleep(0.5)
    flops = 2.0 * n**3
    gflops = {k: flops / t.median / 1e9 for k, t in times.items()}
    return {"n": n, **times, "gflops": gflops, "best_gflops": max(gflops.values())}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [x for x in ("avx2", "fma", "avx512f", "avx512_bf16") if x in have]
    except OSError:
        pass
    return []


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _blas() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("internal_api", "version", "num_threads", "architecture", "filepath")
    return [{k: d.get(k) for k in keep} for d in threadpool_info()]


def machine_info() -> dict[str, Any]:
    """CPU, cores, load, versions, environment that changes speed; JSON-able."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "loadavg": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            d: _version(d) for d in ("jax", "jaxlib", "numpy", "optax", "torch", "matplotlib")
        },
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "env": {
            k: os.environ[k]
            for k in sorted(os.environ)
            if k.startswith(("XLA_", "OPENBLAS_", "OMP_", "MKL_", "JAX_"))
        },
        "blas": _blas(),
    }


def md_table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one char per column, 'l' or 'r' (default: left first)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
