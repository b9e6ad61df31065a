"""Build the gradient-comparison notebooks from the cells defined here, execute them, save them.

The notebooks are generated: edit the cells in this file, never the ``.ipynb`` files, then run

    .venv/bin/python notebooks/build.py            # build + execute all, rewrite README.md
    .venv/bin/python notebooks/build.py 02         # only notebooks whose name contains "02"
    .venv/bin/python notebooks/build.py --no-execute

Each notebook is saved with its outputs (plots as PNG, tables as text) so it renders on a code
host. ``tests/test_notebooks.py`` re-executes every committed notebook from scratch (and checks
that its sources still match this file); the ``assert`` cells make a wrong formula fail the tests.

The kernel is this interpreter (``sys.executable``, i.e. the venv's python), through a kernelspec
written to a temporary ``JUPYTER_PATH``: no global Jupyter configuration is read or changed.
"""

# ruff: noqa: E501  (cell sources are indented 8 columns here; markdown tables and LaTeX cannot wrap)
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
KERNEL_NAME = "funcbp-notebooks"
TIMEOUT_S = 900
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str):
    return new_code_cell(textwrap.dedent(text).strip())


SETUP = """\
import jax

jax.config.update("jax_enable_x64", True)  # float64 for the exact comparisons
jax.config.update("jax_numpy_rank_promotion", "raise")  # no silent broadcasting of ranks

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

%matplotlib inline
plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "axes.grid": True, "grid.alpha": 0.3})


def show_table(headers, rows):
    \"\"\"Print rows as an aligned text table (floats in scientific notation).\"\"\"
    fmt = lambda v: f"{v:.2e}" if isinstance(v, float) else str(v)
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda items: "  ".join(s.rjust(w) for s, w in zip(items, widths))
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print(line(r))
"""


