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
# # 04 — Convolution, batch norm, layer norm and attention by hand
#
# Notebook 01 derived the linear layer. Here the same treatment for the four layers whose
# backward passes are the least obvious: a strided, padded **2-D convolution**,
# **batch norm** in training mode, **layer norm** and causal **scaled dot-product
# attention**. For each one:
#
# 1. the vector–Jacobian product is derived in markdown, with shapes;
# 2. the formula is coded *in this notebook* in a few lines of `jax.numpy` — independent
#    of funcbp's own backward (no `lax.conv`, no shared helper);
# 3. four gradients are compared in float64: **notebook** formula, **funcbp** (`jax.vjp`
#    through the op's `jax.custom_vjp`, i.e. its hand `bwd`), **jax.grad** of the op's
#    plain reference (`funcbp.ops.REGISTRY[name].reference`: the ground truth) and
#    **central finite differences** of that reference (step $\varepsilon = 10^{-6}$);
# 4. `assert`s make a wrong formula fail the test suite, which re-executes this notebook:
#    notebook, funcbp and `jax.grad` must agree to $10^{-12}$ (float64 rounding is
#    $\sim 10^{-16}$), finite differences to $10^{-7}$ (their truncation error
#    $O(\varepsilon^2)$ and rounding error $O(10^{-16}\lvert L\rvert/\varepsilon)$ put them
#    near $10^{-9}$ here; funcbp's own finite-difference tolerance is $10^{-6}$).
#
# Every comparison uses the scalar $L(a) = \langle f(a), U\rangle = \sum f(a) \odot U$
# for a random normal cotangent $U$ with the shape of the output, so $\nabla_a L = J^\top U$
# is exactly the VJP the backward computes (a random $U$, never all ones, which would hide
# a transposed or wrongly summed formula). Errors are relative,
# $\lVert g - g_{\text{ref}}\rVert / \lVert g_{\text{ref}}\rVert$.

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


from funcbp.check import finite_difference_grad, relative_error
from funcbp.ops import REGISTRY
from funcbp.ops.conv import conv2d_bwd

FD_EPS = 1e-6  # central-difference step, float64
TOL_EXACT = 1e-12  # notebook / funcbp vs jax.grad: the same math, float64 rounding only
TOL_FD = 1e-7  # vs finite differences: truncation O(ε²) plus rounding O(1e-16·|L|/ε) ≈ 1e-9
COMPARISONS = {  # column: (gradient, reference gradient, tolerance)
    "notebook vs jax.grad": ("notebook", "jax.grad", TOL_EXACT),
    "funcbp vs jax.grad": ("funcbp", "jax.grad", TOL_EXACT),
    "notebook vs funcbp": ("notebook", "funcbp", TOL_EXACT),
    "notebook vs finite diff": ("notebook", "finite diff", TOL_FD),
    "jax.grad vs finite diff": ("jax.grad", "finite diff", TOL_FD),
}
np_rng = np.random.default_rng(0)  # cotangents from NumPy: no PRNG compiled per shape


def gradient_sources(name, by_hand, arrays, static, u):
    # The four gradients of L = <op(arrays), u>, in one jitted program (one compile per shape).
    # by_hand(*arrays, u, **static) -> (output, grads): the notebook's forward and formula.
    op = REGISTRY[name]
    argnums = tuple(range(len(arrays)))

    def run(arrays, u):
        y, grads = by_hand(*arrays, u, **static)
        pairing = lambda *a: jnp.vdot(op.reference(*a, **static), u)  # L = <f(a), U>
        out, vjp = jax.vjp(lambda *a: op(*a, **static), *arrays)  # funcbp's custom_vjp
        sources = {
            "notebook": grads,
            "funcbp": vjp(u),
            "jax.grad": jax.grad(pairing, argnums=argnums)(*arrays),
            "finite diff": finite_difference_grad(pairing, arrays, argnums, eps=FD_EPS),
        }
        return y, out, sources

    return jax.jit(run)(tuple(arrays), u)


def compare(name, by_hand, arrays, static, grad_names, show=True):
    # Draw a random cotangent, compute the four gradients, print a table of relative errors.
    # Returns {column: worst relative error over the op's inputs}.
    out = jax.eval_shape(lambda *a: REGISTRY[name].reference(*a, **static), *arrays)
    u = jnp.asarray(np_rng.standard_normal(out.shape))
    y, y_ref, sources = gradient_sources(name, by_hand, arrays, static, u)
    worst = {c: 0.0 for c in COMPARISONS}
    rows = []
    for i, g in enumerate(grad_names):
        errs = [relative_error(sources[a][i], sources[b][i]) for a, b, _ in COMPARISONS.values()]
        worst = {c: max(worst[c], e) for c, e in zip(COMPARISONS, errs, strict=True)}
        rows.append((g, str(tuple(arrays[i].shape)), *errs))
    worst["forward"] = relative_error(y, y_ref)
    if show:
        print(f"{name}  {' '.join(str(tuple(a.shape)) for a in arrays)}  {static}")
        print(f"notebook forward vs the op's reference: rel err {worst['forward']:.2e}\n")
        show_table(["grad", "shape", *COMPARISONS], rows)
    return worst


