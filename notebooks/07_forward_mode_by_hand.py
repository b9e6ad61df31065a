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
# # 07 — Forward mode by hand: a JVP next to every VJP
#
# Every funcbp op is a `jax.custom_vjp` function, and JAX refuses forward mode on those:
# `jax.jvp`, `jax.jacfwd` and forward-over-reverse Hessians raise
# `TypeError: can't apply forward-mode autodiff (jvp) to a custom_vjp function`.
# So every op also carries a **hand JVP**, written next to its hand VJP:
#
# $$\texttt{jvp}(x, \dot x) = \big(f(x),\ J_f(x)\,\dot x\big), \qquad
#   \texttt{bwd}(\text{res}, \bar y) = J_f(x)^\top \bar y .$$
#
# `op.forward_mode(...)` is the op as a `jax.custom_jvp` function built from that rule, so
# `jax.jvp`, `jax.jacfwd`, `jax.linearize`, `jax.hessian` — and `jax.grad`, because JAX
# transposes the linear rule — all work on it. Two hand rules for one Jacobian must be each
# other's transpose; that is checked here for three ops, with the dot-product test
#
# $$\langle J\dot x,\ \bar y\rangle \;=\; \langle \dot x,\ J^\top \bar y\rangle
#   \quad\text{for random } \dot x, \bar y .$$
#
# Then a Hessian-vector product of a digits MLP runs forward-over-reverse through hand rules
# only, and is compared with autodiff's.

# %%
import jax

jax.config.update("jax_enable_x64", True)  # float64: the comparisons below are to ~1e-15
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp
import numpy as np

import funcbp.ops as ops
from funcbp.data import load_digits

keys = iter(jax.random.split(jax.random.key(7), 64))


def rel(a, b):
    """‖a − b‖ / ‖b‖ over all leaves, in float64."""
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(b)])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def normal(*shape):
    return jax.random.normal(next(keys), shape, jnp.float64)


def transpose_gap(op, primals, tangents, cotangent, static=None):
    """|⟨J t, c⟩ − ⟨t, Jᵀ c⟩| relative to the size of the terms, from the two hand rules."""
    static = static or {}
    _, jt = op.jvp(primals, tangents, **static)
    _, residuals = op.fwd(*primals, **static)
    vjp = op.bwd(residuals, cotangent, **static)
    lhs = float(jnp.vdot(jt, cotangent))
    rhs = sum(float(jnp.vdot(t, g)) for t, g in zip(tangents, vjp, strict=True))
    scale = float(jnp.linalg.norm(jt) * jnp.linalg.norm(cotangent))
    scale += sum(
        float(jnp.linalg.norm(t) * jnp.linalg.norm(g)) for t, g in zip(tangents, vjp, strict=True)
    )
    return abs(lhs - rhs) / scale


x = normal(3)
try:
    jax.jvp(ops.tanh, (x,), (x,))
except TypeError as e:
    print("op(...) is a custom_vjp:", str(e).splitlines()[0][:80])
print("forward_mode works:", jax.jvp(ops.tanh.forward_mode, (x,), (x,))[1])

# %% [markdown]
# ## Linear: $Y = XW + b$
#
# $Y$ is bilinear in $(X, W)$ and affine in $b$. Perturb all three,
# $(X + \varepsilon\dot X)(W + \varepsilon \dot W) + b + \varepsilon \dot b$, and keep the
# first order in $\varepsilon$:
#
# $$\dot Y = \dot X\,W + X\,\dot W + \dot b .$$
#
# Each term is one of the backward's maps read forwards: $\bar X = \bar Y W^\top$ is the
# transpose of $\dot X \mapsto \dot X W$, $\bar W = X^\top \bar Y$ of
# $\dot W \mapsto X \dot W$, and $\bar b = \sum_n \bar Y_n$ of $\dot b \mapsto \mathbf 1 \dot b$.


# %%
def linear_jvp_by_hand(x, w, b, dx, dw, db):
    return x @ w + b[None, :], dx @ w + x @ dw + db[None, :]


x, w, b = normal(5, 4), normal(4, 3), normal(3)
dx, dw, db = normal(5, 4), normal(4, 3), normal(3)
mine = linear_jvp_by_hand(x, w, b, dx, dw, db)
rule = ops.linear.jvp((x, w, b), (dx, dw, db))
reference = jax.jvp(ops.linear.autodiff, (x, w, b), (dx, dw, db))
through_custom_jvp = jax.jvp(ops.linear.forward_mode, (x, w, b), (dx, dw, db))
gap = transpose_gap(ops.linear, (x, w, b), (dx, dw, db), normal(5, 3))
print(f"linear: notebook vs jax.jvp(reference) {rel(mine, reference):.1e}, "
      f"funcbp rule {rel(rule, reference):.1e}, "
      f"forward_mode {rel(through_custom_jvp, reference):.1e}, "
      f"transpose identity {gap:.1e}")  # fmt: skip