# =============================================================================================
# 01: the linear layer by hand
# =============================================================================================
def linear_layer_cells():
    return [
        md(r"""
        # 01 — The linear layer by hand

        The fully connected layer is the heart of the classic back-propagation derivation:

        $$Y = X W + b, \qquad X \in \mathbb{R}^{N \times I},\; W \in \mathbb{R}^{I \times O},\;
        b \in \mathbb{R}^{O},\; Y \in \mathbb{R}^{N \times O}$$

        ($N$ samples as rows, $I$ inputs, $O$ outputs; $b$ is added to every row). A scalar loss
        $L$ depends on $Y$. This notebook derives $\partial L/\partial W$, $\partial L/\partial X$
        and $\partial L/\partial b$, codes them in plain `jax.numpy`, and **proves them
        numerically** against `jax.grad` and central finite differences in float64. Then it
        chains layers (the back-propagation recursion), shows why every gradient must be
        computed with the pre-update weights, and checks the update rule
        $W \leftarrow W - \eta(\partial E/\partial W + \lambda W)$ against `funcbp.training.classic_sgd`.

        Every claim ends in an `assert`: the test suite re-executes this notebook, so a wrong
        formula fails the build.
        """),
        code(
            SETUP
            + """
import optax

from funcbp import backprop, nn, ops
from funcbp.check import finite_difference_grad, relative_error
from funcbp.ops.linear import linear_bwd
from funcbp.training.optim import classic_sgd
"""
        ),
        md(r"""
        ## 1. The three gradients

        Write $dY \equiv \partial L/\partial Y$ (shape $N \times O$, the shape of $Y$: a gradient
        always has the shape of the variable). Elementwise the layer is
        $Y_{nk} = \sum_i X_{ni} W_{ik} + b_k$, so

        $$\frac{\partial Y_{nk}}{\partial W_{ij}} = X_{ni}\,\delta_{jk}, \qquad
        \frac{\partial Y_{nk}}{\partial X_{mi}} = W_{ik}\,\delta_{mn}, \qquad
        \frac{\partial Y_{nk}}{\partial b_{j}} = \delta_{jk}.$$

        The chain rule sums over every $Y_{nk}$ that the variable touches:

        | gradient | index form | matrix form | shapes |
        |---|---|---|---|
        | $\partial L/\partial W$ | $\sum_n X_{ni}\, dY_{nj}$ | $X^\top dY$ | $(I,N)(N,O) \to (I,O)$ |
        | $\partial L/\partial X$ | $\sum_j dY_{nj}\, W_{ij}$ | $dY\, W^\top$ | $(N,O)(O,I) \to (N,I)$ |
        | $\partial L/\partial b$ | $\sum_n dY_{nj}$ | $\mathbf{1}_N^\top dY$ | $(N,) (N,O) \to (O,)$ |

        The loss here is $L = \tfrac12 \lVert Y - T \rVert^2$ for a random target $T$, so
        $dY = Y - T$: a random, non-constant upstream gradient (an all-ones $dY$ would hide a
        summation over the wrong axis).
        """),
        code("""
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
        """),
        md(r"""
        ### Proof by numbers

        Three independent references: `jax.grad` of the loss (autodiff), central finite
        differences $\big(L(\theta + \varepsilon e_i) - L(\theta - \varepsilon e_i)\big)/2\varepsilon$
        element by element ($\varepsilon = 10^{-6}$, float64: truncation error
        $O(\varepsilon^2)$, rounding $O(10^{-16}/\varepsilon)$), and the library's own
        `funcbp.ops.linear` backward. Errors are relative, $\lVert a-b\rVert/\lVert b\rVert$.
        """),
        code("""
        auto = jax.grad(loss, argnums=(0, 1, 2))(X, W, b)
        fd = finite_difference_grad(loss, (X, W, b), (0, 1, 2))
        lib = linear_bwd((X, W), dY)  # funcbp's hand VJP: (dX, dW, db)

        rows, errors = [], {}
        for name, mine, a, f, l in zip(("dX", "dW", "db"), (dX, dW, db), auto, fd, lib):
            errors[name] = (relative_error(mine, a), relative_error(mine, f), relative_error(l, a))
            rows.append((name, str(mine.shape), *errors[name], float(jnp.abs(mine - a).max())))
        show_table(
            ["grad", "shape", "rel vs jax.grad", "rel vs finite diff", "funcbp.ops vs jax.grad",
             "max abs vs jax.grad"],
            rows,
        )
        for name, (e_auto, e_fd, e_lib) in errors.items():
            assert e_auto < 1e-12, (name, e_auto)
            assert e_fd < 1e-7, (name, e_fd)
            assert e_lib < 1e-12, (name, e_lib)
        """),
        md(r"""
        ### Why shapes are not enough

        When $I = O$ a transposed formula has the right shape and is still wrong: $dX = dY\,W$
        instead of $dY\,W^\top$ passes every shape check. Only the numbers catch it.
        """),
        code("""
        Ws = jax.random.normal(jax.random.key(1), (I, I))  # a square weight
        dYs = jax.random.normal(jax.random.key(2), (N, I))  # a random upstream gradient
        true_dX = jax.grad(lambda X: jnp.sum(forward(X, Ws, jnp.zeros(I)) * dYs))(X)
        wrong = relative_error(dYs @ Ws, true_dX)  # transposed: right shape, wrong numbers
        right = relative_error(dYs @ Ws.T, true_dX)
        print(f"dY W   (wrong): rel err {wrong:.2e}\\ndY Wᵀ (right): rel err {right:.2e}")
        assert wrong > 0.1 and right < 1e-12
        """),
        md(r"""
        ## 2. $X^\top dY$ is a sum of per-sample outer products

        Row $n$ of $X$ is sample $x_n \in \mathbb{R}^I$, row $n$ of $dY$ its upstream gradient
        $dy_n \in \mathbb{R}^O$. Sample $n$ alone contributes the rank-one matrix
        $x_n \otimes dy_n = x_n^\top dy_n$ (shape $(I, O)$), and the batch gradient is their sum:

        $$\frac{\partial L}{\partial W} = \sum_{n=1}^{N} x_n^\top\, dy_n = X^\top dY .$$

        (A loss that *averages* over the batch carries its $1/N$ inside $dY$.) One matrix
        product does the whole sum, which is why the batched form is used.
        """),
        code("""
        dW_outer = sum(jnp.outer(X[n], dY[n]) for n in range(N))  # Σ_n x_n ⊗ dy_n  (I, O)
        dW_einsum = jnp.einsum("ni,nj->ij", X, dY)
        e_outer, e_einsum = relative_error(dW_outer, dW), relative_error(dW_einsum, dW)
        print(f"Σ outer products vs Xᵀ dY: {e_outer:.2e}   einsum vs Xᵀ dY: {e_einsum:.2e}")
        print("rank of one sample's contribution:", int(jnp.linalg.matrix_rank(jnp.outer(X[0], dY[0]))))
        assert e_outer < 1e-13 and e_einsum < 1e-13
        """),
        md(r"""
        ## 3. Why some frameworks store the weight transposed

        PyTorch's `nn.Linear` stores its weight as $(O, I)$ = (out_features, in_features) and
        computes $y = x W_{\mathrm{pt}}^\top + b$. That is the textbook column-vector convention
        $y = W x$ written for a batch of row vectors: row $k$ of $W_{\mathrm{pt}}$ is the weight
        vector of output unit $k$. The transpose costs nothing at run time — matrix-multiply
        kernels (BLAS, XLA) take a "transposed operand" flag instead of moving memory — so
        it is a layout convention, not a speed trick.

        funcbp stores $W$ as $(I, O)$ and computes $y = x W$: with samples as rows no transpose
        appears in the forward, the shapes read left to right, and $dW = X^\top dY$ has $W$'s
        shape directly. The two are the same layer with $W_{\mathrm{pt}} = W^\top$, hence
        $\partial L/\partial W_{\mathrm{pt}} = dY^\top X = (X^\top dY)^\top$:
        """),
        code("""
        W_pt = W.T  # (O, I): PyTorch's layout


        def loss_pt(X, W_pt, b):
            return 0.5 * jnp.sum((X @ W_pt.T + b[None, :] - T) ** 2)  # y = x Wᵀ + b


        dW_pt = jax.grad(loss_pt, argnums=1)(X, W_pt, b)  # (O, I)
        e_pt = relative_error(dW_pt, dY.T @ X)
        e_same = relative_error(dW_pt.T, dW)
        print(f"dW_pt shape {dW_pt.shape}; vs dYᵀ X: {e_pt:.2e}; (dW_pt)ᵀ vs funcbp's dW: {e_same:.2e}")
        assert dW_pt.shape == (O, I) and e_pt < 1e-12 and e_same < 1e-12
        """),
        md(r"""
        ## 4. Chaining layers: the back-propagation recursion

        A network is a chain $x_0 \xrightarrow{f_1} x_1 \xrightarrow{f_2} \cdots
        \xrightarrow{f_n} x_n \to L$. Since $L$ depends on $x_{n-1}$ only through $x_n$,

        $$\frac{\partial L}{\partial x_{n-1}} = \frac{\partial L}{\partial x_n}\cdot
        \frac{\partial x_n}{\partial x_{n-1}}, \qquad
        \frac{\partial L}{\partial W_n} = \frac{\partial L}{\partial x_n}\cdot
        \frac{\partial x_n}{\partial W_n}.$$

        One backward step turns $dx_n$ into $dx_{n-1}$ (and $dW_n$) — a vector–Jacobian
        product that never forms the Jacobian:

        * Dense $z = x W + b$: $\;dx = dz\, W^\top$, $\;dW = x^\top dz$, $\;db = \mathbf 1^\top dz$
        * tanh $x = \tanh z$: $\;dz = dx \odot (1 - \tanh^2 z)$ (elementwise: a diagonal Jacobian)
        * mean softmax cross-entropy over $N$ samples with labels $y$:
          $\;dz = (\mathrm{softmax}(z) - \mathrm{onehot}(y)) / N$

        Below, a 2- and a 3-layer tanh MLP: the recursion written out in plain `jnp`, the
        library's explicit engine `funcbp.backprop` (each layer's hand `bwd` called in reverse,
        no autodiff), and `jax.grad` of the plain references must agree.
        """),
        code("""
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
            \"\"\"funcbp's serial params (dicts for Dense, {} for Tanh) -> lists Ws, bs.\"\"\"
            dense = [p for p in params if p]
            return [p["w"] for p in dense], [p["b"] for p in dense]


        def forward_tape(Ws, bs, x):
            \"\"\"Forward pass keeping each layer's input x_i and pre-activation z_i.\"\"\"
            xs, zs = [x], []
            for i, (W, b) in enumerate(zip(Ws, bs)):
                z = xs[-1] @ W + b[None, :]  # (N, D_i)
                zs.append(z)
                xs.append(jnp.tanh(z) if i < len(Ws) - 1 else z)
            return xs, zs


        def dlogits(z, y):
            \"\"\"d(mean softmax cross-entropy)/dz = (softmax(z) − onehot(y)) / N   (N, C).\"\"\"
            p = jnp.exp(z - jax.scipy.special.logsumexp(z, axis=-1, keepdims=True))
            return (p - jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)) / z.shape[0]


        def backward(Ws, xs, zs, dz, *, lr=None):
            \"\"\"The recursion, top layer first: [(dW_i, db_i)] for every layer.

            With ``lr`` set, each W_i is updated right after its gradient and the pass continues
            through the UPDATED weight (the mistake studied in section 5).
            \"\"\"
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
        """),
        md(r"""
        ### The same recursion with explicit Jacobians

        For one sample the Jacobians are small enough to build: Dense has
        $\partial z/\partial x = W^\top$ $(D_i \times D_{i-1})$, tanh has
        $\mathrm{diag}(1 - \tanh^2 z)$. Their product, multiplied by the row vector
        $\partial L/\partial z_{\text{top}}$, is $\partial L/\partial x_0$. Back-propagation
        computes exactly this product, right to left, as vector–matrix products — so it never
        stores a Jacobian (for a batch, the Dense Jacobian would be $(N D_i) \times (N D_{i-1})$).
        Each hand-written Jacobian is also checked against `jax.jacobian`.
        """),
        code("""
        model = tanh_mlp(3)
        _, params, state = model.init(jax.random.key(13), (D0,), jnp.float64)
        Ws, bs = unpack(params)
        x, y = x0[0], labels[0]  # one sample: x (D0,)

        jacobians, h, worst_jac = [], x, 0.0
        for i, (W, b) in enumerate(zip(Ws, bs)):
            J_dense = W.T  # ∂z/∂x = Wᵀ   (D_i, D_{i-1})
            worst_jac = max(worst_jac, relative_error(J_dense, jax.jacobian(lambda v: v @ W + b)(h)))
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
        """),
        md(r"""
        ## 5. All gradients first, with the pre-update weights — then update

        Back-propagation computes $\partial E/\partial W_n$ for every layer **at one point** in
        parameter space. Step 3 of the recursion, $dx_{n-1} = dz_n W_n^\top$, uses $W_n$. If a
        layer is updated as soon as its gradient is known ($W_n \leftarrow W_n - \eta\, dW_n$)
        and the pass then continues through the *updated* $W_n$, every layer below receives
        $dz_n (W_n - \eta\, dW_n)^\top$ instead of $dz_n W_n^\top$: an error of order
        $\eta \lVert dz_n\, dW_n^\top \rVert$, which grows linearly with the learning rate.
        The top layer is unaffected (its gradient is taken before anything changes); every
        layer below is wrong. Measured against `jax.grad`:
        """),
        code("""
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
            [("all grads first", *ok)] + [(f"update-as-you-go η={lr:g}", *map(float, e)) for lr, e in zip(lrs, err)],
        )
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for i in range(len(Ws) - 1):
            ax.loglog(lrs, err[:, i], "o-", label=f"dW{i + 1} (layer {i + 1})")
        ax.loglog(lrs, [err[0, 0] * lr / lrs[0] for lr in lrs], "k:", label="∝ η")
        ax.set(xlabel="learning rate η", ylabel="relative error vs jax.grad",
               title="Back-propagating through already-updated weights")
        ax.legend()
        plt.show()

        assert max(ok) < 1e-12
        assert err[lrs.index(1e-1), :-1].min() > 1e-3  # lower layers are visibly wrong
        slopes = np.diff(np.log10(err[:3, 0]))  # decade by decade at small η: error ∝ η
        print("log10 error per decade of η (layer 1):", np.round(slopes, 3))
        assert np.all(np.abs(slopes - 1) < 0.1)
        """),
        md(r"""
        ## 6. The update: $W \leftarrow W - \eta\,(\partial E/\partial W + \lambda W)$

        With an L2 penalty $\tfrac{\lambda}{2}\lVert W\rVert^2$ added to the error, its gradient
        $\lambda W$ joins $\partial E/\partial W$ ("weight decay"), and gradient descent with
        learning rate $\eta$ gives the classic rule above. `funcbp.training.classic_sgd(η, λ)` is
        that rule as an optax chain (`add_decayed_weights(λ)` then `sgd(η)`); by default the decay
        applies to weight matrices only (biases are not decayed, the usual practice), and
        `decay_all=True` applies it to every parameter, exactly as the formula is written.
        Both must agree with the rule coded by hand — bit for bit, since the arithmetic is the
        same.
        """),
        code("""
        eta, lam = 0.05, 1e-3
        grads = jax.grad(autodiff_loss)(params, model)  # all gradients first …

        by_hand_all = jax.tree.map(lambda p, g: p - eta * (g + lam * p), params, grads)
        by_hand_masked = jax.tree.map(  # decay only ndim ≥ 2 (weights), not biases
            lambda p, g: p - eta * (g + lam * p) if p.ndim >= 2 else p - eta * g, params, grads
        )


        def optax_step(opt):
            updates, _ = opt.update(grads, opt.init(params), params)  # … then one update
            return optax.apply_updates(params, updates)


        same_all = jax.tree.map(np.array_equal, by_hand_all, optax_step(classic_sgd(eta, lam, decay_all=True)))
        same_masked = jax.tree.map(np.array_equal, by_hand_masked, optax_step(classic_sgd(eta, lam)))
        print("bit-identical, decay_all=True :", jax.tree.leaves(same_all))
        print("bit-identical, default mask   :", jax.tree.leaves(same_masked))
        assert all(jax.tree.leaves(same_all)) and all(jax.tree.leaves(same_masked))

        # λW is the gradient of the penalty: plain SGD on E + λ/2 Σ‖W‖² is the same step
        penalised = lambda p: autodiff_loss(p, model) + 0.5 * lam * sum(
            jnp.sum(w**2) for w in jax.tree.leaves(p)
        )
        sgd_on_penalty = jax.tree.map(lambda p, g: p - eta * g, params, jax.grad(penalised)(params))
        e_pen = max(jax.tree.leaves(jax.tree.map(relative_error, sgd_on_penalty, by_hand_all)))
        print(f"SGD on E + λ/2‖W‖² vs the decayed update: rel err {e_pen:.2e}")
        assert e_pen < 1e-14
        """),
        md(r"""
        ## Summary

        * $dW = X^\top dY$, $dX = dY W^\top$, $db = \mathbf 1^\top dY$ agree with `jax.grad` to
          float64 rounding and with finite differences to their truncation error.
        * $X^\top dY$ is the sum of per-sample outer products $x_n \otimes dy_n$.
        * Storing $W$ as $(O, I)$ (PyTorch) or $(I, O)$ (funcbp) is a layout convention; the
          gradients are transposes of each other.
        * The recursion $dx_{n-1} = dx_n\, \partial x_n/\partial x_{n-1}$ written by hand, the
          explicit engine `funcbp.backprop` and `jax.grad` agree for 2 and 3 layers.
        * Updating a layer before propagating through it corrupts every lower layer's gradient
          by an error proportional to $\eta$: compute all gradients first, then update.
        * `classic_sgd` is exactly $W \leftarrow W - \eta(\partial E/\partial W + \lambda W)$.
        """),
    ]


