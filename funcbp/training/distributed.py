"""Data (and model) parallelism on JAX's own sharding: a `Mesh`, `NamedSharding`s, and XLA.

funcbp adds no communication code of its own. The batch is sharded over the mesh's ``"data"``
axis and the params are replicated (or, on a 2-D mesh, large weight matrices are split over the
``"model"`` axis); the jitted step is unchanged, and XLA's sharding propagation inserts the
all-reduce of the gradients (the hand ``dW = Xᵀ dY`` contracts the sharded batch axis, so XLA
sums the per-device partial products). The same code runs on one CPU, one GPU, many GPUs of one
host, and many hosts (after ``jax.distributed.initialize()``, with ``jax.devices()`` listing
every host's devices).

Multi-host launch (one process per host, same command everywhere)::

    # on every host i of n (or let a cluster launcher such as SLURM set these):
    export JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=n JAX_PROCESS_ID=i
    funcbp train --distributed ...

`initialize` runs before anything else: it passes the coordinator, process count and process id
(arguments, else those variables) to ``jax.distributed.initialize`` explicitly — JAX itself
reads only the coordinator from the environment — or, when none is given, lets JAX detect the
cluster (SLURM, Open MPI, Kubernetes, Cloud TPU). Every host loads the same dataset and seed
(the bundled data and the seeded shuffle make that exact) and `shard_batch` hands each device
only its slice of the global batch. Every process runs the same code, so files are written by
one process only (`is_writer`, `save_checkpoint`); checkpoints hold host arrays without any
sharding, so a run saved on one topology resumes on any other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from funcbp.training import checkpoint

__all__ = [
    "make_mesh",
    "data_sharding",
    "replicated",
    "param_shardings",
    "shard_params",
    "shard_batch",
    "check_batch_divisible",
    "initialize",
    "launch_arguments",
    "is_writer",
    "to_host",
    "save_checkpoint",
]


def make_mesh(devices: int | Sequence | None = None, *, model: int = 1) -> Mesh:
    """A ``("data", "model")`` mesh over ``devices`` (an int: the first N of `jax.devices()`;
    default: all of them). ``model`` devices per model-parallel group; data = N / model."""
    all_devices = jax.devices()
    if devices is None:
        devs = all_devices
    elif isinstance(devices, int):
        if not 1 <= devices <= len(all_devices):
            raise ValueError(
                f"make_mesh: asked for {devices} devices but {len(all_devices)} are available "
                f"({all_devices[0].platform}); on CPU, XLA_FLAGS="
                f"--xla_force_host_platform_device_count=N simulates N devices"
            )
        devs = all_devices[:devices]
    else:
        devs = list(devices)
    if model < 1 or len(devs) % model:
        raise ValueError(f"make_mesh: {len(devs)} devices do not split into groups of {model}")
    grid = np.asarray(devs, dtype=object).reshape(len(devs) // model, model)
    return Mesh(grid, ("data", "model"))


def data_sharding(mesh: Mesh, ndim: int, *, leading: int = 0) -> NamedSharding:
    """Shard axis ``leading`` (the batch axis) over ``"data"``; replicate the rest."""
    spec = [None] * ndim
    spec[leading] = "data"
    return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device."""
    return NamedSharding(mesh, P())


def param_shardings(params: Any, mesh: Mesh, *, min_size: int = 1024) -> Any:
    """Per-leaf shardings: 2-D weights with ≥ ``min_size`` elements whose output dim divides by
    the ``"model"`` axis are split column-wise over it (``P(None, "model")``); everything else,
    and everything on a 1-wide model axis, is replicated."""
    n_model = mesh.shape["model"]

    def one(p):
        if n_model > 1 and p.ndim == 2 and p.size >= min_size and p.shape[1] % n_model == 0:
            return NamedSharding(mesh, P(None, "model"))
        return replicated(mesh)

    return jax.tree.map(one, params)


def shard_params(tree: Any, mesh: Mesh, shardings: Any | None = None) -> Any:
    """Place a params-like tree on the mesh (replicated unless ``shardings`` say otherwise)."""
    if shardings is None:
        return jax.device_put(tree, replicated(mesh))
    return jax.device_put(tree, shardings)


def check_batch_divisible(batch_size: int, mesh: Mesh, where: str = "fit") -> None:
    """A clear error when the batch cannot be split evenly over the data axis."""
    n = mesh.shape["data"]
    if batch_size % n:
        raise ValueError(
            f"{where}: batch_size {batch_size} is not divisible by the {n} devices of the mesh's "
            f"'data' axis; use a multiple of {n} (e.g. {batch_size + (-batch_size) % n})"
        )


