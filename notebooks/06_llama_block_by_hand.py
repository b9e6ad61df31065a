# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A Llama block by hand: RMSNorm, RoPE and SwiGLU
#
# A Llama block is a GPT block with three pieces swapped: **RMSNorm** for layer norm,
# **rotary position embedding** (RoPE) on queries and keys for learned positions, and a
# **SwiGLU** MLP for the GELU one (plus grouped key/value heads, which `ops.attention` already
# handles). llm.c's llama3 branch writes their backward passes by hand in CUDA; Liger-Kernel
# ships them as Triton kernels checked with loose tolerances. Here each one is
#
# 1. derived (the vector–Jacobian product, with shapes);
# 2. coded *in this notebook* in a few lines of `jax.numpy`, independently of funcbp (RoPE is
#    even written with complex numbers, a different route to the same rotation);
# 3. compared four ways in float64, as in notebook 04: the **notebook** formula, **funcbp**
#    (`jax.vjp` through the op's `jax.custom_vjp`, i.e. its hand `bwd`), **jax.grad** of the
#    op's plain reference, and **central finite differences** of that reference;
# 4. asserted: notebook, funcbp and `jax.grad` agree to $10^{-12}$, finite differences to
#    $10^{-7}$.
#
# Every comparison uses $L(a) = \langle f(a), U\rangle$ for a random cotangent $U$ (never all
# ones), so $\nabla_a L = J^\top U$ is exactly the VJP. Errors are relative,
# $\lVert g - g_{\text{ref}}\rVert / \lVert g_{\text{ref}}\rVert$. At the end the three rules
# run inside a whole (tiny) Llama, whose every gradient comes from hand rules.
#
# Run it as a script (`python notebooks/06_llama_block_by_hand.py`) or open it with jupytext.

# %%
import jax

jax.config.update("jax_enable_x64", True)  # float64 for the exact comparisons
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from funcbp import check, ops  # noqa: E402
from funcbp.check import finite_difference_grad, relative_error  # noqa: E402

FD_EPS = 1e-6
TOL_EXACT, TOL_FD = 1e-12, 1e-7
COMPARISONS = {  # column: (gradient, reference gradient, tolerance)
    "notebook vs jax.grad": ("notebook", "jax.grad", TOL_EXACT),
    "funcbp vs jax.grad": ("funcbp", "jax.grad", TOL_EXACT),
    "notebook vs funcbp": ("notebook", "funcbp", TOL_EXACT),
    "notebook vs finite diff": ("notebook", "finite diff", TOL_FD),
    "jax.grad vs finite diff": ("jax.grad", "finite diff", TOL_FD),
}
np_rng = np.random.default_rng(0)


def four_ways(op, by_hand, arrays, static, names):
    """The four gradients of L = <op(arrays), U> for the float arrays ``names`` (in order), a
    printed table of their relative errors, and the asserts. ``by_hand(*arrays, u, **static)
    -> (out, grads)`` is the notebook's forward and formula."""
    out = jax.eval_shape(lambda *a: op.reference(*a, **static), *arrays)
    u = jnp.asarray(np_rng.standard_normal(out.shape))
    idx = tuple(range(len(names)))  # the float arrays come first

    @jax.jit
    def run(arrays, u):
        pairing = lambda *a: jnp.vdot(op.reference(*a, **static), u)
        y, grads = by_hand(*arrays, u, **static)
        rest = arrays[len(idx) :]
        _, vjp = jax.vjp(lambda *f: op(*f, *rest, **static), *arrays[: len(idx)])
        return (
            y,
            op.reference(*arrays, **static),
            {
                "notebook": grads,
                "funcbp": vjp(u),
                "jax.grad": jax.grad(pairing, argnums=idx)(*arrays),
                "finite diff": finite_difference_grad(pairing, arrays, idx, eps=FD_EPS),
            },
        )

    y, y_ref, g = run(tuple(arrays), u)
    print(f"{op.name} {[tuple(a.shape) for a in arrays]} {static}")
    print(f"  notebook forward vs the reference: rel err {relative_error(y, y_ref):.1e}")
    assert relative_error(y, y_ref) < TOL_EXACT
    for i, name in enumerate(names):
        errs = {c: relative_error(g[a][i], g[b][i]) for c, (a, b, _) in COMPARISONS.items()}
        print(f"  d{name:<6}" + "  ".join(f"{c} {e:.1e}" for c, e in errs.items()))
        for c, (_, _, tol) in COMPARISONS.items():
            assert errs[c] < tol, (op.name, name, c, errs[c])


