# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 — Every op vs `jax.grad`
#
# Every differentiable primitive in `funcbp.ops.REGISTRY` has a plain reference forward,
# a residual-keeping forward `fwd` and a hand-derived backward `bwd`. This notebook checks
# every registered op — including ops added after it was written — against autodiff and
# finite differences, on random shapes and random cotangents.
#
# For an op $y = f(a_1, \dots, a_k)$ and a random cotangent $u$ with the shape of $y$
# (normal noise: never all ones, which would hide a transposed or wrongly summed formula),
# the scalar
#
# $$\mathcal L(a) = \langle f(a), u\rangle = \sum y \odot u
# \quad\text{has}\quad \nabla_{a_i} \mathcal L = J_{f,a_i}(a)^\top u ,$$
#
# the vector–Jacobian product that `bwd` computes. Three sources of it:
#
# | source | how |
# |---|---|
# | hand | `jax.grad` through the op's `jax.custom_vjp` (its `bwd`) |
# | autodiff | `jax.grad` of the plain reference: the ground truth |
# | finite differences | $\big(\mathcal L(a + \varepsilon e_j) - \mathcal L(a - \varepsilon e_j)\big) / 2\varepsilon$ per element, float64, $\varepsilon = 10^{-6}$ |
#
# Errors are relative, $\lVert g - g_{\text{ref}}\rVert / \lVert g_{\text{ref}}\rVert$,
# worst over the op's differentiable inputs (integer labels and PRNG keys have none).
# Bounds come from `funcbp.check`: $10^{-5}$ in float32, $10^{-10}$ in float64,
# $10^{-6}$ against finite differences.

# %%
import jax

jax.config.update("jax_enable_x64", True)  # float64 for the exact comparisons
jax.config.update("jax_numpy_rank_promotion", "raise")  # no silent broadcasting of ranks

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

# %matplotlib inline
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "axes.grid": True, "grid.alpha": 0.3})


def show_table(headers, rows):
    """Print rows as an aligned text table (floats in scientific notation)."""
    fmt = lambda v: f"{v:.2e}" if isinstance(v, float) else str(v)
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda items: "  ".join(s.rjust(w) for s, w in zip(items, widths, strict=True))
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print(line(r))


import functools
import importlib
import os
import pkgutil
import time

import funcbp.ops
from funcbp import check
from funcbp.ops import REGISTRY

# Import every op module, so an op that is registered but not yet re-exported is covered too.
for info in pkgutil.iter_modules(funcbp.ops.__path__):
    if not info.name.startswith("_"):
        importlib.import_module(f"funcbp.ops.{info.name}")

OPS = list(REGISTRY)  # registration order
print(f"{len(OPS)} registered ops:", ", ".join(OPS))
assert len(OPS) >= 11

# %% [markdown]
# ## Random shapes × random cotangents
#
# Each op's own sampler (`op.sample(key, dtype)`) draws random shapes, static
# configuration and values kept away from kinks and ties (so finite differences are
# meaningful). Every new shape compiles, so the shapes are few and small; for each shape
# many random cotangents are checked in one `vmap`-ed, jitted program. The float32 check
# runs on the float64 sample rounded to float32. Finite differences are skipped for ops
# marked non-smooth (`op.smooth = False`).

# %%
QUICK = os.environ.get("FUNCBP_NOTEBOOK_QUICK") == "1"  # the test suite's run: fewer shapes
SHAPES_PER_OP = 1 if QUICK else 3  # random shapes per op (each one compiles)
COTANGENTS = 8  # random cotangents per shape (one vmapped call)
COMPARISONS = {  # name: (dtype, source, reference source, tolerance)
    "float32 hand vs autodiff": ("float32", "hand", "autodiff", check.TOLERANCE["float32"]),
    "float64 hand vs autodiff": ("float64", "hand", "autodiff", check.TOLERANCE["float64"]),
    "float64 hand vs finite diff": ("float64", "hand", "fd", check.FD_TOLERANCE["float64"]),
}


def cast(arrays, dtype):
    """Floating arrays to ``dtype``; integer ids, labels and PRNG keys unchanged."""
    return tuple(a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in arrays)


