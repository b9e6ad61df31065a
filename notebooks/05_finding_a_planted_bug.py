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
# # 05 — Finding a planted bug
#
# Gradient checks of single ops (notebooks 02, 04) tell you *that* a backward is wrong.
# In a whole network the question is *where*: a wrong gradient in one layer corrupts every
# gradient below it, so all parameters may look wrong at once.
# `funcbp.check.diverge.divergence_report` answers it. For a `serial` model
# $x_0 \to f_0 \to x_1 \to \dots \to f_{n-1} \to x_n \to L$ ($f_i$ = the `i`-th of `model.children`,
# $x_0$ the input) it computes every activation gradient $\partial L/\partial x_i$ and
# every parameter gradient twice:
#
# * **hand** — funcbp's explicit engine: each layer's `fwd` (keeping residuals), then each
#   layer's hand `bwd` in reverse, keeping every incoming $dy$ and outgoing $dx$; no JAX
#   autodiff involved;
# * **autodiff** — `jax.grad` of the loss of the model built from the ops' plain
#   references, with respect to the parameters and to zero perturbations
#   $\epsilon_i$ added after each layer ($x_i + \epsilon_i$, so
#   $\partial L/\partial \epsilon_i = \partial L/\partial x_i$).
#
# Row $i$ holds the relative errors of what layer $f_i$'s backward produced — its
# parameter gradient $\partial L/\partial W_i$ and its input's gradient
# $\partial L/\partial x_i$ — given the hand $\partial L/\partial x_{i+1}$ from the row
# above it (row $n$ is the loss). Walking from the loss backwards, the
# **first divergence** is the first row over the tolerance: every layer above it handed
# down a correct gradient, so the bug is in that layer. The *local* columns isolate each
# layer completely — its hand backward fed the *true* incoming gradient.
#
# Below: the report on a healthy MLP and CNN (digits, bundled with scikit-learn: nothing
# is downloaded), then three planted bugs in three different layers, each named exactly,
# and finally funcbp's mutation testing: every automatically broken backward of the
# layers used here is caught by the op-level checker.

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


from funcbp import check, data, nn, ops
from funcbp.check import diverge, mutate
from funcbp.training.loop import init_model

BATCH = 16
digits, images = data.load_digits(), data.load_digits(image=True)  # (n, 64) and (n, 8, 8, 1)
x_mlp, y_mlp = digits.x_train[:BATCH], digits.y_train[:BATCH]
x_cnn, y_cnn = images.x_train[:BATCH], images.y_train[:BATCH]
KEY = jax.random.key(7)  # dropout mask of the CNN: the same per-layer keys feed both sides

mlp = nn.mlp([32, 32, 32, 10])  # Dense → ReLU → Dense → ReLU → Dense → ReLU → Dense
cnn = nn.cnn(10, channels=(4, 6), hidden=16)  # Conv → BatchNorm → ReLU → Conv → … → Dense
mlp_params, mlp_state = init_model(mlp, 0, digits.input_shape, jnp.float64)
cnn_params, cnn_state = init_model(cnn, 0, images.input_shape, jnp.float64)
print("MLP layers:", [layer.name for _, layer in mlp.children])
print("CNN layers:", [layer.name for _, layer in cnn.children])
print("inputs:", x_mlp.shape, x_cnn.shape, "labels:", y_mlp[:8], "…")


def show_report(report):
    # The report as a table: one row per layer, from the loss backwards.
    fmt = lambda e: "—" if e is None else float(e)
    first = report.first_divergence
    where = "none" if first is None else f"layer {first.index} ({first.name})"
    print(
        f"{report.model} [{report.dtype}] loss {report.loss:.4f}, tol {report.rows[0].tol:.0e}, "
        f"first divergence: {where}"
    )
    rows = []
    for r in report.rows:
        verdict = "ok" if r.ok else ("FIRST" if first and r.index == first.index else "diverges")
        rows.append(
            (
                r.index,
                r.name,
                fmt(r.dy),
                fmt(r.dparams),
                fmt(r.dx),
                fmt(r.local_dparams),
                fmt(r.local_dx),
                verdict,
            )
        )
    show_table(["#", "layer", "dL/dout", "dL/dW", "dL/din", "local dW", "local din", ""], rows)


