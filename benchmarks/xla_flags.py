"""Does an XLA CPU flag change the speed of a single-device train step? Measured in subprocesses.

``XLA_FLAGS`` is read once, when the XLA backend starts, so each setting runs in a fresh
process (``python -m benchmarks.xla_flags --worker``): it builds the large MLP, compiles the
hand train step, records what the compiled program calls for its dots (the library-fusion kinds
in the optimized HLO, e.g. ``__ynn_fusion`` for YNNPACK) and a fingerprint of that HLO, then
times a few steps and a 2048³ ``jnp.dot``. The driver runs the settings in alternating rounds
(A B C, C B A, ...) so machine drift hits each alike, and keeps every sample.

``hogs=N`` reruns settings while N busy-loop processes (started here, killed by their pids
afterwards) compete for the cores, to imitate a machine shared with other work: XLA's CPU
client sizes its intra-op thread pool as max(cores, devices) (2 ``tf_XLAEigen`` threads by
default here, 8 with ``--xla_force_host_platform_device_count=8``), and the kernel's fair
scheduler shares CPU time per thread, not per process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

__all__ = ["SETTINGS", "run_settings"]

SETTINGS = {
    "default": "",
    "device_count=8": "--xla_force_host_platform_device_count=8",
    # dots leave YNNPACK (the default library for dots in jaxlib 0.10) for XLA's own/Eigen path
    "no YNN dots": "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    # the scheduler that lets independent thunks (dW and dX GEMMs) run at the same time
    "no concurrency scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=false",
}


def _worker(size: str, steps: int, matmul_n: int) -> dict[str, Any]:
    import statistics

    import jax
    import jax.numpy as jnp
    import optax

    from benchmarks.common import block
    from benchmarks.models import ModelSpec, setup
    from funcbp.training import make_train_step

    if size == "large":
        spec = ModelSpec("mlp-large", "mlp", 1024, (4096,), 10, (4096, 4096, 4096, 10))
    else:
        spec = ModelSpec("mlp-tiny", "mlp", 8, (16,), 3, (16, 16, 3))
    model, params, state, batch, key = setup(spec)
    opt = optax.sgd(1e-2)
    opt_state = opt.init(params)
    step = make_train_step(model, opt)
    compiled = step.lower(params, opt_state, state, batch, key).compile()
    hlo = compiled.as_text()
    body = hlo[hlo.index("\n\n") :] if "\n\n" in hlo else hlo  # drop the source-location header
    body = re.sub(r", metadata=\{[^}]*\}", "", body)
    kinds: dict[str, int] = {}
    for k in re.findall(r'"kind":"(__\w+)"', hlo):
        kinds[k] = kinds.get(k, 0) + 1
    n_dots = len(re.findall(r"= \S+ dot\(", hlo))

    block(step(params, opt_state, state, batch, key))  # warm-up
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        block(step(params, opt_state, state, batch, key))
        ts.append(time.perf_counter() - t0)

    a = jax.random.normal(jax.random.key(0), (matmul_n, matmul_n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    mm = []
    for _ in range(5):
        t0 = time.perf_counter()
        dot(a, a).block_until_ready()
        mm.append(time.perf_counter() - t0)
    return {
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "device_count": jax.device_count(),
        "step_s": ts,
        "step_median_s": statistics.median(ts),
        "flops": float(compiled.cost_analysis().get("flops", float("nan"))),
        "matmul_n": matmul_n,
        "matmul_gflops": 2 * matmul_n**3 / statistics.median(mm) / 1e9,
        "library_fusions": kinds,
        "dots": n_dots,
        "hlo_sha": hashlib.sha256(body.encode()).hexdigest()[:12],
        "threads": _threads(),
    }


def _threads() -> dict[str, int]:
    """This process's threads by name (``/proc/self/task/*/comm``), e.g. ``tf_XLAEigen``."""
    names: dict[str, int] = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return names
    for t in tasks:
        try:
            with open(f"/proc/self/task/{t}/comm") as f:
                n = f.read().strip()
        except OSError:
            continue
        names[n] = names.get(n, 0) + 1
    return names


def run_settings(
    settings: dict[str, str] | None = None,
    *,
    rounds: int = 2,
    steps: int = 3,
    size: str = "large",
    matmul_n: int = 2048,
    hogs: int = 0,
    timeout: float = 600,
) -> dict[str, Any]:
    """Run each setting's worker ``rounds`` times in alternating order (with ``hogs`` busy-loop
    processes running during each worker when ``hogs > 0``).

    Returns ``{name: {"xla_flags", "runs": [worker dicts]}}`` (a run that failed has an
    ``"error"`` key instead of timings).
    """
    settings = dict(settings or SETTINGS)
    names = list(settings)
    out: dict[str, Any] = {n: {"xla_flags": settings[n], "runs": []} for n in names}
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            env = dict(base)
            if settings[name]:
                env["XLA_FLAGS"] = settings[name]
            env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.xla_flags",
                "--worker",
                "--size",
                size,
                "--steps",
                str(steps),
                "--matmul-n",
                str(matmul_n),
            ]
            busy = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)
            ]
            try:
                proc = subprocess.run(
                    cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=root
                )
            finally:
                for b in busy:
                    b.kill()
                    b.wait()
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                out[name]["runs"].append({"error": (proc.stderr or proc.stdout)[-2000:]})
            else:
                out[name]["runs"].append(json.loads(lines[-1]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=("large", "tiny"), default="large")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hogs", type=int, default=0, help="busy-loop processes during each run")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.size, args.steps, args.matmul_n)))
        return 0
    res = run_settings(
        rounds=args.rounds, steps=args.steps, size=args.size, matmul_n=args.matmul_n, hogs=args.hogs
    )
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
