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
# # 01 — The linear layer by hand
#
# The fully connected layer is the heart of the classic back-propagation derivation:
#
# $$Y = X W + b, \qquad X \in \mathbb{R}^{N \times I},\; W \in \mathbb{R}^{I \times O},\;
# b \in \mathbb{R}^{O},\; Y \in \mathbb{R}^{N \times O}$$
#
# ($N$ samples as rows, $I$ inputs, $O$ outputs; $b$ is added to every row). A scalar loss
# $L$ depends on $Y$. This notebook derives $\partial L/\partial W$, $\partial L/\partial X$
# and $\partial L/\partial b$, codes them in plain `jax.numpy`, and **proves them
# numerically** against `jax.grad` and central finite differences in float64. Then it
# chains layers (the back-propagation recursion), shows why every gradient must be
# computed with the pre-update weights, and checks the update rule
# $W \leftarrow W - \eta(\partial E/\partial W + \lambda W)$ against `funcbp.training.classic_sgd`.
#
# Every claim ends in an `assert`: the test suite re-executes this notebook, so a wrong
# formula fails the build.

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


import optax

from funcbp import backprop, nn, ops
from funcbp.check import finite_difference_grad, relative_error
from funcbp.ops.linear import linear_bwd
from funcbp.training.optim import classic_sgd

# %% [markdown]
# ## 1. The three gradients
#
# Write $dY \equiv \partial L/\partial Y$ (shape $N \times O$, the shape of $Y$: a gradient
# always has the shape of the variable). Elementwise the layer is
# $Y_{nk} = \sum_i X_{ni} W_{ik} + b_k$, so
#
# $$\frac{\partial Y_{nk}}{\partial W_{ij}} = X_{ni}\,\delta_{jk}, \qquad
# \frac{\partial Y_{nk}}{\partial X_{mi}} = W_{ik}\,\delta_{mn}, \qquad
# \frac{\partial Y_{nk}}{\partial b_{j}} = \delta_{jk}.$$
#
# The chain rule sums over every $Y_{nk}$ that the variable touches:
#
# | gradient | index form | matrix form | shapes |
# |---|---|---|---|
# | $\partial L/\partial W$ | $\sum_n X_{ni}\, dY_{nj}$ | $X^\top dY$ | $(I,N)(N,O) \to (I,O)$ |
# | $\partial L/\partial X$ | $\sum_j dY_{nj}\, W_{ij}$ | $dY\, W^\top$ | $(N,O)(O,I) \to (N,I)$ |
# | $\partial L/\partial b$ | $\sum_n dY_{nj}$ | $\mathbf{1}_N^\top dY$ | $(N,) (N,O) \to (O,)$ |
#
# The loss here is $L = \tfrac12 \lVert Y - T \rVert^2$ for a random target $T$, so
# $dY = Y - T$: a random, non-constant upstream gradient (an all-ones $dY$ would hide a
# summation over the wrong axis).

# %%
N, I, O = 5, 4, 3
kx, kw, kb, kt = jax.random.split(jax.random.key(0), 4)
X = jax.random.normal(kx, (N, I))  # float64: x64 is on
W = jax.random.normal(kw, (I, O))
b = jax.random.normal(kb, (O,))
T = jax.random.normal(kt, (N, O))


def forward(X, W, b):
    return X @ W + b[None, :]  # (N, O); b lifted to (1, O) explicitly


def loss(X, W, b):
    return 0.5 * jnp.sum((forward(X, W, b) - T) ** 2)


Y = forward(X, W, b)
dY = Y - T  # (N, O)  dL/dY for L = ½‖Y − T‖²
dW = X.T @ dY  # (I, O)
dX = dY @ W.T  # (N, I)
db = dY.sum(axis=0)  # (O,)
print("X", X.shape, " W", W.shape, " b", b.shape, " Y", Y.shape)
print("dX", dX.shape, "dW", dW.shape, "db", db.shape, "(each the shape of its variable)")