# =============================================================================================
# 02: every registered op vs jax.grad
# =============================================================================================
def every_op_cells():
    return [
        md(r"""
        # 02 — Every op vs `jax.grad`

        Every differentiable primitive in `funcbp.ops.REGISTRY` has a plain reference forward,
        a residual-keeping forward `fwd` and a hand-derived backward `bwd`. This notebook checks
        every registered op — including ops added after it was written — against autodiff and
        finite differences, on random shapes and random cotangents.

        For an op $y = f(a_1, \dots, a_k)$ and a random cotangent $u$ with the shape of $y$
        (normal noise: never all ones, which would hide a transposed or wrongly summed formula),
        the scalar

        $$\mathcal L(a) = \langle f(a), u\rangle = \sum y \odot u
        \quad\text{has}\quad \nabla_{a_i} \mathcal L = J_{f,a_i}(a)^\top u ,$$

        the vector–Jacobian product that `bwd` computes. Three sources of it:

        | source | how |
        |---|---|
        | hand | `jax.grad` through the op's `jax.custom_vjp` (its `bwd`) |
        | autodiff | `jax.grad` of the plain reference: the ground truth |
        | finite differences | $\big(\mathcal L(a + \varepsilon e_j) - \mathcal L(a - \varepsilon e_j)\big) / 2\varepsilon$ per element, float64, $\varepsilon = 10^{-6}$ |

        Errors are relative, $\lVert g - g_{\text{ref}}\rVert / \lVert g_{\text{ref}}\rVert$,
        worst over the op's differentiable inputs (integer labels and PRNG keys have none).
        Bounds come from `funcbp.check`: $10^{-5}$ in float32, $10^{-10}$ in float64,
        $10^{-6}$ against finite differences.
        """),
        code(
            SETUP
            + """
import importlib
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
"""
        ),
        md(r"""
        ## Random shapes × random cotangents

        Each op's own sampler (`op.sample(key, dtype)`) draws random shapes, static
        configuration and values kept away from kinks and ties (so finite differences are
        meaningful). Every new shape compiles, so the shapes are few and small; for each shape
        many random cotangents are checked in one `vmap`-ed, jitted program. The float32 check
        runs on the float64 sample rounded to float32. Finite differences are skipped for ops
        marked non-smooth (`op.smooth = False`).
        """),
        code("""
        SHAPES_PER_OP = 3  # random shapes per op (each one compiles)
        COTANGENTS = 8  # random cotangents per shape (one vmapped call)
        COMPARISONS = {  # name: (dtype, source, reference source, tolerance)
            "float32 hand vs autodiff": ("float32", "hand", "autodiff", check.TOLERANCE["float32"]),
            "float64 hand vs autodiff": ("float64", "hand", "autodiff", check.TOLERANCE["float64"]),
            "float64 hand vs finite diff": ("float64", "hand", "fd", check.FD_TOLERANCE["float64"]),
        }


        def cast(arrays, dtype):
            \"\"\"Floating arrays to ``dtype``; integer ids, labels and PRNG keys unchanged.\"\"\"
            return tuple(
                a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in arrays
            )


        def make_vjps(op, static, plan):
            \"\"\"One jitted program per shape: {dtype: {source: VJPs, batched over cotangents}}.

            ``plan`` maps a dtype to the sources needed in it; the arrays come in float64 and are
            rounded to each dtype inside, the cotangents come batched with a leading axis.
            \"\"\"

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
            \"\"\"Per cotangent: the worst relative error over the differentiable inputs.\"\"\"
            per_leaf = []
            for g, r in zip(got, ref):
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
                out = jax.eval_shape(lambda *a: op.autodiff(*a, **static), *arrays)
                u64 = jax.tree.map(lambda o: np_rng.standard_normal((COTANGENTS, *o.shape)), out)
                cotangents = {dtype: jax.tree.map(lambda u: u.astype(dtype), u64) for dtype in plan}
                grads = make_vjps(op, static, plan)(tuple(arrays), cotangents)
                for c in wanted:
                    dtype, a, b, _ = COMPARISONS[c]
                    errors[name][c].extend(worst_rel(grads[dtype][a], grads[dtype][b]))
        print(f"{len(OPS)} ops × {SHAPES_PER_OP} shapes × {COTANGENTS} cotangents "
              f"in {time.perf_counter() - t0:.1f} s")
        """),
        md(r"""
        ## Worst relative error per op

        The worst over all shapes and cotangents; `—` where a comparison does not apply
        (finite differences of a non-smooth op). The shapes column shows the first sample
        drawn (array shapes, then static configuration).
        """),
        code("""
        headers = ["op", *[c.replace(" vs ", "/").replace("float", "f") for c in COMPARISONS], "first shapes"]
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
        print("\\ntolerances:", {c: v[3] for c, v in COMPARISONS.items()})
        assert not failures, failures
        assert all(len(errors[n]["float64 hand vs autodiff"]) == SHAPES_PER_OP * COTANGENTS for n in OPS)
        """),
        md(r"""
        ## Error distributions

        One row per op, one dot per (shape, cotangent) pair, on a log axis; the dashed lines
        are the tolerances in the matching colour. Errors that are exactly zero (the hand and
        autodiff formulas compiled to the same arithmetic) are drawn at the left edge, "0 (exact)".
        """),
        code("""
        FLOOR = 1e-18
        colors = dict(zip(COMPARISONS, ["tab:orange", "tab:blue", "tab:purple"]))
        offsets = dict(zip(COMPARISONS, np.linspace(-0.3, 0.3, len(COMPARISONS))))
        rng = np.random.default_rng(0)
        fig, ax = plt.subplots(figsize=(9, 0.38 * len(OPS) + 1.8), layout="constrained")
        labelled = set()
        for i, name in enumerate(OPS):
            for c, e in errors[name].items():
                if e:
                    y = i + offsets[c] + rng.uniform(-0.05, 0.05, len(e))
                    ax.scatter(np.maximum(e, FLOOR), y, s=9, color=colors[c], alpha=0.7,
                               label=None if c in labelled else c)
                    labelled.add(c)
        for c, (_, _, _, tol) in COMPARISONS.items():
            ax.axvline(tol, color=colors[c], ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlim(FLOOR / 3, 1e-3)
        ax.set_xticks([FLOOR, *(10.0**k for k in range(-16, -3, 2))],
                      ["0 (exact)", *(f"$10^{{{k}}}$" for k in range(-16, -3, 2))])
        ax.minorticks_off()
        ax.set_yticks(range(len(OPS)), OPS)
        ax.set_ylim(len(OPS) - 0.5, -0.5)
        ax.set_xlabel("relative error ‖g − g_ref‖ / ‖g_ref‖")
        ax.set_title("Hand-derived VJPs vs autodiff and finite differences")
        fig.legend(loc="outside lower center", ncol=3, fontsize=8)
        plt.show()
        """),
        md(r"""
        ## Timing: hand VJP vs autodiff

        The jitted gradient $\nabla \mathcal L$ of each op through its hand `bwd` and through
        `jax.grad` of the reference, float32, at the op's first sampled shape. Calls alternate
        between the two (so drifts in machine load hit both alike) and the median is reported.
        At these tiny shapes the time is mostly dispatch overhead — both paths are one XLA
        program each — so a ratio near 1 is expected; `benchmarks/` measures realistic sizes.
        """),
        code("""
        REPEATS = 101


        def pairing_grad(fn, static, arrays, u):
            argnums = tuple(i for i, a in enumerate(arrays) if jnp.issubdtype(a.dtype, jnp.floating))

            def loss(*a):
                out = fn(*a, **static)
                return sum(jnp.vdot(o, c) for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(u)))

            return jax.jit(jax.grad(loss, argnums=argnums))


        rows, medians = [], {}
        for name in OPS:
            op = REGISTRY[name]
            arrays, static = first_sample[name]
            arrays = tuple(  # float32 copies through NumPy: no extra compilation
                jnp.asarray(np.asarray(a, np.float32)) if jnp.issubdtype(a.dtype, jnp.floating) else a
                for a in arrays
            )
            out = jax.eval_shape(lambda *a: op.autodiff(*a, **static), *arrays)
            u = jax.tree.map(lambda o: jnp.asarray(np_rng.standard_normal(o.shape).astype(o.dtype)), out)
            fns = {"hand": pairing_grad(op.hand, static, arrays, u),
                   "autodiff": pairing_grad(op.autodiff, static, arrays, u)}
            results = {k: jax.block_until_ready(f(*arrays)) for k, f in fns.items()}  # compile
            times = {k: [] for k in fns}
            for r in range(REPEATS):
                for k in (("hand", "autodiff") if r % 2 == 0 else ("autodiff", "hand")):
                    t = time.perf_counter()
                    jax.block_until_ready(fns[k](*arrays))
                    times[k].append(time.perf_counter() - t)
            medians[name] = {k: 1e6 * float(np.median(v)) for k, v in times.items()}
            assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(results["hand"]))
            rows.append((name, described[name][0], f"{medians[name]['hand']:.1f}",
                         f"{medians[name]['autodiff']:.1f}",
                         f"{medians[name]['hand'] / medians[name]['autodiff']:.2f}"))
        show_table(["op", "shapes", "hand µs", "autodiff µs", "hand/autodiff"], rows)
        """),
        md(r"""
        ## Summary

        Every registered op's hand-derived backward matches `jax.grad` of its reference to
        float32 and float64 rounding and agrees with central finite differences — over random shapes,
        random static configuration and random cotangents. The assertions above fail the test
        suite if any op, present or future, breaks its bound.
        """),
    ]