def check_bounds(worst):
    for c, (_, _, tol) in COMPARISONS.items():
        assert worst[c] < tol, (c, worst[c], tol)
    assert worst["forward"] < TOL_EXACT, worst["forward"]


# %% [markdown]
# ## 1. 2-D convolution
#
# funcbp's `conv2d` is a cross-correlation in NHWC/HWIO layout: $X$ $(N, H, W, C)$,
# kernel $W$ $(K_H, K_W, C, O)$, bias $b$ $(O)$, strides $(s_h, s_w)$ and zero padding
# $(\ell_h, h_h), (\ell_w, h_w)$ ($X^{\mathrm p}$ is the padded input, $H_p = H + \ell_h + h_h$):
#
# $$Y_{n,i,j,o} = b_o + \sum_{p,q,c} X^{\mathrm p}_{n,\; s_h i + p,\; s_w j + q,\; c}\; W_{p,q,c,o},
# \qquad Y \in \mathbb R^{N \times H_O \times W_O \times O},\quad
# H_O = \left\lfloor \tfrac{H_p - K_H}{s_h} \right\rfloor + 1 .$$
#
# **im2col.** Give every output position $m = (n, i, j)$ its input patch as a row:
# $P_{m,(p,q,c)} = X^{\mathrm p}_{n, s_h i + p, s_w j + q, c}$, so
# $P \in \mathbb R^{M \times K}$ with $M = N H_O W_O$ and $K = K_H K_W C$. With the kernel
# reshaped to $W_{\mathrm{mat}} \in \mathbb R^{K \times O}$ the convolution *is a linear
# layer over patches*, $Y_{\mathrm{mat}} = P\, W_{\mathrm{mat}} + \mathbf 1 b^\top$
# $(M \times O)$, and notebook 01's formulas apply:
#
# | gradient | formula | shapes |
# |---|---|---|
# | $\partial L/\partial W$ | $P^\top dY_{\mathrm{mat}} = \sum_{m} P_m \otimes dY_m$ (one outer product per output position, summed over batch and positions) | $(K, M)(M, O) \to (K, O) \to (K_H, K_W, C, O)$ |
# | $\partial L/\partial b$ | $\sum_m dY_m$ (over batch and positions) | $(O)$ |
# | $\partial L/\partial P$ | $dY_{\mathrm{mat}}\, W_{\mathrm{mat}}^\top$, then each entry added back where it was copied from (col2im, the adjoint of im2col: overlapping patches add up) | $(M, O)(O, K) \to (M, K) \to (N, H, W, C)$ |
#
# **$dX$ as a transposed convolution.** Written per spatial axis (rows; columns alike),
# $dX^{\mathrm p}_u = \sum_{i,p \,:\, s i + p = u} dY_i\, W_p$. Dilate $dY$ by the stride
# ($D_{s i} = dY_i$, zeros in between, length $s(H_O - 1) + 1$); then
# $dX^{\mathrm p}_u = \sum_p D_{u-p} W_p = \sum_{p'} D'_{u + p'}\, W_{K_H - 1 - p'}$ with
# $D'$ = $D$ padded by $K_H - 1$ zeros on both sides: a **stride-1 correlation of the
# dilated, padded $dY$ with the kernel flipped in both spatial axes, its $C$ and $O$ axes
# swapped** ($\tilde W_{p,q,o,c} = W_{K_H-1-p,\,K_W-1-q,\,c,\,o}$). Its output has
# $s(H_O-1) + K_H = H_p - r$ rows, where $r = (H_p - K_H) \bmod s$ trailing rows were never
# reached by a window: their gradient is zero. Append $r$ zero rows, crop
# $[\ell, \ell + H)$, and $dX$ has the shape of $X$.
#
# The notebook code below does all of it with slicing, `reshape`, `@` and `jnp.flip` —
# im2col serves the forward, $dW$ and the transposed convolution alike.