def make_vjps(op, static, plan):
    """One jitted program per shape: {dtype: {source: VJPs, batched over cotangents}}.

    ``plan`` maps a dtype to the sources needed in it; the arrays come in float64 and are
    rounded to each dtype inside, the cotangents come batched with a leading axis.
    """

    def one(arrays, u, sources):
        return {s: check.op_gradients(op, arrays, static, u, s, jit=False) for s in sources}

    def run(arrays, cotangents):
        result = {}
        for dtype, sources in plan.items():
            rounded = cast(arrays, dtype)
            batched = lambda u, a=rounded, s=sources: one(a, u, s)
            result[dtype] = jax.vmap(batched)(cotangents[dtype])
        return result

    return jax.jit(run)


def worst_rel(got, ref):
    """Per cotangent: the worst relative error over the differentiable inputs."""
    per_leaf = []
    for g, r in zip(got, ref, strict=True):
        if r is None:
            continue
        g = np.asarray(g, np.float64).reshape(len(g), -1)
        r = np.asarray(r, np.float64).reshape(len(r), -1)
        num, den = np.linalg.norm(g - r, axis=1), np.linalg.norm(r, axis=1)
        per_leaf.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), num))
    return np.max(per_leaf, axis=0)


# Cotangents are drawn with NumPy, outside the compiled programs (jax.random inside
# would compile the PRNG into every one of them: several times slower here).
np_rng = np.random.default_rng(0)
errors = {name: {c: [] for c in COMPARISONS} for name in OPS}  # op -> comparison -> errs
described, first_sample = {}, {}
t0 = time.perf_counter()
for name in OPS:
    op = REGISTRY[name]
    wanted = [c for c, v in COMPARISONS.items() if op.smooth or v[2] != "fd"]
    plan = {}
    for c in wanted:
        plan.setdefault(COMPARISONS[c][0], set()).update(COMPARISONS[c][1:3])
    plan = {dtype: tuple(sorted(sources)) for dtype, sources in plan.items()}
    for s in range(SHAPES_PER_OP):
        arrays, static = op.sample(jax.random.key(1000 + s), jnp.float64)
        first_sample.setdefault(name, (arrays, static))
        described.setdefault(name, []).append(
            " ".join(str(tuple(np.shape(a))) for a in arrays)
            + "".join(f" {k}={v}" for k, v in static.items())
        )
        out = jax.eval_shape(functools.partial(op.autodiff, **static), *arrays)
        u64 = jax.tree.map(lambda o: np_rng.standard_normal((COTANGENTS, *o.shape)), out)
        cotangents = {dtype: jax.tree.map(lambda u, d=dtype: u.astype(d), u64) for dtype in plan}
        grads = make_vjps(op, static, plan)(tuple(arrays), cotangents)
        for c in wanted:
            dtype, a, b, _ = COMPARISONS[c]
            errors[name][c].extend(worst_rel(grads[dtype][a], grads[dtype][b]))
print(
    f"{len(OPS)} ops × {SHAPES_PER_OP} shapes × {COTANGENTS} cotangents "
    f"in {time.perf_counter() - t0:.1f} s"
)

# %% [markdown]
# ## Worst relative error per op
#
# The worst over all shapes and cotangents; `—` where a comparison does not apply
# (finite differences of a non-smooth op). The shapes column shows the first sample
# drawn (array shapes, then static configuration).

# %%
headers = [
    "op",
    *[c.replace(" vs ", "/").replace("float", "f") for c in COMPARISONS],
    "first shapes",
]
rows, failures = [], []
for name in OPS:
    row = [name]
    for c, (_, _, _, tol) in COMPARISONS.items():
        e = errors[name][c]
        if not e:
            row.append("—")
            continue
        worst = float(np.max(e))
        row.append(worst)
        if not worst <= tol:
            failures.append((name, c, worst, tol))
    rows.append((*row, described[name][0]))
show_table(headers, rows)
print("\ntolerances:", {c: v[3] for c, v in COMPARISONS.items()})
assert not failures, failures
assert all(len(errors[n]["float64 hand vs autodiff"]) == SHAPES_PER_OP * COTANGENTS for n in OPS)

# %% [markdown]
# ## Error distributions
#
# One row per op, one dot per (shape, cotangent) pair, on a log axis; the dashed lines
# are the tolerances in the matching colour. Errors that are exactly zero (the hand and
# autodiff formulas compiled to the same arithmetic) are drawn at the left edge, "0 (exact)".

