"""The whole benchmark suite in one process, and its Markdown report.

    python -m benchmarks.suite                 # full sizes, writes benchmarks/RESULTS.md etc.
    python -m benchmarks.suite --quick         # toy sizes, seconds (what the smoke test runs)
    funcbp bench ...                           # the same, from the CLI

Order (each part's timing is interleaved inside itself; see `benchmarks.common`):

1. the matmul ceiling (2048³ float32, ``jnp.dot`` vs NumPy);
2. every model's train step: hand, autodiff, explicit engine, lean (`benchmarks.models`);
3. the fused multi-step on the small MLP;
4. the MLP width/batch sweeps and the dispatch floor (`benchmarks.scaling`);
5. the matmul ceiling again (drift check);
6. peers: PyTorch eager and the NumPy MLP, in their own block after all JAX timing;
7. XLA CPU flags, each in a fresh subprocess (`benchmarks.xla_flags`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks import models as M
from benchmarks import scaling as S
from benchmarks.common import (
    Timing,
    auto_inner,
    interleaved,
    machine_info,
    matmul_peak,
    md_table,
    paired_ratio,
)

__all__ = ["run_suite", "render_markdown", "targets", "wait_for_load", "main", "PARTS"]

PARTS = ("models", "multi", "scaling", "peers", "flags")
NOTES_BEGIN, NOTES_END = "<!-- notes -->", "<!-- /notes -->"


def wait_for_load(
    threshold: float, max_wait_s: float, poll_s: float = 30.0, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Poll the 1-minute load average until it is below ``threshold`` or time runs out."""
    t0 = time.monotonic()
    seen = []
    while True:
        load = os.getloadavg()[0]
        seen.append(round(load, 2))
        if load < threshold or time.monotonic() - t0 >= max_wait_s:
            break
        log(f"load {load:.2f} >= {threshold}: waiting ({time.monotonic() - t0:.0f} s so far)")
        time.sleep(poll_s)
    return {
        "threshold": threshold,
        "waited_s": time.monotonic() - t0,
        "polled": seen,
        "reached": seen[-1] < threshold,
    }


