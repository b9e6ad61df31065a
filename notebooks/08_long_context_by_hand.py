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
# # Long context and large vocabularies by hand
#
# Two places where autodiff keeps far more than the gradient needs:
#
# * **attention** at long context: $P = \operatorname{softmax}(QK^\top/\sqrt d)$ is $T \times S$,
#   and `jax.grad` of the plain formula keeps it (and more) for the backward;
# * **the output layer** over a large vocabulary: the logits $Z = XW$ are $N \times V$
#   (8192 tokens × 32768 words = 1 GiB in float32).
#
# Both gradients can be computed *block by block* from a few numbers per row. This notebook
# derives the blockwise forward (online softmax) and the FlashAttention-2 backward, and the
# chunked linear cross-entropy gradient; codes each in a few lines of `jnp`; and checks them
# against `funcbp.ops.flash_attention` / `funcbp.ops.linear_cross_entropy`, `jax.grad` of the
# plain reference and central finite differences, in float64.
#
# Run it as a script (`python notebooks/08_long_context_by_hand.py`) or open the paired
# `08_long_context_by_hand.ipynb`.

# %%
import functools
import math

import jax

jax.config.update("jax_enable_x64", True)  # float64 for the exact comparisons
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from funcbp import check, ops  # noqa: E402
from funcbp.ops.attention import attention_reference  # noqa: E402
from funcbp.ops.linear_cross_entropy import linear_cross_entropy_reference  # noqa: E402

rel = check.relative_error
keys = iter(jax.random.split(jax.random.key(20), 32))

# %% [markdown]
# ## 1. The blockwise forward: online softmax
#
# One query row $q$ against keys $k_1 \dots k_S$ with values $v_1 \dots v_S$:
# $s_j = q \cdot k_j / \sqrt d$ and
# $$o = \frac{\sum_j e^{s_j} v_j}{\sum_j e^{s_j}}, \qquad
#   L = \log \sum_j e^{s_j} \quad\text{(the row's log-sum-exp)}.$$
# Cut the keys into blocks $B_1, B_2, \dots$ and carry three things over the blocks seen so
# far: the running max $m$, the denominator $\ell = \sum_{j \text{ seen}} e^{s_j - m}$ and the
# unnormalised output $a = \sum_{j \text{ seen}} e^{s_j - m} v_j$. A new block with scores
# $s_{B}$ gives the new max $m' = \max(m, \max_{j \in B} s_j)$, and every old term
# $e^{s_j - m}$ becomes $e^{s_j - m'} = e^{m - m'} e^{s_j - m}$, so
# $$\ell' = e^{m - m'}\,\ell + \sum_{j \in B} e^{s_j - m'}, \qquad
#   a' = e^{m - m'}\,a + \sum_{j \in B} e^{s_j - m'} v_j .$$
# After the last block $o = a / \ell$ and $L = m + \log \ell$ — exactly, not approximately:
# the max only keeps every exponent $\le 0$. Only $m, \ell, a$ (one number, one number, one
# row of $D_v$ per query) live across blocks; a $T \times S$ matrix never exists. Causal
# masking sets the scores of keys $j > i + S - T$ to $-\infty$ (a large finite negative here),
# and a block whose every key is masked for every row of the query block adds nothing: it is
# skipped.

# %%
FILL = jnp.finfo(jnp.float64).min / 2  # the masked score: e^{FILL - m} = 0 exactly


def visible(rows, cols, t, s, causal):
    """(rows, cols) mask of the pairs query i may see key j (i + S − T >= j when causal)."""
    return (
        (cols[None, :] <= rows[:, None] + (s - t))
        if causal
        else jnp.ones((len(rows), len(cols)), bool)
    )


def block_scores(q, k, rows, cols, causal):
    s = q[rows] @ k[cols].T / math.sqrt(q.shape[-1])  # (Bq, Bk)
    return jnp.where(visible(rows, cols, q.shape[0], k.shape[0], causal), s, FILL)


def skipped(rows, cols, t, s, causal):
    """Every key of the block comes after the last key visible to the block's last query."""
    return causal and int(cols[0]) > int(rows[-1]) + (s - t)


def blocks(n, b):
    return [np.arange(i, min(i + b, n)) for i in range(0, n, b)]  # ragged last block