# %% [markdown]
# ### Proof by numbers
#
# Three independent references: `jax.grad` of the loss (autodiff), central finite
# differences $\big(L(\theta + \varepsilon e_i) - L(\theta - \varepsilon e_i)\big)/2\varepsilon$
# element by element ($\varepsilon = 10^{-6}$, float64: truncation error
# $O(\varepsilon^2)$, rounding $O(10^{-16}/\varepsilon)$), and the library's own
# `funcbp.ops.linear` backward. Errors are relative, $\lVert a-b\rVert/\lVert b\rVert$.

# %%
auto = jax.grad(loss, argnums=(0, 1, 2))(X, W, b)
fd = finite_difference_grad(loss, (X, W, b), (0, 1, 2))
lib = linear_bwd((X, W), dY)  # funcbp's hand VJP: (dX, dW, db)

rows, errors = [], {}
for name, mine, a, f, l in zip(("dX", "dW", "db"), (dX, dW, db), auto, fd, lib, strict=True):
    errors[name] = (relative_error(mine, a), relative_error(mine, f), relative_error(l, a))
    rows.append((name, str(mine.shape), *errors[name], float(jnp.abs(mine - a).max())))
show_table(
    [
        "grad",
        "shape",
        "rel vs jax.grad",
        "rel vs finite diff",
        "funcbp.ops vs jax.grad",
        "max abs vs jax.grad",
    ],
    rows,
)
for name, (e_auto, e_fd, e_lib) in errors.items():
    assert e_auto < 1e-12, (name, e_auto)
    assert e_fd < 1e-7, (name, e_fd)
    assert e_lib < 1e-12, (name, e_lib)

# %% [markdown]
# ### Why shapes are not enough
#
# When $I = O$ a transposed formula has the right shape and is still wrong: $dX = dY\,W$
# instead of $dY\,W^\top$ passes every shape check. Only the numbers catch it.

# %%
Ws = jax.random.normal(jax.random.key(1), (I, I))  # a square weight
dYs = jax.random.normal(jax.random.key(2), (N, I))  # a random upstream gradient
true_dX = jax.grad(lambda X: jnp.sum(forward(X, Ws, jnp.zeros(I)) * dYs))(X)
wrong = relative_error(dYs @ Ws, true_dX)  # transposed: right shape, wrong numbers
right = relative_error(dYs @ Ws.T, true_dX)
print(f"dY W   (wrong): rel err {wrong:.2e}\ndY Wᵀ (right): rel err {right:.2e}")
assert wrong > 0.1 and right < 1e-12

# %% [markdown]
# ## 2. $X^\top dY$ is a sum of per-sample outer products
#
# Row $n$ of $X$ is sample $x_n \in \mathbb{R}^I$, row $n$ of $dY$ its upstream gradient
# $dy_n \in \mathbb{R}^O$. Sample $n$ alone contributes the rank-one matrix
# $x_n \otimes dy_n = x_n^\top dy_n$ (shape $(I, O)$), and the batch gradient is their sum:
#
# $$\frac{\partial L}{\partial W} = \sum_{n=1}^{N} x_n^\top\, dy_n = X^\top dY .$$
#
# (A loss that *averages* over the batch carries its $1/N$ inside $dY$.) One matrix
# product does the whole sum, which is why the batched form is used.

# %%
dW_outer = sum(jnp.outer(X[n], dY[n]) for n in range(N))  # Σ_n x_n ⊗ dy_n  (I, O)
dW_einsum = jnp.einsum("ni,nj->ij", X, dY)
e_outer, e_einsum = relative_error(dW_outer, dW), relative_error(dW_einsum, dW)
print(f"Σ outer products vs Xᵀ dY: {e_outer:.2e}   einsum vs Xᵀ dY: {e_einsum:.2e}")
print("rank of one sample's contribution:", int(jnp.linalg.matrix_rank(jnp.outer(X[0], dY[0]))))
assert e_outer < 1e-13 and e_einsum < 1e-13