# =============================================================================================
# 03: training hand vs autodiff
# =============================================================================================
def training_cells():
    return [
        md(r"""
        # 03 — Training with hand VJPs vs autodiff

        The same MLP (64 → 128 → 128 → 10, ReLU) is trained on scikit-learn's bundled 8×8
        digits twice, from the same initialisation, on the same mini-batches, with the classic
        update $W \leftarrow W - \eta(\partial E/\partial W + \lambda W)$:

        * **hand** — `jax.grad` through the ops' custom VJPs (the hand-derived backward passes);
        * **autodiff** — `jax.grad` of the plain reference forward passes.

        Exact gradient formulas do not make the two runs bit-identical in float32: the hand
        backward and XLA's autodiff sum in a different order, so they differ in the last bits
        and those differences accumulate over the steps of training. The second part
        measures that drift step by step and shows it is rounding, not a formula: in float64
        it is orders of magnitude smaller.
        """),
        code(
            SETUP
            + """
import time

from funcbp import nn
from funcbp.data import load_digits
from funcbp.training import FitConfig, classic_sgd, fit, init_model, make_train_step

data = load_digits(seed=0)  # x (n, 64) float32 standardised, y (n,) int32
model = nn.mlp([128, 128, 10])
print("train", data.x_train.shape, data.x_train.dtype, " test", data.x_test.shape,
      " classes", data.n_classes)
"""
        ),
        md(r"""
        ## 1. Two runs with `fit`

        `fit` derives everything random from one seed: the initial parameters and the shuffle
        of every epoch. Two runs with the same seed therefore start from the same weights and
        see the same batches; only the gradient path differs. Mean softmax cross-entropy,
        batch 64, $\eta = 0.05$, $\lambda = 10^{-4}$ on the weight matrices.
        """),
        code("""
        EPOCHS, BATCH, LR, WD, SEED = 15, 64, 0.05, 1e-4, 0
        runs = {}
        for gradients in ("hand", "autodiff"):
            runs[gradients] = fit(model, data, classic_sgd(LR, WD),
                                  FitConfig(EPOCHS, BATCH, SEED, source=gradients))

        h, a = runs["hand"].history, runs["autodiff"].history
        show_table(
            ["gradients", "final train loss", "train acc", "test loss", "test acc"],
            [(g, r.history["train_loss"][-1], f"{r.history['train_accuracy'][-1]:.4f}",
              r.history["test_loss"][-1], f"{r.history['test_accuracy'][-1]:.4f}")
             for g, r in runs.items()],
        )

        step_h, step_a = np.array(h["step_loss"]), np.array(a["step_loss"])
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.4))
        ax0.plot(step_h, lw=2.5, alpha=0.6, label="hand VJPs")
        ax0.plot(step_a, lw=1, ls="--", color="k", label="autodiff")
        ax0.set(yscale="log", xlabel="step", ylabel="mini-batch loss", title="Loss curves (overlaid)")
        ax0.legend()
        gap = np.abs(step_h - step_a)
        ax1.semilogy(np.flatnonzero(gap), gap[gap > 0], ".", ms=3)
        ax1.set(xlabel="step", ylabel="|loss_hand − loss_autodiff|",
                title=f"Their difference, float32 ({np.sum(gap == 0)} of {len(gap)} steps equal)")
        fig.tight_layout()
        plt.show()

        assert h["test_accuracy"][-1] > 0.9 and a["test_accuracy"][-1] > 0.9
        assert abs(h["test_accuracy"][-1] - a["test_accuracy"][-1]) <= 0.01
        assert np.max(gap) < 1e-5
        """),
        md(r"""
        ### What the hand-trained model gets wrong

        Test digits the hand-trained model misclassifies (pixels un-standardised for display),
        and how often the two models predict the same class.
        """),
        code("""
        predict = jax.jit(lambda p, s, x: jnp.argmax(model.apply(p, s, x, train=False)[0], axis=-1))
        pred = {g: np.asarray(predict(r.params, r.state, data.x_test)) for g, r in runs.items()}
        agree = float(np.mean(pred["hand"] == pred["autodiff"]))
        wrong = np.flatnonzero(pred["hand"] != data.y_test)
        print(f"test accuracy hand {np.mean(pred['hand'] == data.y_test):.4f}, "
              f"autodiff {np.mean(pred['autodiff'] == data.y_test):.4f}; "
              f"the two models agree on {agree:.2%} of test digits; hand misclassifies {len(wrong)}")

        shown = wrong[:8]
        fig, axes = plt.subplots(1, 8, figsize=(10, 1.9))
        for ax, i in zip(axes, shown):
            pixels = data.x_test[i] * data.std + data.mean  # back to the 0..16 grey levels
            ax.imshow(pixels.reshape(8, 8), cmap="gray_r", vmin=0, vmax=16)
            ax.set_title(f"true {data.y_test[i]}\\npred {pred['hand'][i]}", fontsize=9)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        plt.show()
        assert agree >= 0.98
        """),
        md(r"""
        ## 2. Where the two runs part ways, step by step

        The same training written with the step function `make_train_step` (what `fit` calls),
        run in lock-step for three gradient paths — hand, autodiff, and the explicit engine
        (`funcbp.backprop`: each layer's hand `bwd` called in reverse order, no `jax.grad`) —
        from the same initial parameters on the same batches. After every step we record the
        parameter difference to the autodiff run: max abs and relative
        $\lVert \theta_{\text{hand}} - \theta_{\text{auto}}\rVert / \lVert\theta_{\text{auto}}\rVert$
        over all parameters. Once in float32 and once in float64. (Hand and explicit run the same
        `bwd` functions, so their curves lie on top of each other.)
        """),
        code("""
        STEPS = 330  # = 15 epochs of 22 batches
        PATHS = {"hand": dict(source="hand"), "explicit": dict(source="explicit"),
                 "autodiff": dict(source="autodiff")}


        @jax.jit
        def param_diff(p, q):
            d = jax.tree.leaves(jax.tree.map(lambda x, y: x - y, p, q))
            max_abs = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in d]))
            norm = lambda leaves: jnp.sqrt(sum(jnp.sum(x.astype(jnp.float64) ** 2) for x in leaves))
            return max_abs, norm(d) / norm(jax.tree.leaves(q))


        rng = np.random.default_rng(SEED)
        n_batches = len(data.x_train) // BATCH
        order = np.concatenate([rng.permutation(len(data.x_train))[: n_batches * BATCH]
                                for _ in range(-(-STEPS // n_batches))]).reshape(-1, BATCH)[:STEPS]

        drift, steppers, finals = {}, {}, {}
        for dtype in (jnp.float32, jnp.float64):
            opt = classic_sgd(LR, WD)
            params0, state0 = init_model(model, SEED, data.x_train.shape[1:], dtype)
            xs, ys = jnp.asarray(data.x_train, dtype), jnp.asarray(data.y_train)
            steps = {k: make_train_step(model, opt, **kw) for k, kw in PATHS.items()}
            carry = {k: (params0, opt.init(params0), state0) for k in PATHS}
            rec = {k: np.zeros((STEPS, 2)) for k in ("hand", "explicit")}
            for t in range(STEPS):
                batch = (xs[order[t]], ys[order[t]])
                for k, step in steps.items():
                    p, o, s, _ = step(*carry[k], batch, None)
                    carry[k] = (p, o, s)
                for k in rec:
                    rec[k][t] = param_diff(carry[k][0], carry["autodiff"][0])
            drift[jnp.dtype(dtype).name], steppers[jnp.dtype(dtype).name] = rec, steps
            finals[jnp.dtype(dtype).name] = {k: c[0] for k, c in carry.items()}

        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.5))
        styles = {"hand": dict(lw=4, alpha=0.4), "explicit": dict(lw=1, ls="--")}
        for color, (dt, rec) in zip(("tab:blue", "tab:red"), drift.items()):
            for k, v in rec.items():
                for ax, col in ((ax0, 0), (ax1, 1)):
                    ax.semilogy(np.maximum(v[:, col], 1e-18), color=color, **styles[k],
                                label=f"{k} vs autodiff, {dt}")
        ax0.set(xlabel="step", ylabel="max |Δθ|", title="Max abs parameter difference")
        ax1.set(xlabel="step", ylabel="‖Δθ‖ / ‖θ‖", title="Relative parameter difference")
        ax1.legend(fontsize=8)
        fig.tight_layout()
        plt.show()

        show_table(
            ["run", "max |Δθ| (end)", "rel (end)", "rel (max over steps)"],
            [(f"{k} vs autodiff, {dt}", float(v[-1, 0]), float(v[-1, 1]), float(v[:, 1].max()))
             for dt, rec in drift.items() for k, v in rec.items()],
        )
        for k in ("hand", "explicit"):
            assert drift["float64"][k][:, 1].max() < 1e-10, k  # exact formulas: rounding only
            assert drift["float32"][k][:, 1].max() < 1e-5, k
            assert drift["float64"][k][:, 1].max() < 1e-3 * drift["float32"][k][:, 1].max()
        """),
        md(r"""
        ## 3. Speed: steps per second

        Jitted float32 training steps on one fixed batch; blocks of steps alternate between the
        three paths and the median block time is reported. On an MLP this small a step is a
        few dozen microseconds of arithmetic, so the numbers mostly measure dispatch overhead;
        `benchmarks/` compares realistic sizes.
        """),
        code("""
        BLOCK, BLOCKS = 25, 15
        steps = steppers["float32"]
        params0, state0 = init_model(model, SEED, data.x_train.shape[1:], jnp.float32)
        opt = classic_sgd(LR, WD)
        batch = (jnp.asarray(data.x_train[:BATCH]), jnp.asarray(data.y_train[:BATCH]))
        times = {k: [] for k in steps}
        for r in range(BLOCKS):
            for k in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                carry = (params0, opt.init(params0), state0)
                jax.block_until_ready(carry)
                t = time.perf_counter()
                for _ in range(BLOCK):
                    p, o, s, m = steps[k](*carry, batch, None)
                    carry = (p, o, s)
                jax.block_until_ready(carry)
                times[k].append((time.perf_counter() - t) / BLOCK)
        show_table(["gradient path", "steps/s (median)", "µs/step"],
                   [(k, f"{1 / np.median(v):.0f}", f"{1e6 * np.median(v):.0f}") for k, v in times.items()])
        assert all(np.isfinite(np.median(v)) and np.median(v) > 0 for v in times.values())
        """),
        md(r"""
        ## Summary

        Trained from the same initialisation on the same batches, the hand-VJP and autodiff
        runs reach the same accuracy with loss curves that lie on top of each other. Their
        parameters drift apart only by float32 rounding (the two backward passes sum in
        different orders); in float64 the drift stays near machine precision, which shows the
        hand gradients are the true gradients and not an approximation of them.
        """),
    ]