def shard_batch(batch: Any, mesh: Mesh, *, leading: int = 0) -> Any:
    """Place a host batch (pytree of NumPy arrays, the GLOBAL batch, identical on every host)
    sharded over ``"data"`` along ``leading``. Each device receives only its own slice
    (`jax.make_array_from_callback`), so the same call is right for one process or many."""

    def one(a):
        a = np.asarray(a)
        sharding = data_sharding(mesh, a.ndim, leading=leading)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(one, batch)


# -- multi-process ----------------------------------------------------------------------------
# each setting: (keyword of jax.distributed.initialize, CLI option, environment variable)
_LAUNCH = {
    "coordinator": ("coordinator_address", "--coordinator", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("num_processes", "--num-processes", "JAX_NUM_PROCESSES"),
    "process_id": ("process_id", "--process-id", "JAX_PROCESS_ID"),
}


def _as_int(value, source: str, low: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"distributed: {source} must be an int >= {low}, got {value!r}")
    return int(value)


def _as_address(value, source: str) -> str:
    host, _, port = str(value).strip().rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"distributed: {source} must be HOST:PORT with a port in 1..65535 (e.g. host0:1234), "
            f"got {value!r}"
        )
    return f"{host}:{int(port)}"


def launch_arguments(
    coordinator: str | None = None,
    num_processes: int | str | None = None,
    process_id: int | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The keyword arguments `initialize` passes to ``jax.distributed.initialize``.

    Each setting comes from its argument, else from its environment variable
    (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), else is left out
    (for JAX's cluster detection). Raises ValueError naming the option or variable at fault:
    an address that is not HOST:PORT, a count < 1, an id outside [0, num_processes).
    """
    environ = os.environ if environ is None else environ
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    out: dict[str, Any] = {}
    for name, value in given.items():
        keyword, flag, var = _LAUNCH[name]
        source = flag
        if value is None and environ.get(var, "").strip():
            value, source = environ[var], f"{var} (environment)"
        if value is None:
            continue
        if name == "coordinator":
            out[keyword] = _as_address(value, source)
            continue
        out[keyword] = _as_int(value, source, 1 if name == "num_processes" else 0)
        n = out.get("num_processes")
        if name == "process_id" and n is not None and out[keyword] >= n:
            raise ValueError(
                f"distributed: {source} must be in [0, {n}) for {n} processes, got {out[keyword]}"
            )
    return out


def initialize(
    coordinator: str | None = None,
    num_processes: int | str | None = None,
    process_id: int | str | None = None,
) -> dict[str, Any]:
    """Join a multi-process run: call once per process, before any other JAX work.

    Settings as `launch_arguments` resolves them (arguments, else ``JAX_*`` environment
    variables); none at all lets JAX detect the cluster (SLURM, Open MPI, Kubernetes, Cloud
    TPU). Cross-process collectives of the CPU backend use gloo (unless another implementation
    was configured): without them a multi-process CPU run cannot reduce its gradients. Returns
    the keyword arguments passed to ``jax.distributed.initialize``.
    """
    kwargs = launch_arguments(coordinator, num_processes, process_id)
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:  # a setting neither given nor detected from a cluster
        missing = [f"{flag} (or {var})" for kw, flag, var in _LAUNCH.values() if kw not in kwargs]
        raise ValueError(
            f"distributed: jax.distributed.initialize failed: {e} Give {', '.join(missing)}; "
            f"only SLURM, Open MPI, Kubernetes and Cloud TPU launches are detected automatically"
        ) from e
    return kwargs


def is_writer() -> bool:
    """True in the one process that writes files (checkpoints, metrics, logs): process 0."""
    return jax.process_index() == 0


def to_host(tree: Any) -> Any:
    """NumPy copies of ``tree``'s leaves (the global values). A leaf split across processes is
    gathered, a collective: in a multi-process run every process calls this on the same tree."""
    from jax.experimental import multihost_utils

    def one(a):
        if isinstance(a, jax.Array) and not (a.is_fully_addressable or a.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(one, tree)


def save_checkpoint(path: str | os.PathLike, tree: Any, extra: dict | None = None) -> Path | None:
    """`funcbp.checkpoint.save` for a run of one or many processes: every process calls it with
    the same tree; process 0 alone writes (no two writers race on one file of a shared
    filesystem), and all return once the file is in place. Returns the path (None elsewhere)."""
    host = to_host(tree)
    written = None
    try:
        if is_writer():
            written = checkpoint.save(path, host, extra)
    finally:  # the writer reaches the barrier even if the write fails: nobody waits forever
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"funcbp checkpoint {Path(path).name}")
    return written