@functools.partial(jax.jit, static_argnums=(3, 4))  # one compile: the loops unroll at trace
def flash_forward(q, k, v, causal, b):
    """q (T, d), k (S, d), v (S, dv) -> o (T, dv), L (T,): online softmax over key blocks."""
    o, lse = [], []
    for rows in blocks(q.shape[0], b):
        m = jnp.full(len(rows), FILL)
        l, a = jnp.zeros(len(rows)), jnp.zeros((len(rows), v.shape[1]))
        for cols in blocks(k.shape[0], b):
            if skipped(rows, cols, q.shape[0], k.shape[0], causal):
                continue
            s = block_scores(q, k, rows, cols, causal)  # (Bq, Bk)
            m_new = jnp.maximum(m, s.max(axis=1))
            p = jnp.exp(s - m_new[:, None])
            l = jnp.exp(m - m_new) * l + p.sum(axis=1)
            a = jnp.exp(m - m_new)[:, None] * a + p @ v[cols]
            m = m_new
        o.append(a / l[:, None])
        lse.append(m + jnp.log(l))
    return jnp.concatenate(o), jnp.concatenate(lse)


# %% [markdown]
# Against the plain materialised attention (`attention_reference`) and the row log-sum-exp
# over the visible scores, at ragged sizes: T = 7 queries and S = 10 keys in blocks of 3
# (causal: the queries are the last 7 of the 10 positions), and non-causal.

# %%
T, S, d, dv, B = 7, 10, 3, 2, 3
q = 0.7 * jax.random.normal(next(keys), (T, d))
k = 0.7 * jax.random.normal(next(keys), (S, d))
v = jax.random.normal(next(keys), (S, dv))
do = jax.random.normal(next(keys), (T, dv))  # a random output cotangent, never ones

for causal in (True, False):
    o, lse = flash_forward(q, k, v, causal, B)
    scores = q @ k.T / math.sqrt(d)
    mask = visible(jnp.arange(T), jnp.arange(S), T, S, causal)
    want_lse = jax.nn.logsumexp(jnp.where(mask, scores, -jnp.inf), axis=1)
    print(
        f"causal={causal}: |o - reference| / |reference| = "
        f"{rel(o, attention_reference(q, k, v, causal)):.1e}, L error {rel(lse, want_lse):.1e}"
    )
    assert rel(o, attention_reference(q, k, v, causal)) < 1e-14
    assert rel(lse, want_lse) < 1e-14
    assert rel(o, ops.flash_attention(q, k, v, causal=causal, block_size=B)) < 1e-14

# %% [markdown]
# ## 2. The backward, FlashAttention-2 style
#
# With $P_{ij} = e^{s_{ij} - L_i}$ and $o_i = \sum_j P_{ij} v_j$, for a cotangent $dO$:
#
# * $dV = P^\top dO$, i.e. $dv_j = \sum_i P_{ij}\, do_i$;
# * $dP = dO\, V^\top$, i.e. $dP_{ij} = do_i \cdot v_j$;
# * each row of $P$ is a softmax of the row of $s$, with Jacobian
#   $\operatorname{diag}(p) - p p^\top$, so
#   $dS_{ij} = P_{ij}\,\bigl(dP_{ij} - \sum_l P_{il}\, dP_{il}\bigr)$;
# * the row term needs the whole row, but it is a dot product of two $D_v$-vectors:
#   $$\sum_l P_{il}\, dP_{il} = \sum_l P_{il}\, do_i \cdot v_l = do_i \cdot o_i =: D_i ,$$
#   so $D = \operatorname{rowsum}(dO \odot O)$ is computed once, before any block;
# * finally $s = QK^\top/\sqrt d$ gives $dQ = dS\,K/\sqrt d$ and $dK = dS^\top Q/\sqrt d$.
#
# Every term is a sum over blocks of terms that need only that block: $P_{ij}$ is recomputed
# *exactly* from the kept $L_i$ (no max, no sum: $L$ already normalises the whole row), and
# $$dS_{ij} = P_{ij} \odot (dP_{ij} - D_i)$$
# per block. FlashAttention-2 loops over key blocks $j$ outside (accumulating $dK_j, dV_j$)
# and query blocks $i$ inside (adding into $dQ_i$). Residuals: $Q, K, V, O$ and $L$ —
# $O((T + S) d)$ — instead of $O(TS)$.


# %%
@functools.partial(jax.jit, static_argnums=(6, 7))
def flash_backward(q, k, v, o, lse, do, causal, b):
    """The VJP of attention at do, block by block, from the kept o and L only."""
    t, s = q.shape[0], k.shape[0]
    delta = jnp.sum(do * o, axis=1)  # D = rowsum(dO ⊙ O)   (T,)
    dq, dk, dv = jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v)
    for cols in blocks(s, b):
        for rows in blocks(t, b):
            if skipped(rows, cols, t, s, causal):
                continue
            p = jnp.exp(block_scores(q, k, rows, cols, causal) - lse[rows, None])  # (Bq, Bk)
            dv = dv.at[cols].add(p.T @ do[rows])
            ds = p * (do[rows] @ v[cols].T - delta[rows, None])  # P ⊙ (dP − D)
            dq = dq.at[rows].add(ds @ k[cols] / math.sqrt(q.shape[1]))
            dk = dk.at[cols].add(ds.T @ q[rows] / math.sqrt(q.shape[1]))
    return dq, dk, dv