# %% [markdown]
# ## 3. Why some frameworks store the weight transposed
#
# PyTorch's `nn.Linear` stores its weight as $(O, I)$ = (out_features, in_features) and
# computes $y = x W_{\mathrm{pt}}^\top + b$. That is the textbook column-vector convention
# $y = W x$ written for a batch of row vectors: row $k$ of $W_{\mathrm{pt}}$ is the weight
# vector of output unit $k$. The transpose costs nothing at run time — matrix-multiply
# kernels (BLAS, XLA) take a "transposed operand" flag instead of moving memory — so
# it is a layout convention, not a speed trick.
#
# funcbp stores $W$ as $(I, O)$ and computes $y = x W$: with samples as rows no transpose
# appears in the forward, the shapes read left to right, and $dW = X^\top dY$ has $W$'s
# shape directly. The two are the same layer with $W_{\mathrm{pt}} = W^\top$, hence
# $\partial L/\partial W_{\mathrm{pt}} = dY^\top X = (X^\top dY)^\top$:

# %%
W_pt = W.T  # (O, I): PyTorch's layout


def loss_pt(X, W_pt, b):
    return 0.5 * jnp.sum((X @ W_pt.T + b[None, :] - T) ** 2)  # y = x Wᵀ + b


dW_pt = jax.grad(loss_pt, argnums=1)(X, W_pt, b)  # (O, I)
e_pt = relative_error(dW_pt, dY.T @ X)
e_same = relative_error(dW_pt.T, dW)
print(f"dW_pt shape {dW_pt.shape}; vs dYᵀ X: {e_pt:.2e}; (dW_pt)ᵀ vs funcbp's dW: {e_same:.2e}")
assert dW_pt.shape == (O, I) and e_pt < 1e-12 and e_same < 1e-12

# %% [markdown]
# ## 4. Chaining layers: the back-propagation recursion
#
# A network is a chain $x_0 \xrightarrow{f_1} x_1 \xrightarrow{f_2} \cdots
# \xrightarrow{f_n} x_n \to L$. Since $L$ depends on $x_{n-1}$ only through $x_n$,
#
# $$\frac{\partial L}{\partial x_{n-1}} = \frac{\partial L}{\partial x_n}\cdot
# \frac{\partial x_n}{\partial x_{n-1}}, \qquad
# \frac{\partial L}{\partial W_n} = \frac{\partial L}{\partial x_n}\cdot
# \frac{\partial x_n}{\partial W_n}.$$
#
# One backward step turns $dx_n$ into $dx_{n-1}$ (and $dW_n$) — a vector–Jacobian
# product that never forms the Jacobian:
#
# * Dense $z = x W + b$: $\;dx = dz\, W^\top$, $\;dW = x^\top dz$, $\;db = \mathbf 1^\top dz$
# * tanh $x = \tanh z$: $\;dz = dx \odot (1 - \tanh^2 z)$ (elementwise: a diagonal Jacobian)
# * mean softmax cross-entropy over $N$ samples with labels $y$:
#   $\;dz = (\mathrm{softmax}(z) - \mathrm{onehot}(y)) / N$
#
# Below, a 2- and a 3-layer tanh MLP: the recursion written out in plain `jnp`, the
# library's explicit engine `funcbp.backprop` (each layer's hand `bwd` called in reverse,
# no autodiff), and `jax.grad` of the plain references must agree.

# %%
N, D0, H, C = 16, 6, 8, 4
kx, ky = jax.random.split(jax.random.key(3))
x0 = jax.random.normal(kx, (N, D0))  # (N, D0)
labels = jax.random.randint(ky, (N,), 0, C)  # (N,) int


def tanh_mlp(depth):
    layers = []
    for _ in range(depth - 1):
        layers += [nn.Dense(H, init=nn.init.lecun_normal()), nn.Tanh()]
    return nn.serial(*layers, nn.Dense(C, init=nn.init.lecun_normal()))


def unpack(params):
    """funcbp's serial params (dicts for Dense, {} for Tanh) -> lists Ws, bs."""
    dense = [p for p in params if p]
    return [p["w"] for p in dense], [p["b"] for p in dense]