# =============================================================================================
# 04: convolution, batch norm, layer norm and attention by hand
# =============================================================================================
def layers_by_hand_cells():
    return [
        md(r"""
        # 04 — Convolution, batch norm, layer norm and attention by hand

        Notebook 01 derived the linear layer. Here the same treatment for the four layers whose
        backward passes are the least obvious: a strided, padded **2-D convolution**,
        **batch norm** in training mode, **layer norm** and causal **scaled dot-product
        attention**. For each one:

        1. the vector–Jacobian product is derived in markdown, with shapes;
        2. the formula is coded *in this notebook* in a few lines of `jax.numpy` — independent
           of funcbp's own backward (no `lax.conv`, no shared helper);
        3. four gradients are compared in float64: **notebook** formula, **funcbp** (`jax.vjp`
           through the op's `jax.custom_vjp`, i.e. its hand `bwd`), **jax.grad** of the op's
           plain reference (`funcbp.ops.REGISTRY[name].reference`: the ground truth) and
           **central finite differences** of that reference (step $\varepsilon = 10^{-6}$);
        4. `assert`s make a wrong formula fail the test suite, which re-executes this notebook:
           notebook, funcbp and `jax.grad` must agree to $10^{-12}$ (float64 rounding is
           $\sim 10^{-16}$), finite differences to $10^{-7}$ (their truncation error
           $O(\varepsilon^2)$ and rounding error $O(10^{-16}\lvert L\rvert/\varepsilon)$ put them
           near $10^{-9}$ here; funcbp's own finite-difference tolerance is $10^{-6}$).

        Every comparison uses the scalar $L(a) = \langle f(a), U\rangle = \sum f(a) \odot U$
        for a random normal cotangent $U$ with the shape of the output, so $\nabla_a L = J^\top U$
        is exactly the VJP the backward computes (a random $U$, never all ones, which would hide
        a transposed or wrongly summed formula). Errors are relative,
        $\lVert g - g_{\text{ref}}\rVert / \lVert g_{\text{ref}}\rVert$.
        """),
        code(
            SETUP
            + r"""
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
        worst = {c: max(worst[c], e) for c, e in zip(COMPARISONS, errs)}
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
"""
        ),
        md(r"""
        ## 1. 2-D convolution

        funcbp's `conv2d` is a cross-correlation in NHWC/HWIO layout: $X$ $(N, H, W, C)$,
        kernel $W$ $(K_H, K_W, C, O)$, bias $b$ $(O)$, strides $(s_h, s_w)$ and zero padding
        $(\ell_h, h_h), (\ell_w, h_w)$ ($X^{\mathrm p}$ is the padded input, $H_p = H + \ell_h + h_h$):

        $$Y_{n,i,j,o} = b_o + \sum_{p,q,c} X^{\mathrm p}_{n,\; s_h i + p,\; s_w j + q,\; c}\; W_{p,q,c,o},
        \qquad Y \in \mathbb R^{N \times H_O \times W_O \times O},\quad
        H_O = \left\lfloor \tfrac{H_p - K_H}{s_h} \right\rfloor + 1 .$$

        **im2col.** Give every output position $m = (n, i, j)$ its input patch as a row:
        $P_{m,(p,q,c)} = X^{\mathrm p}_{n, s_h i + p, s_w j + q, c}$, so
        $P \in \mathbb R^{M \times K}$ with $M = N H_O W_O$ and $K = K_H K_W C$. With the kernel
        reshaped to $W_{\mathrm{mat}} \in \mathbb R^{K \times O}$ the convolution *is a linear
        layer over patches*, $Y_{\mathrm{mat}} = P\, W_{\mathrm{mat}} + \mathbf 1 b^\top$
        $(M \times O)$, and notebook 01's formulas apply:

        | gradient | formula | shapes |
        |---|---|---|
        | $\partial L/\partial W$ | $P^\top dY_{\mathrm{mat}} = \sum_{m} P_m \otimes dY_m$ (one outer product per output position, summed over batch and positions) | $(K, M)(M, O) \to (K, O) \to (K_H, K_W, C, O)$ |
        | $\partial L/\partial b$ | $\sum_m dY_m$ (over batch and positions) | $(O)$ |
        | $\partial L/\partial P$ | $dY_{\mathrm{mat}}\, W_{\mathrm{mat}}^\top$, then each entry added back where it was copied from (col2im, the adjoint of im2col: overlapping patches add up) | $(M, O)(O, K) \to (M, K) \to (N, H, W, C)$ |

        **$dX$ as a transposed convolution.** Written per spatial axis (rows; columns alike),
        $dX^{\mathrm p}_u = \sum_{i,p \,:\, s i + p = u} dY_i\, W_p$. Dilate $dY$ by the stride
        ($D_{s i} = dY_i$, zeros in between, length $s(H_O - 1) + 1$); then
        $dX^{\mathrm p}_u = \sum_p D_{u-p} W_p = \sum_{p'} D'_{u + p'}\, W_{K_H - 1 - p'}$ with
        $D'$ = $D$ padded by $K_H - 1$ zeros on both sides: a **stride-1 correlation of the
        dilated, padded $dY$ with the kernel flipped in both spatial axes, its $C$ and $O$ axes
        swapped** ($\tilde W_{p,q,o,c} = W_{K_H-1-p,\,K_W-1-q,\,c,\,o}$). Its output has
        $s(H_O-1) + K_H = H_p - r$ rows, where $r = (H_p - K_H) \bmod s$ trailing rows were never
        reached by a window: their gradient is zero. Append $r$ zero rows, crop
        $[\ell, \ell + H)$, and $dX$ has the shape of $X$.

        The notebook code below does all of it with slicing, `reshape`, `@` and `jnp.flip` —
        im2col serves the forward, $dW$ and the transposed convolution alike.
        """),
        code(r"""
        def explicit_pads(padding, spatial, kernel, strides):
            # Any padding conv2d accepts -> ((h_lo, h_hi), (w_lo, w_hi)).
            if padding == "VALID":
                return ((0, 0), (0, 0))
            if padding == "SAME":  # output ceil(n / s); the odd pixel of padding goes high
                totals = [max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in zip(spatial, kernel, strides)]
                return tuple((t // 2, t - t // 2) for t in totals)
            if isinstance(padding, int):
                return ((padding, padding), (padding, padding))
            return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


        def im2col(xp, kh, kw, sh, sw):
            # padded xp (N, Hp, Wp, C) -> patches (N, HO, WO, KH·KW·C), ordered (p, q, c) like HWIO
            n, hp, wp, c = xp.shape
            ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
            cols = [xp[:, p : p + sh * (ho - 1) + 1 : sh, q : q + sw * (wo - 1) + 1 : sw, :]  # (N, HO, WO, C)
                    for p in range(kh) for q in range(kw)]
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
        """),
        md(r"""
        ### Proof by numbers

        A case with everything that can go wrong: stride 2 along $H$ (with a trailing row no
        window reaches, $r = 1$), asymmetric padding, a non-square kernel and
        $C \ne O$.
        """),
        code(r"""
        kx, kw_, kb = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (2, 7, 6, 3))  # (N, H, W, C)
        w = jax.random.normal(kw_, (3, 2, 3, 4)) / 4  # (KH, KW, C, O)
        b = jax.random.normal(kb, (4,))
        conv_static = {"stride": (2, 1), "padding": ((1, 0), (0, 1))}
        print("H_p = 7 + 1 + 0 = 8, H_O = (8 − 3) // 2 + 1 = 3, r = (8 − 3) mod 2 = 1\n")
        worst_conv = compare("conv2d", conv_by_hand, (x, w, b), conv_static, ("dX", "dW", "db"))
        check_bounds(worst_conv)
        """),
        md(r"""
        ### $P^\top dY$ is a sum of per-position outer products; $dX$ two ways

        The same $dW$ as an explicit Python sum of $M$ outer products $P_m \otimes dY_m$ (one
        per output position, over the batch too), and $dX$ by col2im — scattering
        $dP = dY W_{\mathrm{mat}}^\top$ back, patch entry by patch entry — instead of the
        transposed convolution. Both against funcbp's `conv2d_bwd` called directly on its
        residuals $(X, W)$.
        """),
        code(r"""
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
        """),
        md(r"""
        ## 2. Batch norm (training mode)

        $X$ has shape $(\text{batch}\ldots, C)$; each channel is normalised with the statistics
        of its own $n = \prod(\text{batch dims})$ values (e.g. $n = N H W$ for an NHWC image
        batch). Within one channel, with values $x_1, \dots, x_n$:

        $$\mu = \tfrac1n \textstyle\sum_k x_k,\quad \sigma^2 = \tfrac1n \sum_k (x_k - \mu)^2,\quad
        r = (\sigma^2 + \varepsilon)^{-1/2},\quad \hat x_k = (x_k - \mu)\, r,\quad
        y_k = \gamma \hat x_k + \beta .$$

        Every $x_l$ moves its own $\hat x_l$ **and** $\mu$ and $\sigma^2$, hence every $\hat x_k$
        of the channel. With $\partial\mu/\partial x_l = 1/n$ and
        $\partial\sigma^2/\partial x_l = 2(x_l - \mu)/n$ (the $\mu$-dependence of $\sigma^2$
        drops out since $\sum_k (x_k - \mu) = 0$):

        $$\frac{\partial \hat x_k}{\partial x_l} = r\Big(\delta_{kl} \;-\; \underbrace{\tfrac1n}_{\text{via } \mu}
        \;-\; \underbrace{\tfrac1n \hat x_k \hat x_l}_{\text{via } \sigma^2}\Big) .$$

        Contracting with $dy_k\,\gamma$ (γ is constant within a channel, so it factors out):

        $$\boxed{\;dX = \frac{\gamma\, r}{n}\Big(n\, dY - \textstyle\sum dY - \hat X \odot \sum (dY \odot \hat X)\Big)\;}
        \qquad d\gamma = \textstyle\sum dY \odot \hat X, \qquad d\beta = \sum dY,$$

        all sums over the $n$ batch entries of each channel: $dX$ $(\text{batch}\ldots, C)$,
        $d\gamma, d\beta$ $(C)$, the per-channel sums $(1, \ldots, 1, C)$. The $n \times n$
        Jacobian per channel is never formed: two reductions and one elementwise pass.
        """),
        code(r"""
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
        """),
        md(r"""
        ### Why all three terms

        A common mistake is to treat $\mu$ and $\sigma^2$ as constants, $dX = \gamma r\, dY$, or
        to drop one of the two correction terms. How wrong is that? It depends on the upstream
        gradient, and that is the lesson:

        * with a **random normal** cotangent, $\sum dY$ and $\sum dY \odot \hat X$ are sums of $n$
          independent zero-mean terms, so the dropped terms are only $O(1/\sqrt n)$ of $n\,dY$:
          the error *shrinks* with the batch — a gradient check with large batches and noise
          cotangents would barely see it (funcbp's sampler draws 3 to 45 values per channel);
        * with the gradient of a real loss, $L = \tfrac12 \lVert Y - T \rVert^2$ (so
          $dY = \gamma \hat X + \beta - T$, correlated with $\hat X$ and with a non-zero mean),
          $\tfrac1n \sum dY \approx \beta - \bar T$ and $\tfrac1n\sum dY \odot \hat X \approx \gamma$:
          the error stays $O(1)$ at every batch size.

        Below: the relative error of each truncated $dX$ against `jax.grad` of funcbp's
        `batch_norm` reference, for $n$ from 4 to 1024 values per channel (RMS over 32 random
        draws of the cotangent or target).
        """),
        code(r"""
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
                terms = (lift(gamma, 2) * r / n, n * dy, dy.sum(axis=0, keepdims=True),
                         xhat * (dy * xhat).sum(axis=0, keepdims=True))
                return jnp.stack([jnp.linalg.norm(v(*terms) - true) / jnp.linalg.norm(true)
                                  for v in VARIANTS.values()])

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
        show_table(["n", *[f"{v} [random / loss]" for v in names[1:]]],
                   [(n, *[f"{err_random[i, j]:.2e} / {err_loss[i, j]:.2e}" for j in range(1, len(names))])
                    for i, n in enumerate(SIZES)])
        print(f"\nall three terms: worst rel err {max(err_random[:, 0].max(), err_loss[:, 0].max()):.2e}")

        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
        colors = ["k", "tab:blue", "tab:orange", "tab:red"]
        for ax, err, title in ((ax0, err_random, "random normal cotangent dY"),
                               (ax1, err_loss, "dY of a real loss ½‖Y − T‖²")):
            for j, (name, color) in enumerate(zip(names, colors)):
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
        """),
        md(r"""
        ## 3. Layer norm

        The same normalisation, per row over the last axis (the $D$ features of one token or
        sample): $X$ $(\ldots, D)$, $\gamma, \beta$ $(D)$. Per row, $\mu$, $\sigma^2$, $r$ and
        $\hat x$ as above with $n = D$, and the same Jacobian
        $\partial\hat x_i/\partial x_j = r(\delta_{ij} - \tfrac1D - \tfrac1D \hat x_i \hat x_j)$
        $(D \times D)$. One difference: $\gamma$ now varies *along* the normalised axis, so it
        cannot be factored out; it enters through $d\hat X = dY \odot \gamma$:

        $$\boxed{\;dX = \frac{r}{D}\Big(D\, d\hat X - \textstyle\sum_{i} d\hat X_{i} - \hat X \odot \sum_{i} d\hat X_{i} \hat X_{i}\Big),
        \quad d\hat X = dY \odot \gamma\;}$$

        with the sums over each row's $D$ entries $(\ldots, 1)$; $d\gamma = \sum dY \odot \hat X$
        and $d\beta = \sum dY$ sum over all leading (row) axes, $(D)$. First the Jacobian itself
        against `jax.jacobian` for one row, then the VJP.
        """),
        code(r"""
        def ln_by_hand(x, gamma, beta, dy, eps=1e-5):
            lead = tuple(range(x.ndim - 1))  # the rows: γ, β gradients sum over them
            d = x.shape[-1]
            mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
            r = 1 / jnp.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
            xhat = (x - mu) * r  # (..., D)
            y = lift(gamma, x.ndim) * xhat + lift(beta, x.ndim)
            dxhat = dy * lift(gamma, x.ndim)  # (..., D)
            dx = r / d * (d * dxhat - dxhat.sum(-1, keepdims=True) - xhat * (dxhat * xhat).sum(-1, keepdims=True))
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
        """),
        md(r"""
        ## 4. Scaled dot-product attention

        funcbp's `attention(q, k, v, causal)`: $Q$ $(\ldots, T, D)$, $K$ $(\ldots, S, D)$,
        $V$ $(\ldots, S, D_v)$ with any shared leading axes (batch, heads):

        $$Z = \frac{Q K^\top}{\sqrt D}\;(T \times S), \qquad
        P = \operatorname{softmax}_{\text{rows}}(Z + \text{mask}), \qquad O = P V \;(T \times D_v).$$

        Causal convention: query $i$ sees keys $j \le i + (S - T)$ — the queries are the *last*
        $T$ of $S$ positions (a KV cache), the usual lower triangle when $S = T$. Masked scores
        are set to a large negative number (funcbp: half the dtype's minimum; the notebook code
        uses $-\infty$), so $P_{ij} = 0$ exactly there. The backward, step by step:

        | step | formula | shapes |
        |---|---|---|
        | $O = PV$ | $dV = P^\top dO$, $\;dP = dO\, V^\top$ | $(S, T)(T, D_v)$; $(T, D_v)(D_v, S)$ |
        | row softmax, Jacobian $\operatorname{diag}(p) - p p^\top$ | $dZ_{ij} = P_{ij}\big(dP_{ij} - \sum_l P_{il}\, dP_{il}\big)$ | $(T, S)$ |
        | the row term | $\sum_l P_{il}\, dP_{il} = \sum_l P_{il} \sum_e dO_{ie} V_{le} = \sum_e dO_{ie} O_{ie} = \delta_i$ | $(T, 1)$ |
        | $Z = QK^\top/\sqrt D$ | $dQ = dZ\, K / \sqrt D$, $\;dK = dZ^\top Q / \sqrt D$ | $(T, S)(S, D)$; $(S, T)(T, D)$ |

        So $dZ = P \odot (dP - \operatorname{rowsum}(dO \odot O))$: the row term costs $O(D_v)$
        per query from the output instead of $O(S)$ from $P \odot dP$. Masked entries have
        $P_{ij} = 0$, hence $dZ_{ij} = 0$: no gradient flows to keys a query cannot see. (funcbp
        keeps $Q, K, V, O$ and the row log-sum-exp, and recomputes $P$; the notebook simply
        recomputes everything.)
        """),
        code(r"""
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
        print(f"\nrowsum(P ⊙ dP) vs rowsum(dO ⊙ O): {e_delta:.2e};  "
              f"max |dZ| on masked entries: {float(jnp.abs(jnp.where(visible[None], 0.0, dz)).max())}")
        print("visible keys per query (row i sees j ≤ i + S − T):\n", np.asarray(visible).astype(int))
        assert e_delta < TOL_EXACT and not jnp.any(jnp.where(visible[None], 0.0, dz))
        """),
        md(r"""
        ## 5. Random shapes

        The hand-picked cases above could hide a formula that only works for one configuration.
        Each op's own sampler (`REGISTRY[name].sample`) draws random shapes, strides, paddings
        (`"SAME"`, `"VALID"`, symmetric and asymmetric explicit), `eps` and causal flags; the
        notebook formulas must meet the same bounds on every draw. One dot per (draw, input)
        below; exact zeros (the two computations rounded identically) sit on the floor.
        """),
        code(r"""
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
                    " ".join(str(tuple(a.shape)) for a in arrays) + "".join(f" {k}={v}" for k, v in static.items()))
                results.setdefault(name, []).append(compare(name, fn, arrays, static, grad_names, show=False))
        results["conv2d"].append(worst_conv)
        results["batch_norm"].append(worst_bn)
        results["layer_norm"].append(worst_ln)
        results["attention"].append(worst_attn)

        show_table(["op", *COMPARISONS],
                   [(name, *[max(r[c] for r in rs) for c in COMPARISONS]) for name, rs in results.items()])
        print("\n(worst over the hand-picked case and the draws:)")
        for name, d in drawn.items():
            print(f"  {name:10s} " + " | ".join(d))

        FLOOR = 1e-18
        shown = ["notebook vs jax.grad", "funcbp vs jax.grad", "notebook vs finite diff"]
        fig, ax = plt.subplots(figsize=(8, 3.8))
        for j, (c, color) in enumerate(zip(shown, ["tab:blue", "tab:green", "tab:purple"])):
            for i, (name, rs) in enumerate(results.items()):
                errs = np.maximum([r[c] for r in rs], FLOOR)
                ax.scatter(i + (j - 1) * 0.2 + np.linspace(-0.05, 0.05, len(errs)), errs, s=18,
                           color=color, label=c if i == 0 else None)
            ax.axhline(COMPARISONS[c][2], color=color, ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_ylim(FLOOR / 3, 1e-5)
        ax.set_yticks([FLOOR, *(10.0**k for k in range(-16, -5, 2))],
                      ["0 (exact)", *(f"$10^{{{k}}}$" for k in range(-16, -5, 2))])
        ax.set_xticks(range(len(results)), list(results))
        ax.set(ylabel="worst relative error over the inputs",
               title="Notebook formulas and funcbp vs jax.grad and finite differences (float64)")
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        plt.show()
        for name, rs in results.items():
            for r in rs:
                check_bounds(r)
        """),
        md(r"""
        ## Summary

        | op | the VJP in one line |
        |---|---|
        | conv2d | $dW = P^\top dY$ (im2col patches: a sum of per-position outer products), $db = \sum dY$, $dX$ = stride-1 correlation of the stride-dilated, $(K-1)$-padded $dY$ with the flipped, $C \leftrightarrow O$-swapped kernel, cropped |
        | batch norm | $dX = \frac{\gamma r}{n}\big(n\,dY - \sum dY - \hat X \sum dY \odot \hat X\big)$ over the batch axes per channel |
        | layer norm | the same over the feature axis, with $d\hat X = dY \odot \gamma$ inside the sums |
        | attention | $dV = P^\top dO$, $dZ = P \odot (dO V^\top - \operatorname{rowsum}(dO \odot O))$, $dQ = dZ K/\sqrt D$, $dK = dZ^\top Q/\sqrt D$ |

        Coded independently here, each agrees with funcbp's hand backward and with `jax.grad`
        of the plain reference to float64 rounding, and with central finite differences to
        their truncation error — on hand-picked and on randomly drawn shapes. For batch norm,
        the two terms coming from $\mu$ and $\sigma^2$ are not optional: with the gradient of a
        real loss, dropping either is wrong by $O(1)$ at any batch size.
        """),
    ]