def check_planted(report, index):
    # The report names exactly layer `index`; every row above it (closer to the loss) is within
    # tolerance; the local check flags that layer and no other.
    rows = {r.index: r for r in report.rows}
    n_layers = len(report.rows) - 1
    assert report.first_divergence is not None and report.first_divergence.index == index, report
    assert all(rows[i].ok for i in rows if i > index), report
    local = lambda r: [e for e in (r.local_dparams, r.local_dx) if e is not None]
    assert max(local(rows[index])) > rows[index].tol
    assert all(
        e <= rows[i].tol for i in rows if i != index and i < n_layers for e in local(rows[i])
    )


# %% [markdown]
# ## 1. Healthy models: no divergence
#
# Float64 (tolerance `funcbp.check.MODEL_TOLERANCE["float64"]` $= 10^{-9}$): every row
# agrees to rounding. The CNN is run in training mode, so batch norm uses the batch
# statistics and dropout a random mask (the same on both sides). "—" marks what a layer
# does not have (parameters) or what the loss row does not get (an incoming gradient:
# its seed is 1).

# %%
healthy = {
    "mlp": diverge.divergence_report(mlp, mlp_params, mlp_state, x_mlp, y_mlp, dtype="float64"),
    "cnn": diverge.divergence_report(
        cnn, cnn_params, cnn_state, x_cnn, y_cnn, key=KEY, dtype="float64"
    ),
}
for report in healthy.values():
    show_report(report)
    print()
worst_row = lambda rep: max(e for r in rep.rows for e in (r.dparams, r.dx) if e is not None)
print("worst error of any row:", {name: f"{worst_row(rep):.1e}" for name, rep in healthy.items()})
assert all(rep.ok for rep in healthy.values())
assert all(worst_row(rep) < 1e-13 for rep in healthy.values())  # rounding only


# %% [markdown]
# ## 2. Bug A — a flipped sign in a Dense layer's $dW$, deep in the MLP
#
# The mechanism funcbp's own tests use: `op.with_bwd(bad_bwd, name=...)` is a copy of
# the op with another backward (a new `jax.custom_vjp`), and `nn.op_layer` makes a layer
# of it. The broken backward returns $-dW$ instead of $dW = X^\top dY$ for the **second**
# of the four Dense layers (index 2; the loss is reached through two more Dense layers
# above it). Everything else — forward, $dX$, $db$ — is right, and so are the weights:
# the buggy model is initialised from the same seed and gets identical parameters.


# %%
def linear_bwd_flipped_dw(residuals, dy):
    dx, dw, db = ops.linear.bwd(residuals, dy)
    return dx, -dw, db  # the planted bug


def plant(model, index, bad_op, param_names, name):
    # `model` with layer `index` rebuilt from `bad_op` (same init, hence same params)
    layers = [layer for _, layer in model.children]
    original = layers[index]
    init = lambda key, shape, dtype: original.init(key, shape, dtype)[:2]
    bad = nn.op_layer(name, bad_op, init, param_names)
    return nn.serial(*layers[:index], bad, *layers[index + 1 :], name=model.name + "_planted")


BUG_A = 2
bad_linear = ops.linear.with_bwd(linear_bwd_flipped_dw, name="linear[dW sign flipped]")
mlp_a = plant(mlp, BUG_A, bad_linear, ("w", "b"), "dense32_BUG")
params_a, state_a = init_model(mlp_a, 0, digits.input_shape, jnp.float64)
assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params_a, mlp_params)))  # same weights

report_a = diverge.divergence_report(mlp_a, params_a, state_a, x_mlp, y_mlp, dtype="float64")
show_report(report_a)
check_planted(report_a, BUG_A)
assert all(r.dx is None or r.dx < r.tol for r in report_a.rows)  # dx is untouched
print("\nthe op-level checker on the broken op:", check.check_op(bad_linear, jax.random.key(0)))
assert not check.check_op(bad_linear, jax.random.key(0)).ok