def forward_tape(Ws, bs, x):
    """Forward pass keeping each layer's input x_i and pre-activation z_i."""
    xs, zs = [x], []
    for i, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        z = xs[-1] @ W + b[None, :]  # (N, D_i)
        zs.append(z)
        xs.append(jnp.tanh(z) if i < len(Ws) - 1 else z)
    return xs, zs


def dlogits(z, y):
    """d(mean softmax cross-entropy)/dz = (softmax(z) − onehot(y)) / N   (N, C)."""
    p = jnp.exp(z - jax.scipy.special.logsumexp(z, axis=-1, keepdims=True))
    return (p - jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)) / z.shape[0]


def backward(Ws, xs, zs, dz, *, lr=None):
    """The recursion, top layer first: [(dW_i, db_i)] for every layer.

    With ``lr`` set, each W_i is updated right after its gradient and the pass continues
    through the UPDATED weight (the mistake studied in section 5).
    """
    Ws, grads = list(Ws), [None] * len(Ws)
    for i in reversed(range(len(Ws))):
        grads[i] = (xs[i].T @ dz, dz.sum(axis=0))  # dW_i = x_iᵀ dz (D_{i-1}, D_i); db_i
        if lr is not None:
            Ws[i] = Ws[i] - lr * grads[i][0]  # the bug: update before propagating
        if i > 0:
            dx = dz @ Ws[i].T  # dL/dx_{i-1} = dL/dz_i · W_iᵀ   (N, D_{i-1})
            dz = dx * (1 - jnp.tanh(zs[i - 1]) ** 2)  # through tanh: ⊙ tanh'(z)
    return grads


def manual_grads(Ws, bs, x, y, lr=None):
    xs, zs = forward_tape(Ws, bs, x)
    return backward(Ws, xs, zs, dlogits(zs[-1], y), lr=lr)


def autodiff_loss(params, model):
    out, _ = model.apply(params, state, x0, key=None, train=True, source="autodiff")
    return ops.softmax_cross_entropy.autodiff(out, labels)


rows, worst = [], 0.0
for depth in (2, 3):
    model = tanh_mlp(depth)
    _, params, state = model.init(jax.random.key(10 + depth), (D0,), jnp.float64)
    reference = unpack(jax.grad(autodiff_loss)(params, model))  # jax.grad of references
    (_, _), explicit = backprop.loss_and_grad(
        model, ops.softmax_cross_entropy, params, state, x0, labels
    )
    explicit = unpack(explicit)  # funcbp's explicit reverse pass
    manual = manual_grads(*unpack(params), x0, labels)  # the recursion above
    for i in range(depth):
        for j, pname in enumerate("Wb"):
            ref = reference[j][i]
            e_man = relative_error(manual[i][j], ref)
            e_exp = relative_error(explicit[j][i], ref)
            worst = max(worst, e_man, e_exp)
            rows.append((depth, f"{pname}{i + 1}", str(ref.shape), e_man, e_exp))
show_table(["depth", "param", "shape", "plain-jnp recursion", "funcbp.backprop"], rows)
print("(relative errors vs jax.grad of the reference model)")
assert worst < 1e-12, worst

# %% [markdown]
# ### The same recursion with explicit Jacobians
#
# For one sample the Jacobians are small enough to build: Dense has
# $\partial z/\partial x = W^\top$ $(D_i \times D_{i-1})$, tanh has
# $\mathrm{diag}(1 - \tanh^2 z)$. Their product, multiplied by the row vector
# $\partial L/\partial z_{\text{top}}$, is $\partial L/\partial x_0$. Back-propagation
# computes exactly this product, right to left, as vector–matrix products — so it never
# stores a Jacobian (for a batch, the Dense Jacobian would be $(N D_i) \times (N D_{i-1})$).
# Each hand-written Jacobian is also checked against `jax.jacobian`.

# %%
model = tanh_mlp(3)
_, params, state = model.init(jax.random.key(13), (D0,), jnp.float64)
Ws, bs = unpack(params)
x, y = x0[0], labels[0]  # one sample: x (D0,)