# =============================================================================================
# 05: the divergence report finds a planted bug
# =============================================================================================
def planted_bug_cells():
    return [
        md(r"""
        # 05 — Finding a planted bug

        Gradient checks of single ops (notebooks 02, 04) tell you *that* a backward is wrong.
        In a whole network the question is *where*: a wrong gradient in one layer corrupts every
        gradient below it, so all parameters may look wrong at once.
        `funcbp.check.diverge.divergence_report` answers it. For a `serial` model
        $x_0 \to f_0 \to x_1 \to \dots \to f_{n-1} \to x_n \to L$ ($f_i$ = the `i`-th of `model.children`,
        $x_0$ the input) it computes every activation gradient $\partial L/\partial x_i$ and
        every parameter gradient twice:

        * **hand** — funcbp's explicit engine: each layer's `fwd` (keeping residuals), then each
          layer's hand `bwd` in reverse, keeping every incoming $dy$ and outgoing $dx$; no JAX
          autodiff involved;
        * **autodiff** — `jax.grad` of the loss of the model built from the ops' plain
          references, with respect to the parameters and to zero perturbations
          $\epsilon_i$ added after each layer ($x_i + \epsilon_i$, so
          $\partial L/\partial \epsilon_i = \partial L/\partial x_i$).

        Row $i$ holds the relative errors of what layer $f_i$'s backward produced — its
        parameter gradient $\partial L/\partial W_i$ and its input's gradient
        $\partial L/\partial x_i$ — given the hand $\partial L/\partial x_{i+1}$ from the row
        above it (row $n$ is the loss). Walking from the loss backwards, the
        **first divergence** is the first row over the tolerance: every layer above it handed
        down a correct gradient, so the bug is in that layer. The *local* columns isolate each
        layer completely — its hand backward fed the *true* incoming gradient.

        Below: the report on a healthy MLP and CNN (digits, bundled with scikit-learn: nothing
        is downloaded), then three planted bugs in three different layers, each named exactly,
        and finally funcbp's mutation testing: every automatically broken backward of the
        layers used here is caught by the op-level checker.
        """),
        code(
            SETUP
            + r"""
from funcbp import check, data, nn, ops
from funcbp.check import diverge
from funcbp.check import mutate
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
    print(f"{report.model} [{report.dtype}] loss {report.loss:.4f}, tol {report.rows[0].tol:.0e}, "
          f"first divergence: {where}")
    rows = []
    for r in report.rows:
        verdict = "ok" if r.ok else ("FIRST" if first and r.index == first.index else "diverges")
        rows.append((r.index, r.name, fmt(r.dy), fmt(r.dparams), fmt(r.dx),
                     fmt(r.local_dparams), fmt(r.local_dx), verdict))
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
    assert all(e <= rows[i].tol for i in rows if i != index and i < n_layers for e in local(rows[i]))
"""
        ),
        md(r"""
        ## 1. Healthy models: no divergence

        Float64 (tolerance `funcbp.check.MODEL_TOLERANCE["float64"]` $= 10^{-9}$): every row
        agrees to rounding. The CNN is run in training mode, so batch norm uses the batch
        statistics and dropout a random mask (the same on both sides). "—" marks what a layer
        does not have (parameters) or what the loss row does not get (an incoming gradient:
        its seed is 1).
        """),
        code(r"""
        healthy = {
            "mlp": diverge.divergence_report(mlp, mlp_params, mlp_state, x_mlp, y_mlp, dtype="float64"),
            "cnn": diverge.divergence_report(cnn, cnn_params, cnn_state, x_cnn, y_cnn, key=KEY, dtype="float64"),
        }
        for report in healthy.values():
            show_report(report)
            print()
        worst_row = lambda rep: max(e for r in rep.rows for e in (r.dparams, r.dx) if e is not None)
        print("worst error of any row:", {name: f"{worst_row(rep):.1e}" for name, rep in healthy.items()})
        assert all(rep.ok for rep in healthy.values())
        assert all(worst_row(rep) < 1e-13 for rep in healthy.values())  # rounding only
        """),
        md(r"""
        ## 2. Bug A — a flipped sign in a Dense layer's $dW$, deep in the MLP

        The mechanism funcbp's own tests use: `op.with_bwd(bad_bwd, name=...)` is a copy of
        the op with another backward (a new `jax.custom_vjp`), and `nn.op_layer` makes a layer
        of it. The broken backward returns $-dW$ instead of $dW = X^\top dY$ for the **second**
        of the four Dense layers (index 2; the loss is reached through two more Dense layers
        above it). Everything else — forward, $dX$, $db$ — is right, and so are the weights:
        the buggy model is initialised from the same seed and gets identical parameters.
        """),
        code(r"""
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
        """),
        md(r"""
        Only row 2 fails, and only in $dL/dW$ (relative error 2: $\lVert -g - g\rVert / \lVert g\rVert$).
        A bug confined to a parameter gradient does not travel: $dL/dx$ stays correct all the
        way down. The next bug does travel.

        ## 3. Bug B — a wrong stored residual (from `funcbp.check.mutate`)

        `funcbp.check.mutate.make_mutants` derives broken backwards automatically (flipped signs,
        doubled or forgotten terms, skipped batch sums, wrong residuals, …). Its
        `linear:residual[1]` mutant runs the true backward with the stored weight scaled by
        1.1 — as if the forward had kept a stale or wrongly transformed $W$. Then
        $dX = dY (1.1\, W)^\top$ is wrong while $dW = X^\top dY$ is right. Planted in the Dense
        layer at index 4, its wrong $dX$ flows into every layer below: rows 3 to 0 diverge too.
        The report still names index 4 — the first row from the loss — and the local columns
        (each layer fed the *true* incoming gradient) are clean everywhere else.
        """),
        code(r"""
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
        """),
        md(r"""
        ## 4. Bug C — batch norm without its mean term, in the CNN

        Notebook 04 derived $dX = \frac{r}{n}\big(n\, d\hat X - \sum d\hat X - \hat X \sum d\hat X \odot
        \hat X\big)$ (with $d\hat X = dY \odot \gamma$). The planted backward forgets the term
        that comes from $\mu$, $-\sum d\hat X$ — the classic mistake of treating the batch mean as
        a constant. $d\gamma$ and $d\beta$ stay right. In the CNN the broken batch norm (index 1)
        sits right after the first convolution, so the first convolution's $dW$ and the input
        gradient are wrong as well.
        """),
        code(r"""
        def batch_norm_bwd_no_mean(residuals, g, eps=1e-5):
            x, mean, rstd, gamma = residuals  # funcbp's residuals: x, μ, r, γ
            axes = tuple(range(x.ndim - 1))
            xhat = (x - mean) * rstd
            dxhat = g * gamma.reshape((1,) * (x.ndim - 1) + gamma.shape)
            dx = rstd * (dxhat - xhat * jnp.mean(dxhat * xhat, axis=axes, keepdims=True))  # − mean(dx̂) missing
            return dx, jnp.sum(g * xhat, axis=axes), jnp.sum(g, axis=axes)


        BUG_C = 1
        bad_bn = ops.batch_norm.with_bwd(batch_norm_bwd_no_mean, name="batch_norm[mean term dropped]")
        cnn_c = plant(cnn, BUG_C, bad_bn, ("gamma", "beta"), "batch_norm_BUG")
        params_c, state_c = init_model(cnn_c, 0, images.input_shape, jnp.float64)
        assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params_c, cnn_params)))  # same weights

        report_c = diverge.divergence_report(cnn_c, params_c, state_c, x_cnn, y_cnn, key=KEY, dtype="float64")
        show_report(report_c)
        check_planted(report_c, BUG_C)
        rows_c = {r.index: r for r in report_c.rows}
        print(f"\nworst parameter leaf of the first divergence: {rows_c[BUG_C].worst_param or '(dγ, dβ are right)'}")
        assert rows_c[BUG_C].dparams < rows_c[BUG_C].tol < rows_c[BUG_C].dx and not rows_c[0].ok
        print("the op-level checker on the broken op:", check.check_op(bad_bn, jax.random.key(0)))
        assert not check.check_op(bad_bn, jax.random.key(0)).ok
        """),
        md(r"""
        ## 5. The picture: walking back from the loss

        Relative error of $\partial L/\partial x$ produced by each layer's backward (lines) and
        of its parameter gradient (open markers), from the loss (left) to the input (right), for
        the healthy and the buggy models; exact zeros on the floor. The dashed line is the
        tolerance. The first point above it, from the left, is the planted layer.
        """),
        code(r"""
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
            ax.set_xticks(range(len(rep.rows)), [f"{r.index} {r.name}" for r in rep.rows],
                          rotation=60, ha="right", fontsize=8)
            ax.set(yscale="log", ylim=(FLOOR / 3, 30), xlabel="layer (from the loss backwards)",
                   title=f"{title}: hand vs autodiff (line dL/din, □ dL/dW)")
            ax.legend(fontsize=8, loc="center left")
        ax0.set_ylabel("relative error (float64)")
        fig.tight_layout()
        plt.show()
        """),
        md(r"""
        ## 6. Mutation testing: a checker that never fails proves nothing

        `funcbp.check.mutate.mutate_op` builds every applicable mutant of an op's backward and runs
        the op-level gradient check (hand vs autodiff, float64, tolerance $10^{-10}$) on each;
        a mutant that passes is retried on fresh random shapes and only excused if its
        cotangents equal the true ones on every sample tried (an *equivalent* mutant). For the ops of the
        layers above, every mutant must be caught.
        """),
        code(r"""
        mutation = [mutate.mutate_op(ops.REGISTRY[name], jax.random.key(0)) for name in ("linear", "conv2d", "batch_norm")]
        show_table(["op", "mutants", "caught", "equivalent", "survived", "smallest error of a caught mutant"],
                   [(m.op, m.made, m.killed, len(m.equivalent), len(m.survivors),
                     min(r.error for r in m.results if r.killed)) for m in mutation])
        print("\nfamilies:", sorted({r.family for m in mutation for r in m.results}))
        for m in mutation:
            assert m.made > 0 and m.killed == m.made and not m.survivors, m
        """),
        md(r"""
        ## Summary

        * On healthy models, hand (the explicit engine of hand `bwd`s) and autodiff agree row
          by row to float64 rounding, from the loss down to the input.
        * A planted bug is named exactly: the first row over the tolerance, walking back from
          the loss, is the broken layer — whether the bug stays in $dW$ (A), or corrupts $dX$
          and with it every layer below (B, C). The local columns confirm it: fed the true
          incoming gradient, every other layer is correct.
        * The op-level checker catches the same broken ops, and every automatic mutant of
          `linear`, `conv2d` and `batch_norm`.
        """),
    ]