# %% [markdown]
# ## 1. RMSNorm
#
# Per row $x \in \mathbb R^D$ (the last axis), with gain $\gamma \in \mathbb R^D$:
# $$m = \tfrac1D \textstyle\sum_k x_k^2,\qquad r = (m + \varepsilon)^{-1/2},\qquad
#   \hat x = x\, r,\qquad y = \gamma \odot \hat x .$$
# Layer norm without the mean and without $\beta$. Differentiate each step:
# $\partial m/\partial x_j = 2x_j/D$, so
# $\partial r/\partial x_j = -\tfrac12 (m+\varepsilon)^{-3/2}\, 2x_j/D = -r^2 \hat x_j / D$ and
# $$\frac{\partial \hat x_i}{\partial x_j} = r\,\delta_{ij} + x_i \frac{\partial r}{\partial x_j}
#   = r\Big(\delta_{ij} - \frac{\hat x_i \hat x_j}{D}\Big).$$
# With $d\hat x = g \odot \gamma$ the VJP is
# $$dx = r\big(d\hat x - \hat x \cdot \operatorname{mean}(d\hat x \odot \hat x)\big),\qquad
#   d\gamma = \sum_{\text{rows}} g \odot \hat x$$
# — $O(D)$ per row, and layer norm's $-\operatorname{mean}(d\hat x)$ term is gone with the mean.
# Shapes: $x, g, dx$ $(\dots, D)$; $r$ $(\dots, 1)$; $\gamma, d\gamma$ $(D)$.