jacobians, h, worst_jac = [], x, 0.0
for i, (W, b) in enumerate(zip(Ws, bs, strict=True)):
    J_dense = W.T  # ∂z/∂x = Wᵀ   (D_i, D_{i-1})
    affine = lambda v, W=W, b=b: v @ W + b  # this layer's W, b
    worst_jac = max(worst_jac, relative_error(J_dense, jax.jacobian(affine)(h)))
    z = h @ W + b
    jacobians.append(J_dense)
    if i < len(Ws) - 1:
        J_tanh = jnp.diag(1 - jnp.tanh(z) ** 2)  # ∂tanh(z)/∂z   (D_i, D_i)
        worst_jac = max(worst_jac, relative_error(J_tanh, jax.jacobian(jnp.tanh)(z)))
        jacobians.append(J_tanh)
        h = jnp.tanh(z)
    else:
        h = z

g = dlogits(h[None, :], y[None])[0]  # ∂L/∂z_top for this one sample   (C,)
product = g
for J in reversed(jacobians):  # g · J_top · … · J_1, right to left
    product = product @ J
one_loss = lambda v: ops.softmax_cross_entropy.autodiff(
    model.apply(params, state, v[None, :], source="autodiff")[0], y[None]
)
e_chain = relative_error(product, jax.grad(one_loss)(x))
print("Jacobian shapes, input to output:", [tuple(J.shape) for J in jacobians])
print(f"hand Jacobians vs jax.jacobian: {worst_jac:.2e}")
print(f"(∂L/∂z_top)·J·…·J vs jax.grad w.r.t. x0: {e_chain:.2e}")
assert worst_jac < 1e-14 and e_chain < 1e-12

# %% [markdown]
# ## 5. All gradients first, with the pre-update weights — then update
#
# Back-propagation computes $\partial E/\partial W_n$ for every layer **at one point** in
# parameter space. Step 3 of the recursion, $dx_{n-1} = dz_n W_n^\top$, uses $W_n$. If a
# layer is updated as soon as its gradient is known ($W_n \leftarrow W_n - \eta\, dW_n$)
# and the pass then continues through the *updated* $W_n$, every layer below receives
# $dz_n (W_n - \eta\, dW_n)^\top$ instead of $dz_n W_n^\top$: an error of order
# $\eta \lVert dz_n\, dW_n^\top \rVert$, which grows linearly with the learning rate.
# The top layer is unaffected (its gradient is taken before anything changes); every
# layer below is wrong. Measured against `jax.grad`:

# %%
reference = unpack(jax.grad(autodiff_loss)(params, model))
correct = manual_grads(Ws, bs, x0, labels)
lrs = [1e-3, 1e-2, 1e-1, 1.0]
err = np.zeros((len(lrs), len(Ws)))  # relative error of dW_i, update-as-you-go
for r, lr in enumerate(lrs):
    buggy = manual_grads(Ws, bs, x0, labels, lr=lr)
    for i in range(len(Ws)):
        err[r, i] = relative_error(buggy[i][0], reference[0][i])
    assert np.array_equal(buggy[-1][0], correct[-1][0])  # the top layer is untouched
ok = [relative_error(correct[i][0], reference[0][i]) for i in range(len(Ws))]

show_table(
    ["learning rate", *[f"dW{i + 1} rel err" for i in range(len(Ws))]],
    [("all grads first", *ok)]
    + [(f"update-as-you-go η={lr:g}", *map(float, e)) for lr, e in zip(lrs, err, strict=True)],
)
fig, ax = plt.subplots(figsize=(5.5, 3.5))
for i in range(len(Ws) - 1):
    ax.loglog(lrs, err[:, i], "o-", label=f"dW{i + 1} (layer {i + 1})")
ax.loglog(lrs, [err[0, 0] * lr / lrs[0] for lr in lrs], "k:", label="∝ η")
ax.set(
    xlabel="learning rate η",
    ylabel="relative error vs jax.grad",
    title="Back-propagating through already-updated weights",
)
ax.legend()
plt.show()