# =============================================================================================
NOTEBOOKS = {
    "01_linear_layer_by_hand.ipynb": (
        "The linear layer Y = XW + b: dL/dW, dL/dX, dL/db derived, coded in jnp and checked "
        "against jax.grad and finite differences; outer products; the chained recursion; why "
        "update only after all gradients; the L2 update vs classic_sgd.",
        linear_layer_cells,
    ),
    "02_every_op_vs_jax_grad.ipynb": (
        "Every op in funcbp.ops.REGISTRY: hand VJP vs autodiff (float32, float64) and vs "
        "finite differences (float64) over random shapes and cotangents; error distributions "
        "per op; hand vs autodiff timings.",
        every_op_cells,
    ),
    "03_training_hand_vs_autodiff.ipynb": (
        "An MLP trained on digits with hand VJPs and with autodiff from the same init: loss "
        "curves, per-step parameter drift (float32 vs float64), accuracy, misclassified "
        "digits, steps/s.",
        training_cells,
    ),
    "04_layers_by_hand.ipynb": (
        "Convolution, batch norm, layer norm and attention by hand: each VJP derived with shapes "
        "(im2col dW = PᵀdY, dX as a transposed conv; the three batch-norm terms; dZ = P ⊙ (dP − "
        "rowsum(dO ⊙ O))), coded in jnp and checked against funcbp, jax.grad and finite "
        "differences on hand-picked and random shapes; what dropping batch-norm terms costs.",
        layers_by_hand_cells,
    ),
    "05_finding_a_planted_bug.ipynb": (
        "The divergence report on the digits MLP and CNN: no divergence when healthy; three "
        "planted bugs (dW sign, a wrong residual from funcbp.check.mutate, batch norm without its mean "
        "term) each named exactly; per-layer errors from the loss backwards; every mutant of "
        "linear, conv2d and batch_norm caught.",
        planted_bug_cells,
    ),
}