# %% [markdown]
# Compared with funcbp's op (its hand rule under `jax.grad`), with `jax.grad` of the plain
# reference, and with central finite differences of the reference:


# %%
@functools.partial(jax.jit, static_argnums=(0, 1))
def three_gradients(op, reference, arrays, cotangent):
    """funcbp's hand rule (jax.grad through the op), jax.grad of the reference, and central
    finite differences of the reference, for L = <f(arrays), cotangent>."""
    argnums = tuple(range(len(arrays)))
    loss = lambda fn: lambda *a: jnp.vdot(fn(*a), cotangent)
    return (
        jax.grad(loss(op), argnums)(*arrays),
        jax.grad(loss(reference), argnums)(*arrays),
        check.finite_difference_grad(loss(reference), arrays, argnums),
    )


def compare(label, names, mine, sources, fd_tol=1e-7):
    for name, a, f, r, x in zip(names, mine, *sources, strict=True):
        errors = rel(a, f), rel(a, r), rel(a, x)
        print(
            f"{label} d{name}: vs funcbp {errors[0]:.1e}, vs jax.grad {errors[1]:.1e}, "
            f"vs finite differences {errors[2]:.1e}"
        )
        assert errors[0] < 1e-12 and errors[1] < 1e-12 and errors[2] < fd_tol


for causal in (True, False):
    o, lse = flash_forward(q, k, v, causal, B)
    mine = flash_backward(q, k, v, o, lse, do, causal, B)
    flash = functools.partial(ops.flash_attention, causal=causal, block_size=B)
    ref = functools.partial(attention_reference, causal=causal)
    compare(f"causal={causal}", "qkv", mine, three_gradients(flash, ref, (q, k, v), do))


# %% [markdown]
# **Skipped blocks are never touched.** With NaN values in the last key block, a skipped
# block that were computed anyway would turn $0 \cdot \text{NaN}$ into NaN in its rows; the
# materialised op has NaN everywhere. Here (T = S = 8, blocks of 2) rows 0–5 stay finite.

# %%
v_nan = jax.random.normal(next(keys), (8, dv)).at[6:].set(jnp.nan)
q8, k8 = jax.random.normal(next(keys), (8, d)), jax.random.normal(next(keys), (8, d))
o8, _ = flash_forward(q8, k8, v_nan, True, 2)
o8_op = ops.flash_attention(q8, k8, v_nan, causal=True, block_size=2)
assert jnp.isfinite(o8[:6]).all() and jnp.isfinite(o8_op[:6]).all()
assert jnp.isnan(ops.attention(q8, k8, v_nan, causal=True)).all()
n_blocks = sum(not skipped(r, c, 8, 8, True) for r in blocks(8, 2) for c in blocks(8, 2))
print(f"computed {n_blocks} of 16 blocks (causal T = S: 4·5/2 = 10)")
assert n_blocks == 10

# %% [markdown]
# **Grouped heads.** With $H$ query heads sharing $G$ key/value heads (query head $h$ uses
# kv head $\lfloor h / (H/G) \rfloor$), a kv head feeds $H/G$ query heads: its value is used
# in $H/G$ branches, so its cotangents $dK, dV$ are the *sums* of the per-query-head ones.