# %%
def explicit_pads(padding, spatial, kernel, strides):
    # Any padding conv2d accepts -> ((h_lo, h_hi), (w_lo, w_hi)).
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":  # output ceil(n / s); the odd pixel of padding goes high
        totals = [
            max((-(-n // s) - 1) * s + k - n, 0)
            for n, k, s in zip(spatial, kernel, strides, strict=True)
        ]
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def im2col(xp, kh, kw, sh, sw):
    # padded xp (N, Hp, Wp, C) -> patches (N, HO, WO, KH·KW·C), ordered (p, q, c) like HWIO
    n, hp, wp, c = xp.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    cols = [
        xp[:, p : p + sh * (ho - 1) + 1 : sh, q : q + sw * (wo - 1) + 1 : sw, :]  # (N, HO, WO, C)
        for p in range(kh)
        for q in range(kw)
    ]
    return jnp.stack(cols, axis=3).reshape(n, ho, wo, kh * kw * c)


def conv_by_hand(x, w, b, dy, stride=1, padding="SAME"):
    kh, kw, c, o = w.shape
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    (hlo, hhi), (wlo, whi) = explicit_pads(padding, x.shape[1:3], (kh, kw), (sh, sw))
    xp = jnp.pad(x, ((0, 0), (hlo, hhi), (wlo, whi), (0, 0)))  # (N, Hp, Wp, C)
    patches = im2col(xp, kh, kw, sh, sw)  # (N, HO, WO, K)
    n, ho, wo, k = patches.shape
    P, dY = patches.reshape(-1, k), dy.reshape(-1, o)  # (M, K), (M, O)
    y = (P @ w.reshape(k, o)).reshape(n, ho, wo, o) + b.reshape(1, 1, 1, o)  # forward
    dw = (P.T @ dY).reshape(kh, kw, c, o)  # Σ_m P_m ⊗ dY_m   (KH, KW, C, O)
    db = dY.sum(axis=0)  # (O,)
    # dX: dilate dY by the stride, pad K−1, correlate with the flipped, C/O-swapped kernel
    d = jnp.zeros((n, sh * (ho - 1) + 1, sw * (wo - 1) + 1, o), dy.dtype)
    d = d.at[:, ::sh, ::sw].set(dy)  # (N, sh(HO−1)+1, sw(WO−1)+1, O)
    d = jnp.pad(d, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    w_flip = jnp.flip(w, axis=(0, 1)).swapaxes(2, 3)  # (KH, KW, O, C)
    dxp = im2col(d, kh, kw, 1, 1) @ w_flip.reshape(kh * kw * o, c)  # (N, Hp − r, Wp − r', C)
    r_h, r_w = xp.shape[1] - dxp.shape[1], xp.shape[2] - dxp.shape[2]  # rows no window reached
    dxp = jnp.pad(dxp, ((0, 0), (0, r_h), (0, r_w), (0, 0)))  # their gradient: 0
    dx = dxp[:, hlo : hlo + x.shape[1], wlo : wlo + x.shape[2], :]  # crop the padding
    return y, (dx, dw, db)


# %% [markdown]
# ### Proof by numbers
#
# A case with everything that can go wrong: stride 2 along $H$ (with a trailing row no
# window reaches, $r = 1$), asymmetric padding, a non-square kernel and
# $C \ne O$.

# %%
kx, kw_, kb = jax.random.split(jax.random.key(0), 3)
x = jax.random.normal(kx, (2, 7, 6, 3))  # (N, H, W, C)
w = jax.random.normal(kw_, (3, 2, 3, 4)) / 4  # (KH, KW, C, O)
b = jax.random.normal(kb, (4,))
conv_static = {"stride": (2, 1), "padding": ((1, 0), (0, 1))}
print("H_p = 7 + 1 + 0 = 8, H_O = (8 − 3) // 2 + 1 = 3, r = (8 − 3) mod 2 = 1\n")
worst_conv = compare("conv2d", conv_by_hand, (x, w, b), conv_static, ("dX", "dW", "db"))
check_bounds(worst_conv)

# %% [markdown]
# ### $P^\top dY$ is a sum of per-position outer products; $dX$ two ways
#
# The same $dW$ as an explicit Python sum of $M$ outer products $P_m \otimes dY_m$ (one
# per output position, over the batch too), and $dX$ by col2im — scattering
# $dP = dY W_{\mathrm{mat}}^\top$ back, patch entry by patch entry — instead of the
# transposed convolution. Both against funcbp's `conv2d_bwd` called directly on its
# residuals $(X, W)$.

# %%
(hlo, hhi), (wlo, whi) = conv_static["padding"]  # stride (2, 1), kernel (3, 2)


@jax.jit
def dw_and_dx_by_loops(x, w, dy):
    xp = jnp.pad(x, ((0, 0), (hlo, hhi), (wlo, whi), (0, 0)))  # (N, 8, 7, C)
    P = im2col(xp, 3, 2, 2, 1).reshape(-1, 3 * 2 * 3)  # (M, K) = (36, 18)
    dY = dy.reshape(-1, 4)  # (M, O)
    dw = sum(jnp.outer(P[m], dY[m]) for m in range(P.shape[0]))  # Σ_m P_m ⊗ dY_m
    dP = (dY @ w.reshape(-1, 4).T).reshape(2, 3, 6, 3, 2, 3)  # (N, HO, WO, KH, KW, C)
    dxp = jnp.zeros(xp.shape)
    for p in range(3):
        for q in range(2):  # patch entry (p, q) of position (i, j) came from xp[:, 2i + p, j + q]
            dxp = dxp.at[:, p : p + 2 * 2 + 1 : 2, q : q + 6, :].add(dP[:, :, :, p, q, :])
    return dw.reshape(w.shape), dxp[:, hlo : hlo + 7, wlo : wlo + 6, :], P.shape


dy = jnp.asarray(np_rng.standard_normal((2, 3, 6, 4)))  # (N, HO, WO, O)
dw_outer, dx_col2im, (M, K) = dw_and_dx_by_loops(x, w, dy)
_, (dx_nb, dw_nb, _) = jax.jit(lambda *a: conv_by_hand(*a, **conv_static))(x, w, b, dy)
dx_lib, dw_lib, _ = conv2d_bwd((x, w), dy, **conv_static)  # funcbp's hand bwd
e = {
    "Σ_m P_m ⊗ dY_m vs funcbp dW": relative_error(dw_outer, dw_lib),
    "Pᵀ dY (notebook) vs funcbp dW": relative_error(dw_nb, dw_lib),
    "col2im dX vs funcbp dX": relative_error(dx_col2im, dx_lib),
    "transposed conv dX (notebook) vs funcbp dX": relative_error(dx_nb, dx_lib),
}
show_table(["comparison", "rel err"], list(e.items()))
print(f"\n{M} output positions (N·HO·WO = 2·3·6), each a rank-one (K, O) = {(K, 4)} term")
assert max(e.values()) < TOL_EXACT, e


# %% [markdown]
# ## 2. Batch norm (training mode)
#
# $X$ has shape $(\text{batch}\ldots, C)$; each channel is normalised with the statistics
# of its own $n = \prod(\text{batch dims})$ values (e.g. $n = N H W$ for an NHWC image
# batch). Within one channel, with values $x_1, \dots, x_n$:
#
# $$\mu = \tfrac1n \textstyle\sum_k x_k,\quad \sigma^2 = \tfrac1n \sum_k (x_k - \mu)^2,\quad
# r = (\sigma^2 + \varepsilon)^{-1/2},\quad \hat x_k = (x_k - \mu)\, r,\quad
# y_k = \gamma \hat x_k + \beta .$$
#
# Every $x_l$ moves its own $\hat x_l$ **and** $\mu$ and $\sigma^2$, hence every $\hat x_k$
# of the channel. With $\partial\mu/\partial x_l = 1/n$ and
# $\partial\sigma^2/\partial x_l = 2(x_l - \mu)/n$ (the $\mu$-dependence of $\sigma^2$
# drops out since $\sum_k (x_k - \mu) = 0$):
#
# $$\frac{\partial \hat x_k}{\partial x_l} = r\Big(\delta_{kl} \;-\; \underbrace{\tfrac1n}_{\text{via } \mu}
# \;-\; \underbrace{\tfrac1n \hat x_k \hat x_l}_{\text{via } \sigma^2}\Big) .$$
#
# Contracting with $dy_k\,\gamma$ (γ is constant within a channel, so it factors out):
#
# $$\boxed{\;dX = \frac{\gamma\, r}{n}\Big(n\, dY - \textstyle\sum dY - \hat X \odot \sum (dY \odot \hat X)\Big)\;}
# \qquad d\gamma = \textstyle\sum dY \odot \hat X, \qquad d\beta = \sum dY,$$
#
# all sums over the $n$ batch entries of each channel: $dX$ $(\text{batch}\ldots, C)$,
# $d\gamma, d\beta$ $(C)$, the per-channel sums $(1, \ldots, 1, C)$. The $n \times n$
# Jacobian per channel is never formed: two reductions and one elementwise pass.


# %%
def lift(v, ndim):  # (C,) -> (1, ..., 1, C): explicit, rank promotion raises here
    return v.reshape((1,) * (ndim - 1) + v.shape)


def bn_by_hand(x, gamma, beta, dy, eps=1e-5):
    axes = tuple(range(x.ndim - 1))  # the batch axes: statistics per channel
    n = x.size // x.shape[-1]
    mu = x.mean(axis=axes, keepdims=True)  # (1, ..., 1, C)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    r = 1 / jnp.sqrt(var + eps)
    xhat = (x - mu) * r  # (batch..., C)
    y = lift(gamma, x.ndim) * xhat + lift(beta, x.ndim)
    sum_dy = dy.sum(axis=axes, keepdims=True)  # (1, ..., 1, C)
    sum_dy_xhat = (dy * xhat).sum(axis=axes, keepdims=True)
    dx = lift(gamma, x.ndim) * r / n * (n * dy - sum_dy - xhat * sum_dy_xhat)
    return y, (dx, sum_dy_xhat.reshape(-1), sum_dy.reshape(-1))


kx, kg, kb = jax.random.split(jax.random.key(1), 3)
x = 1.5 * jax.random.normal(kx, (4, 3, 3, 2)) + 0.7  # an NHWC batch: n = 36 per channel
gamma = jax.random.uniform(kg, (2,), minval=0.5, maxval=2.0)
beta = jax.random.normal(kb, (2,))
worst_bn = compare("batch_norm", bn_by_hand, (x, gamma, beta), {"eps": 1e-5}, ("dX", "dγ", "dβ"))
check_bounds(worst_bn)

# %% [markdown]
# ### Why all three terms
#
# A common mistake is to treat $\mu$ and $\sigma^2$ as constants, $dX = \gamma r\, dY$, or
# to drop one of the two correction terms. How wrong is that? It depends on the upstream
# gradient, and that is the lesson:
#
# * with a **random normal** cotangent, $\sum dY$ and $\sum dY \odot \hat X$ are sums of $n$
#   independent zero-mean terms, so the dropped terms are only $O(1/\sqrt n)$ of $n\,dY$:
#   the error *shrinks* with the batch — a gradient check with large batches and noise
#   cotangents would barely see it (funcbp's sampler draws 3 to 45 values per channel);
# * with the gradient of a real loss, $L = \tfrac12 \lVert Y - T \rVert^2$ (so
#   $dY = \gamma \hat X + \beta - T$, correlated with $\hat X$ and with a non-zero mean),
#   $\tfrac1n \sum dY \approx \beta - \bar T$ and $\tfrac1n\sum dY \odot \hat X \approx \gamma$:
#   the error stays $O(1)$ at every batch size.
#
# Below: the relative error of each truncated $dX$ against `jax.grad` of funcbp's
# `batch_norm` reference, for $n$ from 4 to 1024 values per channel (RMS over 32 random
# draws of the cotangent or target).

# %%
VARIANTS = {  # name: dX for (c, n·dY, Σ dY, X̂ ⊙ Σ dY ⊙ X̂) with c = γ r / n
    "all three terms": lambda c, a, s1, s2: c * (a - s1 - s2),
    "no mean term (−Σ dY)": lambda c, a, s1, s2: c * (a - s2),
    "no variance term (−X̂ Σ dY X̂)": lambda c, a, s1, s2: c * (a - s1),
    "μ, σ² as constants: γ r dY": lambda c, a, s1, s2: c * a,
}
SIZES = [4, 16, 64, 256, 1024]
DRAWS = 32


def truncated_errors(x, gamma, beta, targets, noise):
    # relative error of each variant vs jax.grad of the reference, for both cotangents
    ref = REGISTRY["batch_norm"].reference
    y = ref(x, gamma, beta)

    def errors(dy):
        true = jax.grad(lambda x: jnp.vdot(ref(x, gamma, beta), dy))(x)
        n = x.shape[0]
        mu = x.mean(axis=0, keepdims=True)
        r = 1 / jnp.sqrt(((x - mu) ** 2).mean(axis=0, keepdims=True) + 1e-5)
        xhat = (x - mu) * r
        terms = (
            lift(gamma, 2) * r / n,
            n * dy,
            dy.sum(axis=0, keepdims=True),
            xhat * (dy * xhat).sum(axis=0, keepdims=True),
        )
        return jnp.stack(
            [jnp.linalg.norm(v(*terms) - true) / jnp.linalg.norm(true) for v in VARIANTS.values()]
        )

    loss_grad = jax.vmap(lambda t: errors(y - t))(targets)  # dY of ½‖Y − T‖²
    random = jax.vmap(errors)(noise)
    rms = lambda e: jnp.sqrt(jnp.mean(e**2, axis=0))
    return rms(random), rms(loss_grad)


C = 3
gamma = jnp.array([0.6, 1.0, 1.7])
beta = jnp.array([0.5, -1.0, 0.3])
err_random, err_loss = np.zeros((len(SIZES), len(VARIANTS))), np.zeros((len(SIZES), len(VARIANTS)))
for row, n in enumerate(SIZES):
    x = 1.5 * np_rng.standard_normal((n, C)) + np_rng.standard_normal(C)[None, :]
    targets, noise = np_rng.standard_normal((2, DRAWS, n, C))
    e_r, e_l = jax.jit(truncated_errors)(x, gamma, beta, targets, noise)
    err_random[row], err_loss[row] = e_r, e_l

names = list(VARIANTS)
show_table(
    ["n", *[f"{v} [random / loss]" for v in names[1:]]],
    [
        (n, *[f"{err_random[i, j]:.2e} / {err_loss[i, j]:.2e}" for j in range(1, len(names))])
        for i, n in enumerate(SIZES)
    ],
)
print(f"\nall three terms: worst rel err {max(err_random[:, 0].max(), err_loss[:, 0].max()):.2e}")

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
colors = ["k", "tab:blue", "tab:orange", "tab:red"]
for ax, err, title in (
    (ax0, err_random, "random normal cotangent dY"),
    (ax1, err_loss, "dY of a real loss ½‖Y − T‖²"),
):
    for j, (name, color) in enumerate(zip(names, colors, strict=True)):
        ax.loglog(SIZES, np.maximum(err[:, j], 1e-18), "o-", color=color, label=name)
    ax.set(xlabel="n (values per channel)", title=title)
ax0.loglog(SIZES, [err_random[0, 3] * (SIZES[0] / n) ** 0.5 for n in SIZES], "k:", label="∝ 1/√n")
ax0.set_ylabel("relative error of dX vs jax.grad")
ax0.legend(fontsize=8)
fig.suptitle("Batch norm: dropping the terms that come from μ and σ²")
fig.tight_layout()
plt.show()

assert max(err_random[:, 0].max(), err_loss[:, 0].max()) < TOL_EXACT  # the full formula
assert err_loss[:, 1:].min() > 0.1  # a real loss: every truncation is O(1) wrong, any n
slope = np.polyfit(np.log(SIZES), np.log(err_random[:, 3]), 1)[0]
print(f"random cotangent, μ/σ² as constants: error ∝ n^{slope:.2f}")
assert -0.7 < slope < -0.3 and err_random[:, 1:].min() > 1e-3


# %% [markdown]
# ## 3. Layer norm
#
# The same normalisation, per row over the last axis (the $D$ features of one token or
# sample): $X$ $(\ldots, D)$, $\gamma, \beta$ $(D)$. Per row, $\mu$, $\sigma^2$, $r$ and
# $\hat x$ as above with $n = D$, and the same Jacobian
# $\partial\hat x_i/\partial x_j = r(\delta_{ij} - \tfrac1D - \tfrac1D \hat x_i \hat x_j)$
# $(D \times D)$. One difference: $\gamma$ now varies *along* the normalised axis, so it
# cannot be factored out; it enters through $d\hat X = dY \odot \gamma$:
#
# $$\boxed{\;dX = \frac{r}{D}\Big(D\, d\hat X - \textstyle\sum_{i} d\hat X_{i} - \hat X \odot \sum_{i} d\hat X_{i} \hat X_{i}\Big),
# \quad d\hat X = dY \odot \gamma\;}$$
#
# with the sums over each row's $D$ entries $(\ldots, 1)$; $d\gamma = \sum dY \odot \hat X$
# and $d\beta = \sum dY$ sum over all leading (row) axes, $(D)$. First the Jacobian itself
# against `jax.jacobian` for one row, then the VJP.


# %%
def ln_by_hand(x, gamma, beta, dy, eps=1e-5):
    lead = tuple(range(x.ndim - 1))  # the rows: γ, β gradients sum over them
    d = x.shape[-1]
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    r = 1 / jnp.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = (x - mu) * r  # (..., D)
    y = lift(gamma, x.ndim) * xhat + lift(beta, x.ndim)
    dxhat = dy * lift(gamma, x.ndim)  # (..., D)
    dx = (
        r
        / d
        * (d * dxhat - dxhat.sum(-1, keepdims=True) - xhat * (dxhat * xhat).sum(-1, keepdims=True))
    )
    return y, (dx, (dy * xhat).sum(axis=lead), dy.sum(axis=lead))


row = jnp.asarray(np_rng.standard_normal(6)) * 2 + 1  # one row, D = 6
eps = 1e-5
normalise = lambda v: (v - v.mean()) / jnp.sqrt(v.var() + eps)
xh, r = normalise(row), 1 / jnp.sqrt(row.var() + eps)
J = r * (jnp.eye(6) - 1 / 6 - jnp.outer(xh, xh) / 6)  # ∂x̂_i/∂x_j   (D, D)
e_jac = relative_error(J, jax.jit(jax.jacobian(normalise))(row))
print(f"Jacobian r(δ_ij − 1/D − x̂_i x̂_j / D) vs jax.jacobian: {e_jac:.2e}")
# x̂ ignores shifts of the row (J·1 = 0) and, up to ε, scalings: J·x̂ = r ε/(σ² + ε) x̂
e_shift = float(jnp.abs(J @ jnp.ones(6)).max())
e_scale = relative_error(J @ xh, r * eps / (row.var() + eps) * xh)
print(f"J·1 = {e_shift:.1e};  J·x̂ vs r ε/(σ²+ε) x̂: rel err {e_scale:.1e}\n")
assert e_jac < TOL_EXACT and e_shift < 1e-14 and e_scale < 1e-6

kx, kg, kb = jax.random.split(jax.random.key(2), 3)
x = 2.0 * jax.random.normal(kx, (2, 5, 6)) - 0.5  # (batch, tokens, D)
gamma = jax.random.uniform(kg, (6,), minval=0.5, maxval=2.0)
beta = jax.random.normal(kb, (6,))
worst_ln = compare("layer_norm", ln_by_hand, (x, gamma, beta), {"eps": eps}, ("dX", "dγ", "dβ"))
check_bounds(worst_ln)


# %% [markdown]
# ## 4. Scaled dot-product attention
#
# funcbp's `attention(q, k, v, causal)`: $Q$ $(\ldots, T, D)$, $K$ $(\ldots, S, D)$,
# $V$ $(\ldots, S, D_v)$ with any shared leading axes (batch, heads):
#
# $$Z = \frac{Q K^\top}{\sqrt D}\;(T \times S), \qquad
# P = \operatorname{softmax}_{\text{rows}}(Z + \text{mask}), \qquad O = P V \;(T \times D_v).$$
#
# Causal convention: query $i$ sees keys $j \le i + (S - T)$ — the queries are the *last*
# $T$ of $S$ positions (a KV cache), the usual lower triangle when $S = T$. Masked scores
# are set to a large negative number (funcbp: half the dtype's minimum; the notebook code
# uses $-\infty$), so $P_{ij} = 0$ exactly there. The backward, step by step:
#
# | step | formula | shapes |
# |---|---|---|
# | $O = PV$ | $dV = P^\top dO$, $\;dP = dO\, V^\top$ | $(S, T)(T, D_v)$; $(T, D_v)(D_v, S)$ |
# | row softmax, Jacobian $\operatorname{diag}(p) - p p^\top$ | $dZ_{ij} = P_{ij}\big(dP_{ij} - \sum_l P_{il}\, dP_{il}\big)$ | $(T, S)$ |
# | the row term | $\sum_l P_{il}\, dP_{il} = \sum_l P_{il} \sum_e dO_{ie} V_{le} = \sum_e dO_{ie} O_{ie} = \delta_i$ | $(T, 1)$ |
# | $Z = QK^\top/\sqrt D$ | $dQ = dZ\, K / \sqrt D$, $\;dK = dZ^\top Q / \sqrt D$ | $(T, S)(S, D)$; $(S, T)(T, D)$ |
#
# So $dZ = P \odot (dP - \operatorname{rowsum}(dO \odot O))$: the row term costs $O(D_v)$
# per query from the output instead of $O(S)$ from $P \odot dP$. Masked entries have
# $P_{ij} = 0$, hence $dZ_{ij} = 0$: no gradient flows to keys a query cannot see. (funcbp
# keeps $Q, K, V, O$ and the row log-sum-exp, and recomputes $P$; the notebook simply
# recomputes everything.)


# %%
def attn_by_hand(q, k, v, do, causal=True):
    # grouped heads (GQA): q (..., H, T, D), k, v (..., G, S, ·); query head h reads kv
    # head h // (H/G), so k, v are repeated over each group and dK, dV summed back
    r = q.shape[-3] // k.shape[-3] if q.ndim >= 3 else 1
    g_shape = k.shape[:-3] + (k.shape[-3], r) + k.shape[-2:] if r > 1 else None
    k, v = (jnp.repeat(a, r, axis=-3) if r > 1 else a for a in (k, v))
    t, s, d = q.shape[-2], k.shape[-2], q.shape[-1]
    z = jnp.einsum("...td,...sd->...ts", q, k) / np.sqrt(d)  # (..., T, S)
    if causal:
        visible = jnp.arange(s)[None, :] <= jnp.arange(t)[:, None] + (s - t)  # (T, S)
        z = jnp.where(visible.reshape((1,) * (z.ndim - 2) + (t, s)), z, -jnp.inf)
    p = jnp.exp(z - z.max(axis=-1, keepdims=True))
    p = p / p.sum(axis=-1, keepdims=True)  # (..., T, S), exactly 0 where masked
    o = jnp.einsum("...ts,...se->...te", p, v)  # (..., T, Dv)
    dv = jnp.einsum("...ts,...te->...se", p, do)  # Pᵀ dO   (..., S, Dv)
    dp = jnp.einsum("...te,...se->...ts", do, v)  # dO Vᵀ   (..., T, S)
    dz = p * (dp - (do * o).sum(axis=-1, keepdims=True))  # P ⊙ (dP − δ)
    dq = jnp.einsum("...ts,...sd->...td", dz, k) / np.sqrt(d)  # (..., T, D)
    dk = jnp.einsum("...ts,...td->...sd", dz, q) / np.sqrt(d)  # (..., S, D)
    if r > 1:  # each kv head's gradient sums over the query heads that read it
        dk = dk.reshape(g_shape).sum(axis=-3)
        dv = dv.reshape(g_shape[:-1] + dv.shape[-1:]).sum(axis=-3)
    return o, (dq, dk, dv)


kq, kk, kv = jax.random.split(jax.random.key(3), 3)
q = 0.7 * jax.random.normal(kq, (2, 4, 3))  # (heads, T, D): 4 queries
k = 0.7 * jax.random.normal(kk, (2, 6, 3))  # (heads, S, D): 6 keys (2 cached)
v = jax.random.normal(kv, (2, 6, 2))  # (heads, S, Dv)
worst_attn = compare("attention", attn_by_hand, (q, k, v), {"causal": True}, ("dQ", "dK", "dV"))
check_bounds(worst_attn)

# the row term two ways, and no gradient through masked entries
do = jnp.asarray(np_rng.standard_normal((2, 4, 2)))
z = jnp.einsum("htd,hsd->hts", q, k) / np.sqrt(3)
visible = jnp.arange(6)[None, :] <= jnp.arange(4)[:, None] + 2
p = jax.nn.softmax(jnp.where(visible[None], z, -jnp.inf), axis=-1)
o, dp = p @ v, do @ v.swapaxes(-1, -2)
e_delta = relative_error((p * dp).sum(-1), (do * o).sum(-1))
dz = p * (dp - (do * o).sum(-1, keepdims=True))
print(
    f"\nrowsum(P ⊙ dP) vs rowsum(dO ⊙ O): {e_delta:.2e};  "
    f"max |dZ| on masked entries: {float(jnp.abs(jnp.where(visible[None], 0.0, dz)).max())}"
)
print("visible keys per query (row i sees j ≤ i + S − T):\n", np.asarray(visible).astype(int))
assert e_delta < TOL_EXACT and not jnp.any(jnp.where(visible[None], 0.0, dz))

# %% [markdown]
# ## 5. Random shapes
#
# The hand-picked cases above could hide a formula that only works for one configuration.
# Each op's own sampler (`REGISTRY[name].sample`) draws random shapes, strides, paddings
# (`"SAME"`, `"VALID"`, symmetric and asymmetric explicit), `eps` and causal flags; the
# notebook formulas must meet the same bounds on every draw. One dot per (draw, input)
# below; exact zeros (the two computations rounded identically) sit on the floor.

# %%
BY_HAND = {
    "conv2d": (conv_by_hand, ("dX", "dW", "db")),
    "batch_norm": (bn_by_hand, ("dX", "dγ", "dβ")),
    "layer_norm": (ln_by_hand, ("dX", "dγ", "dβ")),
    "attention": (attn_by_hand, ("dQ", "dK", "dV")),
}
SEEDS = (1, 2)
results, drawn = {}, {}
for name, (fn, grad_names) in BY_HAND.items():
    for seed in SEEDS:
        arrays, static = REGISTRY[name].sample(jax.random.key(seed), jnp.float64)
        drawn.setdefault(name, []).append(
            " ".join(str(tuple(a.shape)) for a in arrays)
            + "".join(f" {k}={v}" for k, v in static.items())
        )
        results.setdefault(name, []).append(
            compare(name, fn, arrays, static, grad_names, show=False)
        )
results["conv2d"].append(worst_conv)
results["batch_norm"].append(worst_bn)
results["layer_norm"].append(worst_ln)
results["attention"].append(worst_attn)

show_table(
    ["op", *COMPARISONS],
    [(name, *[max(r[c] for r in rs) for c in COMPARISONS]) for name, rs in results.items()],
)
print("\n(worst over the hand-picked case and the draws:)")
for name, d in drawn.items():
    print(f"  {name:10s} " + " | ".join(d))

FLOOR = 1e-18
shown = ["notebook vs jax.grad", "funcbp vs jax.grad", "notebook vs finite diff"]
fig, ax = plt.subplots(figsize=(8, 3.8))
for j, (c, color) in enumerate(zip(shown, ["tab:blue", "tab:green", "tab:purple"], strict=True)):
    for i, rs in enumerate(results.values()):
        errs = np.maximum([r[c] for r in rs], FLOOR)
        ax.scatter(
            i + (j - 1) * 0.2 + np.linspace(-0.05, 0.05, len(errs)),
            errs,
            s=18,
            color=color,
            label=c if i == 0 else None,
        )
    ax.axhline(COMPARISONS[c][2], color=color, ls="--", lw=1)
ax.set_yscale("log")
ax.set_ylim(FLOOR / 3, 1e-5)
ax.set_yticks(
    [FLOOR, *(10.0**k for k in range(-16, -5, 2))],
    ["0 (exact)", *(f"$10^{{{k}}}$" for k in range(-16, -5, 2))],
)
ax.set_xticks(range(len(results)), list(results))
ax.set(
    ylabel="worst relative error over the inputs",
    title="Notebook formulas and funcbp vs jax.grad and finite differences (float64)",
)
ax.legend(fontsize=8, loc="upper left")
fig.tight_layout()
plt.show()
for rs in results.values():
    for r in rs:
        check_bounds(r)

# %% [markdown]
# ## Summary
#
# | op | the VJP in one line |
# |---|---|
# | conv2d | $dW = P^\top dY$ (im2col patches: a sum of per-position outer products), $db = \sum dY$, $dX$ = stride-1 correlation of the stride-dilated, $(K-1)$-padded $dY$ with the flipped, $C \leftrightarrow O$-swapped kernel, cropped |
# | batch norm | $dX = \frac{\gamma r}{n}\big(n\,dY - \sum dY - \hat X \sum dY \odot \hat X\big)$ over the batch axes per channel |
# | layer norm | the same over the feature axis, with $d\hat X = dY \odot \gamma$ inside the sums |
# | attention | $dV = P^\top dO$, $dZ = P \odot (dO V^\top - \operatorname{rowsum}(dO \odot O))$, $dQ = dZ K/\sqrt D$, $dK = dZ^\top Q/\sqrt D$ |
#
# Coded independently here, each agrees with funcbp's hand backward and with `jax.grad`
# of the plain reference to float64 rounding, and with central finite differences to
# their truncation error — on hand-picked and on randomly drawn shapes. For batch norm,
# the two terms coming from $\mu$ and $\sigma^2$ are not optional: with the gradient of a
# real loss, dropping either is wrong by $O(1)$ at any batch size.