class _LoadTrace:
    """Samples the 1-minute load average every ``period_s`` in a daemon thread (the suite's own
    process counts in it: about 2 on 2 cores while a GEMM-bound step runs)."""

    def __init__(self, period_s: float):
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True)
        self._thread.start()

    def _run(self, period_s: float) -> None:
        while True:
            self.samples.append((time.perf_counter() - self._t0, os.getloadavg()[0]))
            if self._stop.wait(period_s):
                return

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def run_suite(
    *,
    scale: str = "full",
    repeats: int = 15,
    parts: tuple[str, ...] = PARTS,
    model_names: tuple[str, ...] | None = None,
    flag_settings: dict[str, str] | None = None,
    flag_rounds: int = 2,
    flag_hogs: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the chosen ``parts`` at ``scale`` ("full" or "tiny"); a JSON-able-after-`to_json`
    dict of everything measured."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"run_suite: unknown parts {sorted(unknown)}; known: {PARTS}")
    tiny = scale == "tiny"
    specs = M.model_specs(scale)
    if model_names:
        known = {s.name for s in specs}
        bad = [n for n in model_names if n not in known]
        if bad:
            raise ValueError(f"run_suite: unknown models {bad}; known: {sorted(known)}")
        specs = [s for s in specs if s.name in model_names]
    res: dict[str, Any] = {"scale": scale, "repeats": repeats, "parts": list(parts)}
    res["machine"] = machine_info()
    t_start = time.perf_counter()
    part_s: dict[str, float] = {}
    last = [t_start]
    trace = _LoadTrace(period_s=10.0)

    def mark(name: str) -> None:
        now = time.perf_counter()
        part_s[name] = now - last[0]
        last[0] = now

    mm_n = 128 if tiny else 2048

    log(f"matmul ceiling {mm_n}³ ...")
    res["peak"] = [matmul_peak(mm_n, repeats=max(3, min(repeats, 9)))]

    mark("peak")
    if "models" in parts:
        res["models"] = []
        for spec in specs:
            log(f"model {spec.label} ...")
            res["models"].append(
                M.bench_model(
                    spec,
                    variants=M.VARIANTS + (("matmuls",) if spec.kind == "mlp" else ()),
                    repeats=repeats,
                    target_s=0.02 if tiny else 0.15,
                    budget_s=None if tiny else 40.0,
                )
            )

    mark("models")
    if "multi" in parts:
        small = next(s for s in M.model_specs(scale) if s.name == "mlp-small")
        log("fused multi-step ...")
        res["multi"] = M.bench_multi_step(small, ks=(2, 4) if tiny else (10, 50), repeats=repeats)

    mark("multi")
    if "scaling" in parts:
        log("scaling sweeps ...")
        res["floor"] = S.dispatch_floor(repeats)
        res["scaling"] = S.sweep(
            S.TINY if tiny else S.FULL,
            repeats=max(3, min(repeats, 15)),
            target_s=0.01 if tiny else 0.05,
        )

    mark("scaling")
    log("matmul ceiling again ...")
    res["peak"].append(matmul_peak(mm_n, repeats=max(3, min(repeats, 9))))

    mark("peak again")
    if "peers" in parts:
        from benchmarks.torch_numpy import have_torch, numpy_runner, torch_runner, usable_cores

        res["peers"] = {"torch_available": have_torch(), "rows": []}
        for spec in specs:
            n_cores = usable_cores()
            runners = {f"torch-{n}t": torch_runner(spec, threads=n) for n in sorted({1, n_cores})}
            runners["numpy"] = numpy_runner(spec)
            runners = {k: v for k, v in runners.items() if v is not None}
            if not runners:
                continue
            log(f"peers {spec.label}: {', '.join(runners)} ...")
            target = 0.02 if tiny else 0.15
            inner, per_call = {}, 0.0
            for k, r in runners.items():
                inner[k], dt = auto_inner(r, target)
                per_call += inner[k] * dt
            reps = repeats if tiny else max(3, min(repeats, int(30.0 / per_call)))
            times = interleaved(
                {k: (lambda r=r, n=inner[k]: r(n)) for k, r in runners.items()},
                repeats=reps,
                inner=inner,
                warmup=0,
                pause=0.0 if tiny else 0.2,
            )
            res["peers"]["rows"].append(
                {
                    "model": spec.name,
                    "inner": inner,
                    "repeats": reps,
                    "variants": {k: {"time": t} for k, t in times.items()},
                }
            )

    mark("peers")
    if "flags" in parts:
        from benchmarks.xla_flags import SETTINGS, run_settings

        log("XLA flags (subprocesses) ...")
        res["flags"] = run_settings(
            flag_settings or SETTINGS,
            rounds=flag_rounds,
            steps=2 if tiny else 3,
            size="tiny" if tiny else "large",
            matmul_n=128 if tiny else 2048,
        )
        if flag_hogs:
            log(f"XLA flags with {flag_hogs} busy-loop processes competing ...")
            contended = {k: SETTINGS[k] for k in ("default", "device_count=8")}
            res["flags_contended"] = {
                "hogs": flag_hogs,
                "settings": run_settings(
                    contended,
                    rounds=flag_rounds,
                    steps=2 if tiny else 3,
                    size="tiny" if tiny else "large",
                    matmul_n=128 if tiny else 2048,
                    hogs=flag_hogs,
                ),
            }

    mark("flags")
    res["load_trace"] = trace.stop()
    res["seconds"] = time.perf_counter() - t_start
    res["part_seconds"] = part_s
    res["loadavg_end"] = list(os.getloadavg())
    res["targets"] = targets(res)
    return res


# -- derived numbers ---------------------------------------------------------------------
def best_peak(res) -> float:
    return max(p["best_gflops"] for p in res["peak"])


def _gflops(v: dict[str, Any]) -> float:
    return v["flops"] / v["time"].median / 1e9


def _model(res, name):
    return next((m for m in res.get("models", []) if m["model"] == name), None)


def _peer(res, name):
    rows = res.get("peers", {}).get("rows", [])
    return next((r for r in rows if r["model"] == name), None)


def targets(res) -> list[dict[str, Any]]:
    """The stated goals, each ``{"target", "met": bool | None, "detail"}`` (None: not measured)."""
    out = []
    ms = res.get("models", [])
    if ms:
        ratios = {
            m["model"]: m["variants"]["hand"]["time"].median
            / m["variants"]["autodiff"]["time"].median
            for m in ms
        }
        out.append(
            {
                "target": "hand/autodiff ≤ 1.00 on every model (median step time)",
                "met": all(r <= 1.0 for r in ratios.values()),
                "detail": ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()),
            }
        )
        mem = {
            m["model"]: (
                m["variants"]["hand"]["temp_bytes"],
                m["variants"]["autodiff"]["temp_bytes"],
            )
            for m in ms
        }
        out.append(
            {
                "target": "hand temp memory ≤ autodiff on every model",
                "met": all(h <= a for h, a in mem.values()),
                "detail": ", ".join(f"{k} {h / max(a, 1):.2f}×" for k, (h, a) in mem.items()),
            }
        )
    out += _sweep_targets(res.get("scaling"))
    peers = res.get("peers", {})
    if peers and peers.get("torch_available"):
        cmp = {}
        for m in ms:
            p = _peer(res, m["model"])
            torch_t = [
                v["time"].median
                for k, v in (p or {}).get("variants", {}).items()
                if k.startswith("torch")
            ]
            if torch_t:
                cmp[m["model"]] = (m["variants"]["hand"]["time"].median, min(torch_t))
        out.append(
            {
                "target": "funcbp hand step ≥ PyTorch eager speed (its best thread count) "
                "at every size",
                "met": bool(cmp) and all(h <= t for h, t in cmp.values()),
                "detail": ", ".join(f"{k} torch/hand {t / h:.2f}×" for k, (h, t) in cmp.items()),
            }
        )
    else:
        out.append(
            {
                "target": "funcbp hand step ≥ PyTorch eager speed at every size",
                "met": None,
                "detail": "torch not installed" if peers else "peers not run",
            }
        )
    large = _model(res, "mlp-large")
    if large:
        v = large["variants"]
        frac = _gflops(v["hand"]) / best_peak(res)
        detail = f"{100 * frac:.1f}%"
        if "matmuls" in v:  # the bound: the same step's GEMMs and update alone
            bound = v["matmuls"]["time"].median
            bound_frac = _gflops(v["matmuls"]) / best_peak(res)
            detail += (
                f" (its matmuls and update alone: {100 * bound_frac:.1f}%; the hand step "
                f"takes {v['hand']['time'].median / bound:.3f}× their time)"
            )
        out.append(
            {
                "target": "large MLP hand step ≥ 90% of the best matmul rate",
                "met": frac >= 0.9,
                "detail": detail,
            }
        )
    if "multi" in res:
        v = res["multi"]["variants"]
        base = v["1 step/dispatch"]["steps_per_s"]
        best = max(x["steps_per_s"] for k, x in v.items() if k.startswith("k="))
        out.append(
            {
                "target": "fused multi-step ≥ 3× steps/s on the small MLP",
                "met": best >= 3 * base,
                "detail": f"{best / base:.2f}×",
            }
        )
    return out


