"""funcbp's own checkpoint (`funcbp.checkpoint`) vs orbax-checkpoint, on a ~9 MiB params+adam tree.

One-off evaluation for issue 14 (item 17): save/restore time (interleaved A B B A …, medians),
size on disk, import time, installed size, and the guarantees — SIGKILL at random points of an
overwrite, tampering with each file, pickle. orbax is not a funcbp dependency::

    pip install orbax-checkpoint==0.12.8
    python -m benchmarks.checkpoint_orbax [--reps 5] [--kills 8] > /tmp/orbax.json
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcbp import nn
from funcbp.training import checkpoint


def make_tree(seed: int = 0) -> dict:
    """A 512-1024-256-10 MLP's params and adam state, every leaf random (nothing compresses)."""
    _, params, state = nn.mlp([1024, 256, 10]).init(jax.random.key(seed), (512,), jnp.float32)
    tree = {"params": params, "opt_state": optax.adam(1e-3).init(params), "state": state}
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape).astype(a.dtype)), tree)


def _orbax():
    import orbax.checkpoint as ocp

    return ocp


def save_funcbp(path: Path, tree) -> None:
    checkpoint.save(path, tree, {"epoch": 1})


def restore_funcbp(path: Path, tree):
    return checkpoint.restore(path, jax.eval_shape(lambda: tree))[0]


def save_orbax(path: Path, tree, force: bool = False) -> None:
    ckptr = _orbax().StandardCheckpointer()
    ckptr.save(path, tree, force=force)
    ckptr.wait_until_finished()  # its save is asynchronous: count the whole write
    ckptr.close()


def restore_orbax(path: Path, tree):
    ckptr = _orbax().StandardCheckpointer()
    out = ckptr.restore(path, jax.eval_shape(lambda: tree))
    ckptr.close()
    return out


def _disk(path: Path) -> dict:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return {"bytes": sum(p.stat().st_size for p in files), "files": len(files)}


def timings(tree, reps: int, root: Path) -> dict:
    """Median/min/max seconds of save and restore, the two libraries in alternating order."""
    ways = {
        "funcbp": (save_funcbp, restore_funcbp, "c.npz"),
        "orbax": (save_orbax, restore_orbax, "c"),
    }
    times = {f"{n}_{op}": [] for n in ways for op in ("save", "restore")}
    sizes = {}
    for i in range(reps):
        order = list(ways) if i % 2 == 0 else list(reversed(ways))
        for name in order:
            save, restore, leaf = ways[name]
            path = root / f"{name}{i}" / leaf
            t0 = time.perf_counter()
            save(path, tree)
            t1 = time.perf_counter()
            out = restore(path, tree)
            jax.block_until_ready(out)
            t2 = time.perf_counter()
            assert jax.tree.all(jax.tree.map(np.array_equal, out, tree)), name
            times[f"{name}_save"].append(t1 - t0)
            times[f"{name}_restore"].append(t2 - t1)
            sizes[name] = _disk(path)
    stats = {
        k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in times.items()
    }
    return {"seconds": stats, "disk": sizes}


def import_seconds(module: str, runs: int = 3) -> float:
    """Median extra seconds to import ``module`` in a fresh interpreter that already has jax."""
    code = (
        f"import time, jax, numpy; t = time.perf_counter(); import {module}; "
        "print(time.perf_counter() - t)"
    )
    vals = [
        float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(runs)
    ]
    return statistics.median(vals)


def _closure(name: str, seen: set | None = None) -> set:
    """Installed distributions ``name`` needs (its requirements, recursively, without extras)."""
    from packaging.requirements import Requirement

    seen = set() if seen is None else seen
    key = name.lower().replace("_", "-")
    if key in seen:
        return seen
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return seen
    seen.add(key)
    for spec in dist.requires or []:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            _closure(req.name, seen)
    return seen


def installed_extra() -> dict:
    """Packages and bytes orbax-checkpoint adds on top of funcbp's own dependency closure."""
    extra = sorted(_closure("orbax-checkpoint") - _closure("funcbp"))
    size = 0
    for name in extra:
        dist = md.distribution(name)
        size += sum(
            dist.locate_file(f).stat().st_size
            for f in dist.files or []
            if dist.locate_file(f).exists()
        )
    return {"packages": extra, "bytes": size}


# -- guarantees ---------------------------------------------------------------------------------
def _manager(path: Path):
    ocp = _orbax()
    return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=2))


