"""`check_registry` over several processes: checking is bound by Python tracing, which holds
the GIL, so a second core only helps from a second process.

The registry's ops are dealt round-robin to ``processes`` processes (this one included); each
runs `funcbp.check.gradients.check_registry` on its share with the same JAX settings (x64,
`funcbp.check.fast_compile`, the same persistent cache folder), and the reports come back in
registry order, the same rows `check_registry` gives in one process. Workers are started with
``spawn`` (forking a process that has started JAX's threads is unsafe) and pay one import of
JAX each, so this pays off for the whole registry, not for one op.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Iterable, Sequence

__all__ = ["MIN_OPS_PER_PROCESS", "check_registry_parallel", "default_processes"]


MIN_OPS_PER_PROCESS = 6
"""A spawned worker's import of JAX costs about as much as checking a few ops: below this many
ops per process, one process is faster."""


def default_processes(n_ops: int) -> int:
    """Two processes for ``n_ops`` ops where this process may use two cores or more and each
    process gets `MIN_OPS_PER_PROCESS` ops at least; else one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return 2 if cores >= 2 and n_ops >= 2 * MIN_OPS_PER_PROCESS else 1


def _settings() -> dict:
    import jax

    values = jax.config.values
    return {
        "x64": bool(values["jax_enable_x64"]),
        "cache_dir": values.get("jax_compilation_cache_dir"),
        "cheap": bool(values.get("jax_disable_most_optimizations")),
    }


def _worker(names: list[str], dtypes, seeds, pairs, settings: dict):
    """Run in a spawned process: the same settings, then `check_registry` on ``names``."""
    import jax

    from funcbp.check.fast_compile import compile_cheaply
    from funcbp.check.gradients import check_registry
    from funcbp.ops import REGISTRY

    jax.config.update("jax_enable_x64", settings["x64"])
    if settings["cheap"]:
        compile_cheaply(settings["cache_dir"])
    return check_registry(dtypes, seeds, [REGISTRY[n] for n in names], pairs)


def check_registry_parallel(
    names: Sequence[str],
    dtypes: Iterable = ("float32", "float64"),
    seeds: Iterable[int] = range(3),
    pairs: Iterable[tuple[str, str]] = (("hand", "autodiff"), ("hand", "fd")),
    processes: int | None = None,
):
    """`check_registry` of the registry ops ``names`` on ``processes`` processes (default
    `default_processes`); the same reports, in the order of ``names``."""
    from funcbp.check.gradients import check_registry
    from funcbp.ops import REGISTRY

    names, dtypes, seeds, pairs = list(names), list(dtypes), list(seeds), list(pairs)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"check_registry_parallel: unknown op(s) {unknown}")
    processes = max(1, min(processes or default_processes(len(names)), len(names)))
    if processes == 1:
        return check_registry(dtypes, seeds, [REGISTRY[n] for n in names], pairs)
    shares = [names[i::processes] for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes - 1, mp_context=context) as pool:
        futures = [
            pool.submit(_worker, share, dtypes, seeds, pairs, _settings()) for share in shares[1:]
        ]
        mine = check_registry(dtypes, seeds, [REGISTRY[n] for n in shares[0]], pairs)
        results = [mine, *(f.result() for f in futures)]
    by_op: dict[str, list] = {}
    for reports in results:
        for r in reports:
            by_op.setdefault(r.name, []).append(r)
    return [r for n in names for r in by_op.get(n, [])]