def _sweep_targets(sc) -> list[dict[str, Any]]:
    """Hand ≤ autodiff at every point of the MLP sweeps: temp memory (exact) and time (the
    paired per-round ratio: a point is slower only if its whole 95% interval is above 1)."""
    if not sc:
        return []
    points = [(f"{p['width']}×{p['batch']}", p["variants"]) for p in sc["width"] + sc["batch"]]
    over = [
        f"{k} {v['hand']['temp_bytes'] / v['autodiff']['temp_bytes']:.5f}×"
        f" (+{v['hand']['temp_bytes'] - v['autodiff']['temp_bytes']} B)"
        for k, v in points
        if v["hand"]["temp_bytes"] > v["autodiff"]["temp_bytes"]
    ]
    ratios = {k: paired_ratio(v["hand"]["time"], v["autodiff"]["time"]) for k, v in points}
    slower = [k for k, r in ratios.items() if r["lo"] > 1]
    above = [k for k, r in ratios.items() if r["median"] > 1]
    return [
        {
            "target": "MLP sweep: hand temp memory ≤ autodiff at every point",
            "met": not over,
            "detail": "over at " + ", ".join(over) if over else f"all {len(points)} points",
        },
        {
            "target": "MLP sweep: hand/autodiff time ≤ 1.00 at every point (paired per round)",
            "met": not above,
            "detail": ", ".join(f"{k} {r['median']:.3f}" for k, r in ratios.items())
            + f"; median > 1 at {len(above)}, significantly (95% interval above 1) at "
            + (", ".join(slower) if slower else "none"),
        },
    ]