# %% [markdown]
# Only row 2 fails, and only in $dL/dW$ (relative error 2: $\lVert -g - g\rVert / \lVert g\rVert$).
# A bug confined to a parameter gradient does not travel: $dL/dx$ stays correct all the
# way down. The next bug does travel.
#
# ## 3. Bug B — a wrong stored residual (from `funcbp.check.mutate`)
#
# `funcbp.check.mutate.make_mutants` derives broken backwards automatically (flipped signs,
# doubled or forgotten terms, skipped batch sums, wrong residuals, …). Its
# `linear:residual[1]` mutant runs the true backward with the stored weight scaled by
# 1.1 — as if the forward had kept a stale or wrongly transformed $W$. Then
# $dX = dY (1.1\, W)^\top$ is wrong while $dW = X^\top dY$ is right. Planted in the Dense
# layer at index 4, its wrong $dX$ flows into every layer below: rows 3 to 0 diverge too.
# The report still names index 4 — the first row from the loss — and the local columns
# (each layer fed the *true* incoming gradient) are clean everywhere else.

# %%
k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
sample = (jax.random.normal(k1, (4, 3)), jax.random.normal(k2, (3, 5)), jax.random.normal(k3, (5,)))
mutants = {m.name: m for m in mutate.make_mutants(ops.linear, sample, {})}
print(f"{len(mutants)} mutants of linear:", ", ".join(n.split(":")[1] for n in mutants))
mutant = mutants["linear:residual[1]"]
print(f"planted: {mutant.name} — {mutant.description}\n")

BUG_B = 4
mlp_b = plant(mlp, BUG_B, mutant.op, ("w", "b"), "dense32_BUG")
report_b = diverge.divergence_report(mlp_b, mlp_params, mlp_state, x_mlp, y_mlp, dtype="float64")
show_report(report_b)
check_planted(report_b, BUG_B)
rows_b = {r.index: r for r in report_b.rows}
assert rows_b[BUG_B].dparams < rows_b[BUG_B].tol < rows_b[BUG_B].dx  # dW right, dX wrong
assert all(not rows_b[i].ok for i in range(BUG_B))  # … and it propagates to every layer below


# %% [markdown]
# ## 4. Bug C — batch norm without its mean term, in the CNN
#
# Notebook 04 derived $dX = \frac{r}{n}\big(n\, d\hat X - \sum d\hat X - \hat X \sum d\hat X \odot
# \hat X\big)$ (with $d\hat X = dY \odot \gamma$). The planted backward forgets the term
# that comes from $\mu$, $-\sum d\hat X$ — the classic mistake of treating the batch mean as
# a constant. $d\gamma$ and $d\beta$ stay right. In the CNN the broken batch norm (index 1)
# sits right after the first convolution, so the first convolution's $dW$ and the input
# gradient are wrong as well.


# %%
def batch_norm_bwd_no_mean(residuals, g, eps=1e-5):
    x, mean, rstd, gamma = residuals  # funcbp's residuals: x, μ, r, γ
    axes = tuple(range(x.ndim - 1))
    xhat = (x - mean) * rstd
    dxhat = g * gamma.reshape((1,) * (x.ndim - 1) + gamma.shape)
    dx = rstd * (
        dxhat - xhat * jnp.mean(dxhat * xhat, axis=axes, keepdims=True)
    )  # − mean(dx̂) missing
    return dx, jnp.sum(g * xhat, axis=axes), jnp.sum(g, axis=axes)


BUG_C = 1
bad_bn = ops.batch_norm.with_bwd(batch_norm_bwd_no_mean, name="batch_norm[mean term dropped]")
cnn_c = plant(cnn, BUG_C, bad_bn, ("gamma", "beta"), "batch_norm_BUG")
params_c, state_c = init_model(cnn_c, 0, images.input_shape, jnp.float64)
assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params_c, cnn_params)))  # same weights

report_c = diverge.divergence_report(
    cnn_c, params_c, state_c, x_cnn, y_cnn, key=KEY, dtype="float64"
)
show_report(report_c)
check_planted(report_c, BUG_C)
rows_c = {r.index: r for r in report_c.rows}
worst = rows_c[BUG_C].worst_param or "(dγ, dβ are right)"
print(f"\nworst parameter leaf of the first divergence: {worst}")
assert rows_c[BUG_C].dparams < rows_c[BUG_C].tol < rows_c[BUG_C].dx and not rows_c[0].ok
print("the op-level checker on the broken op:", check.check_op(bad_bn, jax.random.key(0)))
assert not check.check_op(bad_bn, jax.random.key(0)).ok