def notebook(filename: str) -> nbformat.NotebookNode:
    """The unexecuted notebook ``filename`` built from the cells above."""
    _, cells = NOTEBOOKS[filename]
    nb = new_notebook(cells=cells())
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def sources(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """``(cell_type, source)`` of every cell: what `tests/test_notebooks.py` compares."""
    return [(c.cell_type, c.source) for c in nb.cells]


@contextlib.contextmanager
def venv_kernel():
    """Yield the name of a kernel that runs ``sys.executable`` (this venv's python).

    The kernelspec lives in a temporary directory put first on ``JUPYTER_PATH`` for the
    duration; the previous value is restored afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="funcbp-kernel-") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"funcbp ({sys.executable})",
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = tmp + (os.pathsep + old if old else "")
        try:
            yield KERNEL_NAME
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def execute(nb: nbformat.NotebookNode, *, cwd: Path = HERE, timeout: int = TIMEOUT_S) -> float:
    """Execute ``nb`` in place with the venv kernel; returns the wall time in seconds and
    records it, with the kernel's CPU time, in ``nb.metadata["funcbp"]``.

    Raises `nbclient.exceptions.CellExecutionError` (with the cell's traceback) when a cell
    fails, e.g. an ``assert`` on the numbers.
    """
    from nbclient import NotebookClient

    metadata = dict(nb.metadata)
    with venv_kernel() as kernel_name:
        client = NotebookClient(
            nb,
            kernel_name=kernel_name,
            timeout=timeout,
            record_timing=False,
            resources={"metadata": {"path": str(cwd)}},
        )
        cpu0, t0 = _children_cpu(), time.perf_counter()
        client.execute()  # the kernel is shut down and reaped before this returns
        seconds, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    nb.metadata["kernelspec"] = metadata.get("kernelspec", dict(KERNELSPEC))
    nb.metadata["funcbp"] = {"execution_s": round(seconds, 1), "kernel_cpu_s": round(cpu, 1)}
    return seconds


def _children_cpu() -> float:
    """User + system CPU seconds of this process's terminated children (the kernel)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_readme(times: dict[str, dict]) -> None:
    lines = [
        "# Notebooks",
        "",
        "Gradient-comparison notebooks: every formula is derived in markdown, coded, and proved",
        "numerically with `assert`s. They are generated by `build.py` (edit the cells there, not",
        "the `.ipynb` files), committed with their outputs, and re-executed from scratch by",
        "`tests/test_notebooks.py` (`pytest -m slow tests/test_notebooks.py`).",
        "",
        "    .venv/bin/python notebooks/build.py        # rebuild + execute all, rewrite this file",
        "",
        "| notebook | what it shows | wall time | kernel CPU time |",
        "|---|---|---|---|",
    ]
    for name, (description, _) in NOTEBOOKS.items():
        t = times.get(name, {})
        wall = f"{t['execution_s']:.0f} s" if "execution_s" in t else "not measured"
        cpu = f"{t['kernel_cpu_s']:.0f} s" if "kernel_cpu_s" in t else "not measured"
        lines.append(f"| [{name}]({name}) | {description} | {wall} | {cpu} |")
    lines += [
        "",
        "Measured when the notebooks were last built, on a 2-core CPU machine shared with other",
        "jobs: the wall time (kernel start included) depends on that load; the kernel's CPU time",
        "(user + system, all threads) is the better guide to the wall time on an idle machine.",
        "",
    ]
    (HERE / "README.md").write_text("\n".join(lines))


def _recorded_times() -> dict[str, dict]:
    """The timings stored in the committed notebooks' metadata."""
    out = {}
    for name in NOTEBOOKS:
        path = HERE / name
        if path.exists():
            out[name] = dict(nbformat.read(path, as_version=4).metadata.get("funcbp", {}))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="substrings selecting notebooks (default: all)")
    parser.add_argument("--no-execute", action="store_true", help="write without outputs")
    args = parser.parse_args(argv)
    chosen = [n for n in NOTEBOOKS if not args.names or any(s in n for s in args.names)]
    if not chosen:
        parser.error(f"no notebook matches {args.names}; have {list(NOTEBOOKS)}")
    times = _recorded_times()
    for name in chosen:
        nb = notebook(name)
        if not args.no_execute:
            print(f"executing {name} ...", flush=True)
            execute(nb)
            times[name] = dict(nb.metadata["funcbp"])
            print(
                f"  {times[name]['execution_s']:.1f} s wall, "
                f"{times[name]['kernel_cpu_s']:.1f} s kernel CPU",
                flush=True,
            )
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
    write_readme(times)
    return 0


if __name__ == "__main__":
    sys.exit(main())