def worker(lib: str, path: Path) -> None:
    """Overwrite the checkpoint at ``path`` forever (trees 0, 1, 0, …); print READY once."""
    trees = [make_tree(0), make_tree(1)]
    manager = _manager(path) if lib == "orbax-manager" else None
    for k in range(10**9):
        tree = trees[k % 2]
        if lib == "funcbp":
            save_funcbp(path, tree)
        elif lib == "orbax":
            save_orbax(path, tree, force=True)
        else:
            manager.save(k, args=_orbax().args.StandardSave(tree))
            manager.wait_until_finished()
        if k == 0:
            print("READY", flush=True)


def _outcome(restore, trees) -> str:
    try:
        out = restore()
    except Exception as e:  # what a user would see
        return f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    same = [jax.tree.all(jax.tree.map(np.array_equal, out, t)) for t in trees]
    return "intact" if any(same) else "SILENTLY DIFFERENT"


def _restore_any(lib: str, path: Path, tree):
    if lib == "funcbp":
        return lambda: restore_funcbp(path, tree)
    if lib == "orbax":
        return lambda: restore_orbax(path, tree)

    def latest():
        manager = _manager(path)
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no finished step in {path}")
        return manager.restore(
            step, args=_orbax().args.StandardRestore(jax.eval_shape(lambda: tree))
        )

    return latest


def kill_trials(lib: str, kills: int, root: Path, seed: int = 0) -> dict:
    """SIGKILL a process that keeps overwriting a checkpoint, at random times; then restore."""
    rng, trees, outcomes = random.Random(seed), [make_tree(0), make_tree(1)], {}
    for i in range(kills):
        path = root / f"kill-{lib}-{i}" / ("c.npz" if lib == "funcbp" else "c")
        cmd = [sys.executable, "-m", "benchmarks.checkpoint_orbax", "--worker", lib, str(path)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        result = _outcome(_restore_any(lib, path, trees[0]), trees)
        outcomes[result] = outcomes.get(result, 0) + 1
    return outcomes


def _flip(path: Path, at: int, n: int = 16) -> None:
    data = bytearray(path.read_bytes())
    at = min(max(at, 0), max(len(data) - n, 0))
    data[at : at + n] = bytes(b ^ 0xFF for b in data[at : at + n])
    path.write_bytes(bytes(data))


def tamper_trials(tree, root: Path) -> dict:
    """Flip 16 bytes (start, middle, end) or halve each file of a fresh checkpoint; restore."""
    out = {}
    for lib in ("funcbp", "orbax"):
        clean = root / f"clean-{lib}" / ("c.npz" if lib == "funcbp" else "c")
        (save_funcbp if lib == "funcbp" else save_orbax)(clean, tree)
        files = [clean] if clean.is_file() else sorted(p for p in clean.rglob("*") if p.is_file())
        for f in files:
            size = f.stat().st_size
            for how, at in (
                ("start", 0),
                ("middle", size // 2),
                ("end", size - 16),
                ("halve", None),
            ):
                work = root / "work"
                shutil.rmtree(work, ignore_errors=True)
                target = work / clean.name
                if clean.is_file():
                    target.parent.mkdir(parents=True)
                    shutil.copy(clean, target)
                else:
                    shutil.copytree(clean, target)
                victim = target / f.relative_to(clean) if clean.is_dir() else target
                if at is None:
                    victim.write_bytes(victim.read_bytes()[: size // 2])
                else:
                    _flip(victim, at)
                rel = "(file)" if clean.is_file() else str(f.relative_to(clean))
                result = _outcome(_restore_any(lib, target, tree), [tree])
                out[f"{lib} {rel} [{size} B] {how}"] = result
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--kills", type=int, default=8)
    p.add_argument("--worker", nargs=2, metavar=("LIB", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], Path(args.worker[1]))
    tree = make_tree(0)
    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    try:
        report = {
            "tree_bytes": sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)),
            "leaves": len(jax.tree.leaves(tree)),
            "versions": {n: md.version(n) for n in ("jax", "numpy", "orbax-checkpoint")},
            "load_average": os.getloadavg(),
            **timings(tree, args.reps, root),
            "import_seconds": {
                "funcbp.checkpoint": import_seconds("funcbp.checkpoint"),
                "orbax.checkpoint": import_seconds("orbax.checkpoint"),
            },
            "installed_by_orbax": installed_extra(),
            "sigkill": {
                lib: kill_trials(lib, args.kills, root)
                for lib in ("funcbp", "orbax", "orbax-manager")
            },
            "tamper": tamper_trials(tree, root),
            "load_average_after": os.getloadavg(),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