# %%
FLOOR = 1e-18
colors = dict(zip(COMPARISONS, ["tab:orange", "tab:blue", "tab:purple"], strict=True))
offsets = dict(zip(COMPARISONS, np.linspace(-0.3, 0.3, len(COMPARISONS)), strict=True))
rng = np.random.default_rng(0)
fig, ax = plt.subplots(figsize=(9, 0.38 * len(OPS) + 1.8), layout="constrained")
labelled = set()
for i, name in enumerate(OPS):
    for c, e in errors[name].items():
        if e:
            y = i + offsets[c] + rng.uniform(-0.05, 0.05, len(e))
            ax.scatter(
                np.maximum(e, FLOOR),
                y,
                s=9,
                color=colors[c],
                alpha=0.7,
                label=None if c in labelled else c,
            )
            labelled.add(c)
for c, (_, _, _, tol) in COMPARISONS.items():
    ax.axvline(tol, color=colors[c], ls="--", lw=1)
ax.set_xscale("log")
ax.set_xlim(FLOOR / 3, 1e-3)
ax.set_xticks(
    [FLOOR, *(10.0**k for k in range(-16, -3, 2))],
    ["0 (exact)", *(f"$10^{{{k}}}$" for k in range(-16, -3, 2))],
)
ax.minorticks_off()
ax.set_yticks(range(len(OPS)), OPS)
ax.set_ylim(len(OPS) - 0.5, -0.5)
ax.set_xlabel("relative error ‖g − g_ref‖ / ‖g_ref‖")
ax.set_title("Hand-derived VJPs vs autodiff and finite differences")
fig.legend(loc="outside lower center", ncol=3, fontsize=8)
plt.show()

# %% [markdown]
# ## Timing: hand VJP vs autodiff
#
# The jitted gradient $\nabla \mathcal L$ of each op through its hand `bwd` and through
# `jax.grad` of the reference, float32, at the op's first sampled shape. Calls alternate
# between the two (so drifts in machine load hit both alike) and the median is reported.
# At these tiny shapes the time is mostly dispatch overhead — both paths are one XLA
# program each — so a ratio near 1 is expected; `benchmarks/` measures realistic sizes.

# %%
REPEATS = 11 if QUICK else 101


def pairing_grad(fn, static, arrays, u):
    argnums = tuple(i for i, a in enumerate(arrays) if jnp.issubdtype(a.dtype, jnp.floating))

    def loss(*a):
        out = fn(*a, **static)
        return sum(
            jnp.vdot(o, c) for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(u), strict=True)
        )

    return jax.jit(jax.grad(loss, argnums=argnums))


rows, medians = [], {}
for name in OPS:
    op = REGISTRY[name]
    arrays, static = first_sample[name]
    arrays = tuple(  # float32 copies through NumPy: no extra compilation
        jnp.asarray(np.asarray(a, np.float32)) if jnp.issubdtype(a.dtype, jnp.floating) else a
        for a in arrays
    )
    out = jax.eval_shape(functools.partial(op.autodiff, **static), *arrays)
    u = jax.tree.map(lambda o: jnp.asarray(np_rng.standard_normal(o.shape).astype(o.dtype)), out)
    fns = {
        "hand": pairing_grad(op.hand, static, arrays, u),
        "autodiff": pairing_grad(op.autodiff, static, arrays, u),
    }
    results = {k: jax.block_until_ready(f(*arrays)) for k, f in fns.items()}  # compile
    times = {k: [] for k in fns}
    for r in range(REPEATS):
        for k in ("hand", "autodiff") if r % 2 == 0 else ("autodiff", "hand"):
            t = time.perf_counter()
            jax.block_until_ready(fns[k](*arrays))
            times[k].append(time.perf_counter() - t)
    medians[name] = {k: 1e6 * float(np.median(v)) for k, v in times.items()}
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(results["hand"]))
    rows.append(
        (
            name,
            described[name][0],
            f"{medians[name]['hand']:.1f}",
            f"{medians[name]['autodiff']:.1f}",
            f"{medians[name]['hand'] / medians[name]['autodiff']:.2f}",
        )
    )
show_table(["op", "shapes", "hand µs", "autodiff µs", "hand/autodiff"], rows)

# %% [markdown]
# ## Summary
#
# Every registered op's hand-derived backward matches `jax.grad` of its reference to
# float32 and float64 rounding and agrees with central finite differences — over random shapes,
# random static configuration and random cotangents. The assertions above fail the test
# suite if any op, present or future, breaks its bound.