assert rel(mine, reference) <= 1e-12 and rel(rule, reference) <= 1e-12
assert rel(through_custom_jvp, reference) <= 1e-12 and gap <= 1e-12

# %% [markdown]
# ## Softmax: $y = \mathrm{softmax}(x)$ along one axis
#
# With $y_i = e^{x_i} / \sum_k e^{x_k}$,
# $\partial y_i / \partial x_j = y_i(\delta_{ij} - y_j)$, so
#
# $$\dot y_i = \sum_j y_i(\delta_{ij} - y_j)\,\dot x_j
#           = y_i\Big(\dot x_i - \sum_j y_j \dot x_j\Big),
#   \qquad \dot y = y \odot (\dot x - \langle y, \dot x\rangle).$$
#
# $O(n)$ per row, no $n\times n$ Jacobian. The Jacobian $\mathrm{diag}(y) - y y^\top$ is
# symmetric, so the backward applies the very same map to $\bar y$; and a shift of $\dot x$ by a
# constant gives $\dot y = 0$ (softmax is shift-invariant).


# %%
def softmax_jvp_by_hand(x, dx):
    y = jnp.exp(x - x.max(axis=-1, keepdims=True))
    y = y / y.sum(axis=-1, keepdims=True)
    return y, y * (dx - jnp.sum(y * dx, axis=-1, keepdims=True))


x, dx = 3 * normal(4, 6), normal(4, 6)
mine = softmax_jvp_by_hand(x, dx)
rule = ops.softmax.jvp((x,), (dx,))
reference = jax.jvp(ops.softmax.autodiff, (x,), (dx,))
gap = transpose_gap(ops.softmax, (x,), (dx,), normal(4, 6))
shift = softmax_jvp_by_hand(x, dx + normal(4, 1))[1] - mine[1]  # a shift per row moves nothing
print(f"softmax: notebook vs jax.jvp(reference) {rel(mine, reference):.1e}, "
      f"funcbp rule {rel(rule, reference):.1e}, transpose identity {gap:.1e}, "
      f"shifted tangent moves y by {float(jnp.abs(shift).max()):.1e}")  # fmt: skip
assert rel(mine, reference) <= 1e-12 and rel(rule, reference) <= 1e-12 and gap <= 1e-12
assert float(jnp.abs(shift).max()) <= 1e-14

# %% [markdown]
# ## Layer norm
#
# $y = \gamma \odot \hat x + \beta$ with $\hat x = (x - \mu)\,r$ and
# $r = (\sigma^2 + \epsilon)^{-1/2}$, statistics over the last axis.
# Per row of $D$ entries (means over the row), push $\dot x$ through each statistic:
#
# $$\dot\mu = \overline{\dot x}, \qquad
#   \dot{\sigma^2} = \tfrac{2}{D}\sum_i (x_i - \mu)(\dot x_i - \dot\mu)
#                 = 2\,\overline{(x - \mu)\odot\dot x}
#   \quad(\textstyle\sum_i (x_i - \mu) = 0),$$
#
# $$\dot r = -\tfrac12 r^3\,\dot{\sigma^2} = -r^2\,\overline{\hat x \odot \dot x}, \qquad
#   \dot{\hat x} = r(\dot x - \dot \mu) + (x - \mu)\,\dot r
#   = r\big(\dot x - \overline{\dot x} - \hat x \odot \overline{\hat x\odot\dot x}\big),$$
#
# $$\dot y = \gamma \odot \dot{\hat x} + \dot\gamma \odot \hat x + \dot\beta .$$
#
# The map $\dot x \mapsto \dot{\hat x}$ has the matrix
# $r\,(I - \tfrac1D \mathbf 1\mathbf 1^\top - \tfrac1D \hat x\hat x^\top)$: symmetric, which is
# why the backward's $\bar{\hat x} \mapsto \bar x$ is the same formula.


