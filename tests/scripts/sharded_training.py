"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (see
tests/test_distributed.py): train single-device, data-parallel (8) and data×model (4×2) from
the same seed for 24 steps and print how far the trajectories drift apart, as JSON."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import optax

jax.config.update("jax_enable_x64", True)

from funcbp import nn  # noqa: E402
from funcbp import training as train  # noqa: E402
from funcbp.training import FitConfig, distributed, fit  # noqa: E402
from tests.helpers import toy_classification  # noqa: E402


def _max_abs_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in pairs)


def main() -> None:
    dtype = jnp.float64 if sys.argv[1] == "float64" else jnp.float32
    data = toy_classification(n_train=256, features=16)
    model = nn.mlp([64, 64, data.n_classes], activation="tanh")  # smooth: no ReLU-kink flips
    runs = {}
    meshes = {
        "single": None,
        "data8": distributed.make_mesh(8),
        "data4_model2": distributed.make_mesh(8, model=2),
    }
    for name, mesh in meshes.items():
        r = fit(model, data, optax.adam(1e-2), FitConfig(3, 32, dtype=dtype), mesh=mesh)
        runs[name] = r
    out = {"devices": len(jax.devices()), "steps": len(runs["single"].history["step_loss"])}
    single_loss = runs["single"].history["step_loss"]
    for name in ("data8", "data4_model2"):
        a, b = runs["single"].params, runs[name].params
        diff = _max_abs_diff(a, b)
        scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a))
        loss_diff = max(
            abs(p - q) for p, q in zip(single_loss, runs[name].history["step_loss"], strict=True)
        )
        specs = sorted({str(getattr(p.sharding, "spec", None)) for p in jax.tree.leaves(b)})
        out[name] = {"max_abs": diff, "scale": scale, "loss_diff": loss_diff, "specs": specs}
    # the hand gradients of one sharded step equal the single-device ones
    mesh = meshes["data4_model2"]
    _, params, state = model.init(jax.random.key(1), (16,), dtype)
    x, y = jnp.asarray(data.x_train[:32], dtype), jnp.asarray(data.y_train[:32])
    loss_fn = train.make_loss_fn(model)
    grad = jax.jit(jax.grad(lambda p, x, y: loss_fn(p, state, x, y)[0]))
    g1 = grad(params, x, y)
    ps = distributed.shard_params(params, mesh, distributed.param_shardings(params, mesh))
    xs, ys = distributed.shard_batch((x, y), mesh)
    g2 = grad(ps, xs, ys)
    out["grad_max_abs"] = _max_abs_diff(g1, g2)
    try:
        fit(model, data, optax.sgd(0.1), FitConfig(1, 36), mesh=meshes["data8"])
        out["indivisible_error"] = None
    except ValueError as e:
        out["indivisible_error"] = str(e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