assert max(ok) < 1e-12
assert err[lrs.index(1e-1), :-1].min() > 1e-3  # lower layers are visibly wrong
slopes = np.diff(np.log10(err[:3, 0]))  # decade by decade at small η: error ∝ η
print("log10 error per decade of η (layer 1):", np.round(slopes, 3))
assert np.all(np.abs(slopes - 1) < 0.1)

# %% [markdown]
# ## 6. The update: $W \leftarrow W - \eta\,(\partial E/\partial W + \lambda W)$
#
# With an L2 penalty $\tfrac{\lambda}{2}\lVert W\rVert^2$ added to the error, its gradient
# $\lambda W$ joins $\partial E/\partial W$ ("weight decay"), and gradient descent with
# learning rate $\eta$ gives the classic rule above. `funcbp.training.classic_sgd(η, λ)` is
# that rule as an optax chain (`add_decayed_weights(λ)` then `sgd(η)`); by default the decay
# applies to weight matrices only (biases are not decayed, the usual practice), and
# `decay_all=True` applies it to every parameter, exactly as the formula is written.
# Both must agree with the rule coded by hand — bit for bit, since the arithmetic is the
# same.

# %%
eta, lam = 0.05, 1e-3
grads = jax.grad(autodiff_loss)(params, model)  # all gradients first …

by_hand_all = jax.tree.map(lambda p, g: p - eta * (g + lam * p), params, grads)
by_hand_masked = jax.tree.map(  # decay only ndim ≥ 2 (weights), not biases
    lambda p, g: p - eta * (g + lam * p) if p.ndim >= 2 else p - eta * g, params, grads
)


def optax_step(opt):
    updates, _ = opt.update(grads, opt.init(params), params)  # … then one update
    return optax.apply_updates(params, updates)


same_all = jax.tree.map(
    np.array_equal, by_hand_all, optax_step(classic_sgd(eta, lam, decay_all=True))
)
same_masked = jax.tree.map(np.array_equal, by_hand_masked, optax_step(classic_sgd(eta, lam)))
print("bit-identical, decay_all=True :", jax.tree.leaves(same_all))
print("bit-identical, default mask   :", jax.tree.leaves(same_masked))
assert all(jax.tree.leaves(same_all)) and all(jax.tree.leaves(same_masked))

# λW is the gradient of the penalty: plain SGD on E + λ/2 Σ‖W‖² is the same step
penalised = lambda p: (
    autodiff_loss(p, model) + 0.5 * lam * sum(jnp.sum(w**2) for w in jax.tree.leaves(p))
)
sgd_on_penalty = jax.tree.map(lambda p, g: p - eta * g, params, jax.grad(penalised)(params))
e_pen = max(jax.tree.leaves(jax.tree.map(relative_error, sgd_on_penalty, by_hand_all)))
print(f"SGD on E + λ/2‖W‖² vs the decayed update: rel err {e_pen:.2e}")
assert e_pen < 1e-14

# %% [markdown]
# ## Summary
#
# * $dW = X^\top dY$, $dX = dY W^\top$, $db = \mathbf 1^\top dY$ agree with `jax.grad` to
#   float64 rounding and with finite differences to their truncation error.
# * $X^\top dY$ is the sum of per-sample outer products $x_n \otimes dy_n$.
# * Storing $W$ as $(O, I)$ (PyTorch) or $(I, O)$ (funcbp) is a layout convention; the
#   gradients are transposes of each other.
# * The recursion $dx_{n-1} = dx_n\, \partial x_n/\partial x_{n-1}$ written by hand, the
#   explicit engine `funcbp.backprop` and `jax.grad` agree for 2 and 3 layers.
# * Updating a layer before propagating through it corrupts every lower layer's gradient
#   by an error proportional to $\eta$: compute all gradients first, then update.
# * `classic_sgd` is exactly $W \leftarrow W - \eta(\partial E/\partial W + \lambda W)$.