# %%
def layer_norm_jvp_by_hand(x, gamma, beta, dx, dgamma, dbeta, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    r = jax.lax.rsqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    xhat = (x - mean) * r
    dxhat = r * (dx - dx.mean(axis=-1, keepdims=True)
                 - xhat * (xhat * dx).mean(axis=-1, keepdims=True))  # fmt: skip
    y = gamma[None, :] * xhat + beta[None, :]
    return y, gamma[None, :] * dxhat + dgamma[None, :] * xhat + dbeta[None, :]


primals = (2 * normal(6, 5) + 1, normal(5), normal(5))
tangents = (normal(6, 5), normal(5), normal(5))
mine = layer_norm_jvp_by_hand(*primals, *tangents)
rule = ops.layer_norm.jvp(primals, tangents)
reference = jax.jvp(ops.layer_norm.autodiff, primals, tangents)
gap = transpose_gap(ops.layer_norm, primals, tangents, normal(6, 5))
print(f"layer_norm: notebook vs jax.jvp(reference) {rel(mine, reference):.1e}, "
      f"funcbp rule {rel(rule, reference):.1e}, transpose identity {gap:.1e}")  # fmt: skip
assert rel(mine, reference) <= 1e-12 and rel(rule, reference) <= 1e-12 and gap <= 1e-12

# %% [markdown]
# ## A Hessian-vector product of a digits MLP, forward over reverse, through hand rules
#
# A 2-layer MLP $64 \to 32 \to 10$ with tanh, softmax cross-entropy on 256 digits, built from
# ops in forward mode: every op is `op.path("hand", mode="forward")`, its `forward_mode`. Then
#
# $$Hv = \frac{\partial}{\partial\varepsilon}\,\nabla L(\theta + \varepsilon v)\Big|_0
#      = \texttt{jax.jvp(jax.grad(L), (θ,), (v,))}.$$
#
# `jax.grad` here is the **transpose of the hand JVPs** (JAX transposes each linear rule; no
# hand VJP and no reference is involved), and the outer `jax.jvp` differentiates that code.
# The same product through the hand VJPs (`mode="reverse"`: the outer `jax.jvp` differentiates
# each `bwd`) and through autodiff of the references must agree in float64.

# %%
data = load_digits()
xb = jnp.asarray(data.x_train[:256], jnp.float64)
yb = jnp.asarray(data.y_train[:256])


def make_loss(source, mode):
    linear, tanh, xent = (
        op.path(source, mode=mode) for op in (ops.linear, ops.tanh, ops.softmax_cross_entropy)
    )

    def loss(params):
        h = tanh(linear(xb, params["w1"], params["b1"]))
        return xent(linear(h, params["w2"], params["b2"]), yb)

    return loss


params = {
    "w1": normal(64, 32) / 8,
    "b1": 0.1 * normal(32),
    "w2": normal(32, 10) / np.sqrt(32),
    "b2": 0.1 * normal(10),
}
v = jax.tree.map(lambda p: normal(*p.shape), params)


def hvp(loss):
    return jax.jit(lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1])(params, v)


hv_forward = hvp(make_loss("hand", "forward"))  # hand JVPs, transposed, then differentiated
hv_reverse = hvp(make_loss("hand", "reverse"))  # hand VJPs, differentiated
hv_autodiff = hvp(make_loss("autodiff", "reverse"))  # the references
for name in params:
    print(f"Hv[{name}] {tuple(hv_forward[name].shape)}: forward-mode rules vs autodiff "
          f"{rel(hv_forward[name], hv_autodiff[name]):.1e}, hand VJPs vs autodiff "
          f"{rel(hv_reverse[name], hv_autodiff[name]):.1e}")  # fmt: skip
assert rel(hv_forward, hv_autodiff) <= 1e-10
assert rel(hv_reverse, hv_autodiff) <= 1e-10

# %% [markdown]
# The Hessian is symmetric, so $\langle u, Hv\rangle = \langle v, Hu\rangle$ for any $u, v$:
# one more check that uses nothing but the hand rules (and a scale-free tolerance).

# %%
u = jax.tree.map(lambda p: normal(*p.shape), params)
loss_fwd = make_loss("hand", "forward")
hu = jax.jit(lambda p, u: jax.jvp(jax.grad(loss_fwd), (p,), (u,))[1])(params, u)


def dot(a, b):
    return sum(float(jnp.vdot(a[k], b[k])) for k in a)


print(f"<u, Hv> = {dot(u, hv_forward):.12f}   <v, Hu> = {dot(v, hu):.12f}")
assert abs(dot(u, hv_forward) - dot(v, hu)) <= 1e-10 * abs(dot(u, hv_forward))