# -- JSON and Markdown ---------------------------------------------------------------------
def to_json(obj):
    """Timings become dicts; everything else JSON-able."""
    if isinstance(obj, Timing):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    return str(obj)


def _ms(t: Timing) -> str:
    scale, unit = (1e3, "ms") if t.median >= 1e-3 else (1e6, "µs")
    return f"{t.median * scale:.3g} {unit} ({t.min * scale:.3g}–{t.max * scale:.3g})"


def _mib(b: int) -> str:
    return f"{b / 2**20:.2f}"


def render_markdown(res, *, command: str, notes: str = "") -> str:
    m = res["machine"]
    peak = best_peak(res)
    lines = ["# funcbp benchmark results", ""]
    lines.append(
        "Generated by `benchmarks/suite.py`; every comparison is timed in one process, "
        "interleaved (A B, B A, …) after warm-up; times are the **median** per train step with "
        "(min–max) over rounds. GFLOP/s = XLA `cost_analysis()` flops of the compiled step / "
        "median time; temp = `memory_analysis().temp_size_in_bytes`."
    )
    lines += ["", "## Machine and run", ""]
    ver = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    blas = (
        "; ".join(
            f"{b.get('internal_api')} {b.get('version')} {b.get('architecture')} "
            f"{b.get('num_threads')} threads"
            for b in m["blas"]
        )
        or "unknown"
    )
    lines += [
        f"- date: {m['date']}",
        f"- CPU: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['cores']} cores "
        f"({m['usable_cores']} usable), backend {m['jax_backend']}",
        f"- versions: Python {m['python']}, {ver}",
        f"- NumPy BLAS: {blas}",
        f"- environment: {m['env'] or 'nothing speed-related set'}",
        f"- load average (1, 5, 15 min) at start: {', '.join(f'{x:.2f}' for x in m['loadavg'])}; "
        f"at end: {', '.join(f'{x:.2f}' for x in res['loadavg_end'])}",
    ]
    if res.get("load_trace"):
        loads = sorted(x for _, x in res["load_trace"])
        lines.append(
            f"- 1-min load during the run (every 10 s, this process included): min "
            f"{loads[0]:.2f}, median {loads[len(loads) // 2]:.2f}, max {loads[-1]:.2f}"
        )
    if res.get("load_wait"):
        w = res["load_wait"]
        lines.append(
            f"- waited {w['waited_s']:.0f} s for the 1-min load to drop below {w['threshold']}: "
            f"{'reached' if w['reached'] else 'NOT reached, ran anyway'} (polled {w['polled']})"
        )
    lines += [
        f"- suite time: {res['seconds']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in res.get("part_seconds", {}).items())
        + f"); scale {res['scale']}, "
        f"up to {res['repeats']} rounds",
        f"- reproduce: `{command}`",
        "",
    ]

    lines += ["## Targets", ""]
    for t in res["targets"]:
        mark = {True: "**met**", False: "**NOT met**", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: {mark} — {t['detail']}")
    lines.append("")

    lines += ["## Matmul ceiling (float32, same run)", ""]
    rows = []
    for i, p in enumerate(res["peak"]):
        for k in ("jnp", "numpy"):
            rows.append(
                [
                    f"{p['n']}³ {k} ({'start' if i == 0 else 'end'})",
                    _ms(p[k]),
                    f"{p['gflops'][k]:.1f}",
                ]
            )
    lines += [
        md_table(["matmul", "time", "GFLOP/s"], rows),
        "",
        f'Best: **{peak:.1f} GFLOP/s**; every "% peak" below divides by this.',
        "",
    ]

    if res.get("models"):
        lines += ["## Train step: hand VJPs vs autodiff (SGD, float32)", ""]
        lines.append(
            "`hand` and `autodiff` are `make_train_step` (with its finiteness guard and metrics); "
            "`explicit` is the explicit reverse engine; `lean` is the hand path with only "
            "value-and-grad and the update (what the PyTorch loop does)."
        )
        lines.append("")
        rows = []
        for mres in res["models"]:
            hand = mres["variants"]["hand"]
            for name, v in mres["variants"].items():
                rows.append(
                    [
                        mres["label"] if name == "hand" else "",
                        name,
                        _ms(v["time"]),
                        f"{v['time'].median / hand['time'].median:.3f}",
                        f"{v['flops'] / 1e9:.4g}",
                        f"{_gflops(v):.1f}",
                        f"{100 * _gflops(v) / peak:.1f}%",
                        _mib(v["temp_bytes"]),
                        f"{v['temp_bytes'] / max(hand['temp_bytes'], 1):.2f}",
                    ]
                )
        lines += [
            md_table(
                [
                    "model",
                    "variant",
                    "time/step",
                    "vs hand",
                    "GFLOP",
                    "GFLOP/s",
                    "% peak",
                    "temp MiB",
                    "temp vs hand",
                ],
                rows,
                "llrrrrrrr",
            ),
            "",
        ]
        lines.append(
            "Rounds × steps per timed call: "
            + ", ".join(f"{x['model']} {x['repeats']}×{x['inner']}" for x in res["models"])
            + "."
        )
        lines.append("")

    if res.get("peers"):
        p = res["peers"]
        lines += ["## Peers (own block, after all JAX timing)", ""]
        lines.append(
            (
                "PyTorch eager with 1 thread and with every usable core (`torch-Nt`)"
                if p["torch_available"]
                else "PyTorch not installed"
            )
            + "; NumPy's BLAS as listed above; GFLOP/s uses the JAX hand step's flop "
            "count for the same network."
        )
        lines.append("")
        rows = []
        for r in p["rows"]:
            mres = _model(res, r["model"])
            flops = mres["variants"]["hand"]["flops"] if mres else float("nan")
            hand_t = mres["variants"]["hand"]["time"].median if mres else float("nan")
            lean_t = mres["variants"].get("lean", {}).get("time") if mres else None
            for name, v in r["variants"].items():
                t = v["time"]
                rows.append(
                    [
                        r["model"],
                        (
                            f"PyTorch eager, {name.split('-')[1][:-1]} thread(s)"
                            if name.startswith("torch")
                            else "NumPy hand backward"
                        ),
                        _ms(t),
                        f"{flops / t.median / 1e9:.1f}",
                        f"{100 * flops / t.median / 1e9 / peak:.1f}%",
                        f"{t.median / hand_t:.2f}",
                        f"{t.median / lean_t.median:.2f}" if lean_t else "—",
                    ]
                )
        lines += [
            md_table(
                [
                    "model",
                    "peer",
                    "time/step",
                    "GFLOP/s",
                    "% peak",
                    "÷ funcbp hand",
                    "÷ funcbp lean",
                ],
                rows,
                "llrrrrr",
            ),
            "",
        ]
        lines.append("`÷ funcbp hand` > 1 means the peer is slower than funcbp's step.")
        lines.append("")

    if res.get("multi"):
        mu = res["multi"]
        lines += [f"## Fused multi-step ({mu['label']})", ""]
        base = mu["variants"]["1 step/dispatch"]["steps_per_s"]
        rows = [
            [k, _ms(v["time"]), f"{v['steps_per_s']:.0f}", f"{v['steps_per_s'] / base:.2f}×"]
            for k, v in mu["variants"].items()
        ]
        lines += [md_table(["dispatch", "time/step", "steps/s", "vs 1/dispatch"], rows), ""]
        lines.append(
            f"Each timed call runs the same {mu['n']} chained steps over {mu['n']} "
            "distinct batches."
        )
        lines.append("")

    if res.get("scaling"):
        sc = res["scaling"]
        floor = res["floor"]["time"]
        lines += ["## Scaling: MLP width→width→width→10 step time (plot: `scaling.png`)", ""]
        lines.append(f"Dispatch floor (jitted `x + 1`, one call): {_ms(floor)}.")
        lines.append("")
        for axis in ("width", "batch"):
            rows = [_sweep_row(pt, floor, peak) for pt in sc[axis]]
            header = [
                "width",
                "batch",
                "hand",
                "autodiff",
                "lean",
                "hand/autodiff (medians)",
                "paired per round (95% CI)",
                "temp MiB hand / autodiff",
                "lean/hand",
                "hand ÷ floor",
                "hand GFLOP/s",
                "% peak",
            ]
            lines += [md_table(header, rows), ""]

    if res.get("flags"):
        lines += ["## XLA CPU flags: large MLP hand step, one fresh process per setting", ""]
        lines += [_flags_table(res["flags"], peak), ""]
    if res.get("flags_contended"):
        fc = res["flags_contended"]
        lines += [f"### The same with {fc['hogs']} busy-loop processes competing for the cores", ""]
        lines += [_flags_table(fc["settings"], peak), ""]

    lines += [NOTES_BEGIN, notes.strip(), NOTES_END, ""]
    return "\n".join(lines)


def _sweep_row(pt: dict[str, Any], floor: Timing, peak: float) -> list[Any]:
    h, a = pt["variants"]["hand"], pt["variants"]["autodiff"]
    lean = pt["variants"].get("lean")
    pr = paired_ratio(h["time"], a["time"])
    return [
        pt["width"],
        pt["batch"],
        _ms(h["time"]),
        _ms(a["time"]),
        _ms(lean["time"]) if lean else "—",
        f"{h['time'].median / a['time'].median:.3f}",
        f"{pr['median']:.3f} ({pr['lo']:.3f}–{pr['hi']:.3f})",
        f"{h['temp_bytes'] / 2**20:.4f} / {a['temp_bytes'] / 2**20:.4f}",
        f"{lean['time'].median / h['time'].median:.3f}" if lean else "—",
        f"{h['time'].median / floor.median:.0f}",
        f"{_gflops(h):.1f}",
        f"{100 * _gflops(h) / peak:.1f}%",
    ]


def _flags_table(flags: dict[str, Any], peak: float) -> str:
    rows = []
    for name, f in flags.items():
        runs = [r for r in f["runs"] if "error" not in r]
        errs = len(f["runs"]) - len(runs)
        if not runs:
            rows.append([name, f"`{f['xla_flags'] or '(none)'}`", "error", "", "", "", "", ""])
            continue
        steps = sorted(s for r in runs for s in r["step_s"])
        med = steps[len(steps) // 2]
        gf = runs[0]["flops"] / med / 1e9
        rows.append(
            [
                name,
                f"`{f['xla_flags'] or '(none)'}`",
                f"{med * 1e3:.4g} ms ({steps[0] * 1e3:.4g}–{steps[-1] * 1e3:.4g})",
                f"{gf:.1f} ({100 * gf / peak:.0f}%)",
                " / ".join(f"{r['matmul_gflops']:.0f}" for r in runs),
                str(runs[0]["threads"].get("tf_XLAEigen", "?")),
                ", ".join(f"{k}×{v}" for k, v in runs[0]["library_fusions"].items()) or "none",
                runs[0]["hlo_sha"] + (f" ({errs} failed)" if errs else ""),
            ]
        )
    header = [
        "setting",
        "XLA_FLAGS",
        "step (median, min–max, all runs)",
        "GFLOP/s (% peak)",
        "jnp matmul GFLOP/s per run",
        "XLA Eigen threads",
        "dot library fusions",
        "HLO sha",
    ]
    return md_table(header, rows, "llrrrrll")


def _old_notes(path: str) -> str:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    found = re.search(re.escape(NOTES_BEGIN) + r"(.*?)" + re.escape(NOTES_END), text, re.S)
    return found.group(1) if found else ""


def _other_sections(path: str) -> str:
    """Sections other scripts keep in RESULTS.md (``<!-- name -->…<!-- /name -->`` after the
    notes, e.g. ``benchmarks/long_context.py``'s): a rewrite of the suite keeps them as they are."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    blocks = re.finditer(r"<!-- ([\w-]+) -->.*?<!-- /\1 -->", text, re.S)
    return "".join(f"\n{b.group(0)}\n" for b in blocks if b.group(1) != "notes")


def write_outputs(res, out_dir: str, *, command: str, plot: bool = True) -> dict[str, str]:
    """``results.json``, ``RESULTS.md`` (keeping its hand-written notes block) and, with the
    sweeps, ``scaling.png`` in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "json": os.path.join(out_dir, "results.json"),
        "markdown": os.path.join(out_dir, "RESULTS.md"),
    }
    if plot and res.get("scaling"):
        paths["plot"] = S.plot(
            res["scaling"],
            os.path.join(out_dir, "scaling.png"),
            floor_s=res["floor"]["time"].median,
            peak_gflops=best_peak(res),
        )
    with open(paths["json"], "w") as f:
        json.dump(to_json(res), f, indent=1)
    md = render_markdown(res, command=command, notes=_old_notes(paths["markdown"]))
    md += _other_sections(paths["markdown"])
    with open(paths["markdown"], "w") as f:
        f.write(md)
    return paths


# -- command line --------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="toy sizes and 2 rounds: checks the suite runs, measures nothing",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved rounds per comparison (default 15; --quick: 2)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="only these models (mlp-small mlp-medium mlp-large cnn gpt-small)",
    )
    parser.add_argument("--skip", nargs="+", choices=PARTS, default=(), help="parts to leave out")
    parser.add_argument(
        "--flag-rounds",
        type=int,
        default=2,
        help="rounds of the XLA-flag subprocesses (each setting once per round)",
    )
    parser.add_argument(
        "--flag-hogs",
        type=int,
        default=2,
        help="busy-loop processes for the contended XLA-flag runs (0: skip them; --quick: 0)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for RESULTS.md, results.json, scaling.png (default: the "
        "benchmarks/ folder for full runs; nothing written for --quick)",
    )
    parser.add_argument(
        "--wait-load",
        type=float,
        default=None,
        metavar="LOAD",
        help="first wait until the 1-minute load average is below LOAD",
    )
    parser.add_argument(
        "--wait-max",
        type=float,
        default=2400.0,
        metavar="SECONDS",
        help="give up waiting after this long and run anyway (default 2400)",
    )