# %%
def rms_norm_by_hand(x, gamma, g, eps):
    r = 1 / jnp.sqrt(jnp.mean(x**2, axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = x * r
    gamma = gamma.reshape((1,) * (x.ndim - 1) + gamma.shape)  # (1.., D): explicit broadcast
    dxhat = g * gamma
    dx = r * (dxhat - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True))
    dgamma = (g * xhat).reshape(-1, x.shape[-1]).sum(0)
    return gamma * xhat, (dx, dgamma)


x = jnp.asarray(np_rng.standard_normal((3, 5, 16)) * 2 + 0.5)
gamma = jnp.asarray(np_rng.uniform(0.5, 1.5, 16))
four_ways(ops.rms_norm, rms_norm_by_hand, (x, gamma), {"eps": 1e-6}, ["x", "gamma"])
four_ways(ops.rms_norm, rms_norm_by_hand, (x[..., :3], gamma[:3]), {"eps": 0.1}, ["x", "gamma"])

# %% [markdown]
# ## 2. Rotary position embedding (rotate-half)
#
# Split each row $x \in \mathbb R^{D_h}$ (at position $p$) into halves $x = [x_1 \mid x_2]$ and
# rotate the $i$-th pair $(x_{1,i}, x_{2,i})$ by $\varphi_{p,i} = p\,\theta^{-2i/D_h}$:
# $$\begin{pmatrix} y_{1,i} \\ y_{2,i}\end{pmatrix} =
#   \begin{pmatrix} \cos\varphi & -\sin\varphi \\ \sin\varphi & \cos\varphi \end{pmatrix}
#   \begin{pmatrix} x_{1,i} \\ x_{2,i}\end{pmatrix},$$
# which is Hugging Face's `x * cos + rotate_half(x) * sin`. Read the pair as one complex number
# $z = x_1 + \mathrm i\,x_2$: the rotation is $z \mapsto z\,e^{\mathrm i\varphi}$. The map is
# linear in $x$ and its Jacobian is block diagonal with $2\times 2$ rotation blocks $R$, so the
# VJP is $R^\top g$ — and $R^\top = R^{-1}$ is the rotation by $-\varphi$:
# $$dz = g_z\, e^{-\mathrm i\varphi},\qquad g_z = g_1 + \mathrm i\, g_2 .$$
# Nothing of $x$ is needed, only the positions. Two consequences checked below: the backward of
# the output is the input ($R^\top R x = x$), and a score $\langle R_m q, R_n k\rangle$ depends
# on $n - m$ only, which is why RoPE encodes *relative* positions. Shapes:
# $x, g$ $(\dots, T, D_h)$, angles $(T, D_h/2)$; rows sit at positions offset … offset + T − 1.


# %%
def rotation(t, dh, offset, theta):
    inv_freq = theta ** (-jnp.arange(0, dh, 2) / dh)  # (Dh/2,)
    positions = offset.astype(jnp.float64) + jnp.arange(t)  # (T,)
    return jnp.exp(1j * positions[:, None] * inv_freq[None, :])  # e^{iφ} (T, Dh/2)


def as_complex(x):
    half = x.shape[-1] // 2
    return x[..., :half] + 1j * x[..., half:]


def as_real(z):
    return jnp.concatenate([z.real, z.imag], axis=-1)


def rope_by_hand(x, offset, g, theta):
    e = rotation(x.shape[-2], x.shape[-1], offset, theta)
    e = e.reshape((1,) * (x.ndim - 2) + e.shape)  # (1.., T, Dh/2)
    return as_real(as_complex(x) * e), (as_real(as_complex(g) * e.conj()),)


x = jnp.asarray(np_rng.standard_normal((2, 3, 7, 8)))
offset = jnp.int32(5)
four_ways(ops.rope, rope_by_hand, (x, offset), {"theta": 10000.0}, ["x"])

y = ops.rope(x, offset)
_, vjp = jax.vjp(lambda x: ops.rope(x, offset), x)
assert relative_error(vjp(y)[0], x) < 1e-14  # Rᵀ R x = x: the backward undoes the forward
q, k = (jnp.asarray(np_rng.standard_normal((1, 8))) for _ in range(2))
score = lambda m, n: float(jnp.vdot(ops.rope(q, m), ops.rope(k, n)))
print(f"<R_3 q, R_1 k> = {score(3, 1):.12f};  <R_40 q, R_38 k> = {score(40, 38):.12f}")
assert abs(score(3, 1) - score(40, 38)) < 1e-12

# %% [markdown]
# ## 3. SwiGLU
#
# The MLP of a Llama block is $\operatorname{down}(\operatorname{silu}(a) \odot b)$ with
# $a = x W_{\text{gate}}^\top$, $b = x W_{\text{up}}^\top$ — two projections of the same input
# (a fan-out: their input gradients add). The elementwise part is
# $y = s(a) \odot b$ with $s(a) = a\,\sigma(a)$. Its Jacobian is diagonal in each argument:
# $$\partial y/\partial b = s(a),\qquad
#   \partial y/\partial a = s'(a)\, b,\quad
#   s'(a) = \sigma(a) + a\,\sigma(a)(1-\sigma(a)) = \sigma(a)\big(1 + a(1-\sigma(a))\big),$$
# so $da = g \odot b \odot s'(a)$ and $db = g \odot s(a)$ (shapes: all alike).


# %%
def swiglu_by_hand(a, b, g):
    sig = 1 / (1 + jnp.exp(-a))
    return a * sig * b, (g * b * sig * (1 + a * (1 - sig)), g * a * sig)


a = jnp.asarray(np_rng.standard_normal((4, 24)) * 3)
b = jnp.asarray(np_rng.standard_normal((4, 24)))
four_ways(ops.swiglu, swiglu_by_hand, (a, b), {}, ["a", "b"])

# %% [markdown]
# ## 4. Forward mode too
#
# Each op also carries a hand JVP (`op.forward_mode`): RMSNorm's is the same symmetric map
# $r(I - \hat x\hat x^\top/D)$ applied to the tangent, RoPE's is the rotation by $+\varphi$ of
# the tangent, SwiGLU's the product rule. Against `jax.jvp` of the reference:

# %%
for op, arrays, static in (
    (ops.rms_norm, (x[0, 0], jnp.asarray(np_rng.uniform(0.5, 1.5, 8))), {"eps": 1e-6}),
    (ops.rope, (x, offset), {"theta": 500000.0}),
    (ops.swiglu, (a, b), {}),
):
    floats = arrays[:2] if op is not ops.rope else arrays[:1]
    rest = arrays[len(floats) :]
    tangents = tuple(jnp.asarray(np_rng.standard_normal(f.shape)) for f in floats)
    hand = jax.jvp(
        lambda *f, op=op, rest=rest, static=static: op.forward_mode(*f, *rest, **static),
        floats,
        tangents,
    )
    ref = jax.jvp(
        lambda *f, op=op, rest=rest, static=static: op.reference(*f, *rest, **static),
        floats,
        tangents,
    )
    err = relative_error(hand[1], ref[1])
    print(f"{op.name:<9} hand JVP vs jax.jvp of the reference: rel err {err:.1e}")
    assert err < TOL_EXACT

# %% [markdown]
# ## 5. The whole block, composed
#
# `funcbp.nn.llama` builds the model from these ops and combinators only: pre-norm residual
# blocks (each residual adds its branch's $dx$ to the skip's), a fused $q|k|v$ projection split
# into $H$ query and $G$ key/value heads, RoPE on $q$ and $k$, grouped causal attention, the
# `gate_up` fan-out into SwiGLU, a final RMSNorm and an untied head. No model backward is
# written anywhere. Every parameter's gradient — through `jax.grad` of the custom VJPs
# ("hand") and through the explicit reverse pass that calls each `bwd` directly ("explicit")
# — against `jax.grad` of the plain references:

# %%
from funcbp.nn.llama import LlamaConfig, llama  # noqa: E402

config = LlamaConfig(vocab=17, context=8, layers=2, width=16, heads=4, kv_heads=2, hidden=24)
model = llama(config)
_, params, state = model.init(jax.random.key(0), (8,), jnp.float64)
params = jax.tree.map(lambda p: p + 0.3 * jnp.asarray(np_rng.standard_normal(p.shape)), params)
ids = jnp.asarray(np_rng.integers(0, 17, (2, 9)))
for r in check.check_model(model, params, state, ids[:, :-1], ids[:, 1:], dtypes=("float64",)):
    print(f"{r.a:>8} vs autodiff: worst relative error {r.worst_rel:.1e} over {len(r.leaves)} "
          f"parameter arrays")  # fmt: skip
    assert r.worst_rel < 1e-10