# %% [markdown]
# ## 5. The picture: walking back from the loss
#
# Relative error of $\partial L/\partial x$ produced by each layer's backward (lines) and
# of its parameter gradient (open markers), from the loss (left) to the input (right), for
# the healthy and the buggy models; exact zeros on the floor. The dashed line is the
# tolerance. The first point above it, from the left, is the planted layer.

# %%
FLOOR = 1e-18


def plot_report(ax, report, color, label, **line):
    # line: dL/din of each row; open squares: dL/dW (rows with parameters)
    xs = np.arange(len(report.rows))
    dx = [np.nan if r.dx is None else max(r.dx, FLOOR) for r in report.rows]
    dw = [np.nan if r.dparams is None else max(r.dparams, FLOOR) for r in report.rows]
    ax.plot(xs, dx, "o-", color=color, ms=4, label=label, **line)
    ax.plot(xs, dw, "s", color=color, mfc="none", ms=9, mew=1.5)


fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
under = dict(lw=6, alpha=0.35)  # the healthy model, drawn wide so a bug line on top shows
plot_report(ax0, healthy["mlp"], "tab:green", "healthy", **under)
plot_report(ax0, report_a, "tab:orange", "bug A: dW sign, layer 2")
plot_report(ax0, report_b, "tab:red", "bug B: residual W ×1.1, layer 4")
plot_report(ax1, healthy["cnn"], "tab:green", "healthy", **under)
plot_report(ax1, report_c, "tab:red", "bug C: BN mean term, layer 1")
for ax, title, rep in ((ax0, "MLP", healthy["mlp"]), (ax1, "CNN", healthy["cnn"])):
    ax.axhline(check.MODEL_TOLERANCE["float64"], color="k", ls="--", lw=1, label="tolerance")
    ax.set_xticks(
        range(len(rep.rows)),
        [f"{r.index} {r.name}" for r in rep.rows],
        rotation=60,
        ha="right",
        fontsize=8,
    )
    ax.set(
        yscale="log",
        ylim=(FLOOR / 3, 30),
        xlabel="layer (from the loss backwards)",
        title=f"{title}: hand vs autodiff (line dL/din, □ dL/dW)",
    )
    ax.legend(fontsize=8, loc="center left")
ax0.set_ylabel("relative error (float64)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Mutation testing: a checker that never fails proves nothing
#
# `funcbp.check.mutate.mutate_op` builds every applicable mutant of an op's backward and runs
# the op-level gradient check (hand vs autodiff, float64, tolerance $10^{-10}$) on each;
# a mutant that passes is retried on fresh random shapes and only excused if its
# cotangents equal the true ones on every sample tried (an *equivalent* mutant). For the ops of the
# layers above, every mutant must be caught.

# %%
mutation = [
    mutate.mutate_op(ops.REGISTRY[name], jax.random.key(0))
    for name in ("linear", "conv2d", "batch_norm")
]
show_table(
    ["op", "mutants", "caught", "equivalent", "survived", "smallest error of a caught mutant"],
    [
        (
            m.op,
            m.made,
            m.killed,
            len(m.equivalent),
            len(m.survivors),
            min(r.error for r in m.results if r.killed),
        )
        for m in mutation
    ],
)
print("\nfamilies:", sorted({r.family for m in mutation for r in m.results}))
for m in mutation:
    assert m.made > 0 and m.killed == m.made and not m.survivors, m

# %% [markdown]
# ## Summary
#
# * On healthy models, hand (the explicit engine of hand `bwd`s) and autodiff agree row
#   by row to float64 rounding, from the loss down to the input.
# * A planted bug is named exactly: the first row over the tolerance, walking back from
#   the loss, is the broken layer — whether the bug stays in $dW$ (A), or corrupts $dX$
#   and with it every layer below (B, C). The local columns confirm it: fed the true
#   incoming gradient, every other layer is correct.
# * The op-level checker catches the same broken ops, and every automatic mutant of
#   `linear`, `conv2d` and `batch_norm`.