# %%
H, G = 4, 2
R = H // G  # query heads per kv head
qh = 0.7 * jax.random.normal(next(keys), (H, T, d))
kh = 0.7 * jax.random.normal(next(keys), (G, S, d))
vh = jax.random.normal(next(keys), (G, S, dv))
doh = jax.random.normal(next(keys), (H, T, dv))
per_head = []  # head h by itself: ordinary attention against kv head h // R
for h in range(H):
    kv = kh[h // R], vh[h // R]
    o_h, lse_h = flash_forward(qh[h], *kv, True, B)
    per_head.append(flash_backward(qh[h], *kv, o_h, lse_h, doh[h], True, B))
dq_mine = jnp.stack([grads[0] for grads in per_head])  # (H, T, d)
dk_mine = jnp.stack([grads[1] for grads in per_head]).reshape(G, R, S, d).sum(axis=1)  # (G, S, d)
dv_mine = jnp.stack([grads[2] for grads in per_head]).reshape(G, R, S, dv).sum(axis=1)
flash = functools.partial(ops.flash_attention, causal=True, block_size=B)
ref = functools.partial(attention_reference, causal=True)
sources = three_gradients(flash, ref, (qh, kh, vh), doh)
compare("grouped", "qkv", (dq_mine, dk_mine, dv_mine), sources)

# %% [markdown]
# ## 3. The chunked linear cross-entropy
#
# $Z = XW$ with $X$ $(N, D)$, $W$ $(D, V)$, integer labels $y$, and
# $$L = \frac1N \sum_n \bigl(\operatorname{lse}(z_n) - z_{n, y_n}\bigr).$$
# Since $\partial \operatorname{lse}(z)/\partial z_k = \operatorname{softmax}(z)_k$,
# $$dZ = \frac{\operatorname{softmax}(Z) - \operatorname{onehot}(y)}{N}, \qquad
#   dX = dZ\, W^\top, \qquad dW = X^\top dZ = \sum_{c} X_c^\top\, dZ_c ,$$
# where $c$ runs over chunks of rows: row $n$ of $dZ$ needs only row $n$ of $Z$, $dX$ is
# row-wise, and $dW$ is a sum over rows that splits over chunks. So one chunk of logits at a
# time suffices, and the gradients can be formed right in the forward pass (as Liger-Kernel
# does) — the cotangent $g$ of the scalar loss only scales them in the backward. (The
# alternative keeps the row log-sum-exp and recomputes $Z_c$ in the backward: one more GEMM
# per chunk for the same temporary memory — see `benchmarks/RESULTS.md`.)


# %%
@functools.partial(jax.jit, static_argnums=3)
def chunked_ce(x, w, y, c):
    """Loss, dX, dW (for g = 1), one chunk of c rows of logits at a time."""
    n = x.shape[0]
    loss, dx, dw = 0.0, [], jnp.zeros_like(w)
    for rows in blocks(n, c):
        z = x[rows] @ w  # (C, V): the only logits that exist
        lse = jax.nn.logsumexp(z, axis=1)
        loss += jnp.sum(lse - z[jnp.arange(len(rows)), y[rows]]) / n
        dz = (jnp.exp(z - lse[:, None]) - jax.nn.one_hot(y[rows], w.shape[1])) / n
        dx.append(dz @ w.T)
        dw += x[rows].T @ dz
    return loss, jnp.concatenate(dx), dw


N, Dm, V, C = 11, 4, 7, 4
x = jax.random.normal(next(keys), (N, Dm))
w = jax.random.normal(next(keys), (Dm, V))
y = jax.random.randint(next(keys), (N,), 0, V)
g = -1.3  # the scalar loss's cotangent: the backward only scales

loss, dx, dw = chunked_ce(x, w, y, C)
want = linear_cross_entropy_reference(x, w, y)
print(f"loss: vs reference {rel(loss, want):.1e}")
assert rel(loss, want) < 1e-14
op = lambda x, w: ops.linear_cross_entropy(x, w, y, chunk_size=C)
ref = lambda x, w: linear_cross_entropy_reference(x, w, y)
compare("chunked CE", "xw", (g * dx, g * dw), three_gradients(op, ref, (x, w), g))

# %% [markdown]
# ## 4. What it buys: temporary memory of `jit(grad)`
#
# Counted by XLA from the compiled programs (`memory_analysis().temp_size_in_bytes`, float32;
# nothing is run). At T = 2048 the materialised attention already keeps several 16 MiB
# $T \times S$ buffers; at N = 2048, V = 8192 autodiff keeps the 64 MiB logits and their
# cotangent. The full sweeps (T to 16384, V to 131072) are in `benchmarks/RESULTS.md`.


# %%
def temp_mib(fn, *shapes):
    args = [jax.ShapeDtypeStruct(s, dt) for s, dt in shapes]
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20


f32 = jnp.float32
att = ((1, 2048, 64), f32)
flash_mib = temp_mib(
    jax.grad(lambda q, k, v: jnp.sum(ops.flash_attention(q, k, v)), argnums=(0, 1, 2)),
    att,
    att,
    att,
)
ref_mib = temp_mib(
    jax.grad(lambda q, k, v: jnp.sum(attention_reference(q, k, v, True)), argnums=(0, 1, 2)),
    att,
    att,
    att,
)
print(f"attention T = 2048: flash_attention {flash_mib:.1f} MiB, autodiff {ref_mib:.0f} MiB")
head = [((2048, 256), f32), ((256, 8192), f32), ((2048,), jnp.int32)]
lce_mib = temp_mib(
    jax.grad(lambda x, w, y: ops.linear_cross_entropy(x, w, y, chunk_size=256), argnums=(0, 1)),
    *head,
)
lce_ref = temp_mib(jax.grad(linear_cross_entropy_reference, argnums=(0, 1)), *head)
print(
    f"head N = 2048, V = 8192: linear_cross_entropy {lce_mib:.0f} MiB, autodiff {lce_ref:.0f} MiB"
)
assert ref_mib > 20 * flash_mib and lce_ref > 4 * lce_mib