def run(args, command: str | None = None) -> int:
    if args.repeats is not None and args.repeats < 1:
        print(f"bench: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    if args.flag_hogs < 0:
        print(f"bench: --flag-hogs must be >= 0, got {args.flag_hogs}", file=sys.stderr)
        return 2
    if args.flag_rounds < 1:
        print(f"bench: --flag-rounds must be >= 1, got {args.flag_rounds}", file=sys.stderr)
        return 2
    log = lambda s: print(s, file=sys.stderr, flush=True)
    wait = None
    if args.wait_load is not None:
        wait = wait_for_load(args.wait_load, args.wait_max, log=log)
    scale = "tiny" if args.quick else "full"
    repeats = args.repeats or (2 if args.quick else 15)
    parts = tuple(p for p in PARTS if p not in set(args.skip))
    try:
        res = run_suite(
            scale=scale,
            repeats=repeats,
            parts=parts,
            model_names=tuple(args.models) if args.models else None,
            flag_rounds=1 if args.quick else args.flag_rounds,
            flag_hogs=0 if args.quick else args.flag_hogs,
            log=log,
        )
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    res["load_wait"] = wait
    command = command or "python -m benchmarks.suite " + shlex.join(sys.argv[1:])
    out = args.out
    if out is None and not args.quick:
        out = os.path.dirname(os.path.abspath(__file__))
    if out:
        paths = write_outputs(res, out, command=command)
        log("wrote " + ", ".join(paths.values()))
    print(render_markdown(res, command=command))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.suite", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
