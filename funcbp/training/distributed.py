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

``--distributed`` calls ``jax.distributed.initialize()`` before anything else. Every host loads
the same dataset and seed (the bundled data and the seeded shuffle make that exact) and
`shard_batch` hands each device only its slice of the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "make_mesh",
    "data_sharding",
    "replicated",
    "param_shardings",
    "shard_params",
    "shard_batch",
    "check_batch_divisible",
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
