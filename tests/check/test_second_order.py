"""Second order through the hand VJPs: every mode of differentiating a hand gradient agrees with
the references', registry-wide (ops with ``op.second_order``) and for a small MLP.

For ``L(x) = ⟨f(x), u⟩`` (random ``u``; ``x`` all float arguments of the op, flattened into one
vector) the hand gradient ``∇L`` runs the op's ``bwd``; differentiating it again differentiates
``bwd`` itself. Checked against the plain reference differentiated by JAX:

* forward-over-reverse: ``jax.jacfwd(jax.grad(L))`` and ``jax.jvp(jax.grad(L))`` (HVP);
* reverse-over-reverse: ``jax.jacrev(jax.grad(L))`` and ``jax.grad(⟨∇L, v⟩)`` (HVP);
* ``jax.grad`` of a function of the hand gradient, the gradient penalty ``½‖∇L‖²`` (= H ∇L);
* ``jax.hessian`` of the reference is the ground truth; the hand Hessian is also symmetric
  (``jax.hessian`` of the hand path is ``jacfwd(jacrev(L))``, the same computation as the first).

Models: the Hessian of the loss w.r.t. an MLP's parameters, hand vs autodiff path
(``apply(..., source="hand"|"autodiff")``), also forward mode over the explicit reverse pass of
`funcbp.backprop` (its backward is plain JAX code, so `jax.jacfwd` differentiates it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.flatten_util import ravel_pytree

import funcbp.nn  # noqa: F401  (registers the ops defined next to their layers)
from funcbp import backprop, check, nn, ops
from funcbp.check import mutate
from funcbp.ops import REGISTRY
from funcbp.training import make_loss_fn
from tests.helpers import op_seeds

SECOND_ORDER = sorted(n for n, op in REGISTRY.items() if op.second_order)
SEEDS = op_seeds()  # a shared pool: see tests.helpers.op_seeds
ONE = settings(max_examples=max(1, settings.default.max_examples // 6))
"""One random draw per op by default (Hessians compile slowly); 33 under the deep profile."""
RTOL = 1e-8
SYM_TOL = 1e-10


def _close(a, b, what, rtol=RTOL):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = float(np.linalg.norm(np.ravel(a - b)))
    scale = float(np.linalg.norm(np.ravel(b)))
    assert err <= rtol * scale + 1e-12, f"{what}: |a − b| {err:.3e}, |b| {scale:.3e}"


def _scalar_losses(op, arrays, static, u):
    """``(L_hand, L_ref, x0)``: the pairing losses as functions of one flat float vector."""
    idx = tuple(i for i, a in enumerate(arrays) if check._is_float(a))
    x0, unravel = ravel_pytree(tuple(arrays[i] for i in idx))

    def make(fn):
        def loss(flat):
            full = list(arrays)
            for i, a in zip(idx, unravel(flat), strict=True):
                full[i] = a
            out = fn(*full, **static)
            pairs = zip(jax.tree.leaves(out), jax.tree.leaves(u), strict=True)
            return sum(jnp.vdot(o, w) for o, w in pairs)

        return loss

    return make(op), make(op.reference), x0


def second_order_all(l_hand, l_ref, x, v):
    """Every second-order quantity, hand (differentiating ``bwd``) and reference."""
    g_hand = jax.grad(l_hand)
    penalty = lambda fn: lambda y: 0.5 * jnp.sum(jax.grad(fn)(y) ** 2)
    return {
        "hessian_ref": jax.hessian(l_ref)(x),
        "jacfwd_grad": jax.jacfwd(g_hand)(x),
        "jacrev_grad": jax.jacrev(g_hand)(x),
        "hvp_fwd_rev": jax.jvp(g_hand, (x,), (v,))[1],
        "hvp_rev_rev": jax.grad(lambda y: jnp.vdot(g_hand(y), v))(x),
        "penalty_grad_hand": jax.grad(penalty(l_hand))(x),
        "penalty_grad_ref": jax.grad(penalty(l_ref))(x),
        "grad_ref": jax.grad(l_ref)(x),
    }


@pytest.mark.parametrize("name", SECOND_ORDER)
@ONE
@given(seed=SEEDS)
def test_op_second_order(name, seed):
    op = REGISTRY[name]
    arrays, static, u = mutate.draw(op, jax.random.key(seed))
    l_hand, l_ref, x0 = _scalar_losses(op, arrays, static, u)
    v = jax.random.normal(jax.random.key(seed ^ 0x2D), x0.shape, x0.dtype)
    r = jax.jit(lambda x, v: second_order_all(l_hand, l_ref, x, v))(x0, v)
    h = r["hessian_ref"]
    for k in ("jacfwd_grad", "jacrev_grad"):
        _close(r[k], h, f"{name} {k}")
    _close(r["hvp_fwd_rev"], h @ v, f"{name} HVP forward-over-reverse")
    _close(r["hvp_rev_rev"], h @ v, f"{name} HVP reverse-over-reverse")
    _close(r["penalty_grad_hand"], r["penalty_grad_ref"], f"{name} grad of ½‖∇L‖²")
    _close(r["penalty_grad_ref"], h @ r["grad_ref"], f"{name} ½‖∇L‖² identity")
    hh = np.asarray(r["jacfwd_grad"])
    assert np.linalg.norm(hh - hh.T) <= SYM_TOL * np.linalg.norm(hh) + 1e-12, f"{name} symmetry"


def test_second_order_catches_a_wrong_but_first_order_right_bwd():
    """A bwd that is right in value but not differentiable the right way would slip past
    first-order checks: the Hessian of a linear op computed through ``stop_gradient`` residuals
    is zero where the true mixed derivative ∂²L/∂x∂w is not."""
    op = REGISTRY["linear"]

    def frozen_bwd(res, g):
        x, w = jax.lax.stop_gradient(res)
        return op.bwd((x, w), g)

    frozen = op.with_bwd(frozen_bwd, name="linear:frozen")
    arrays, static, u = mutate.draw(op, jax.random.key(3))
    assert check.compare(
        check.op_gradients(frozen, arrays, static, u, "hand"),
        check.op_gradients(op, arrays, static, u, "autodiff"),
        tol=1e-10,
    ).ok  # first order: indistinguishable
    l_bad, l_ref, x0 = _scalar_losses(frozen, arrays, static, u)
    h_bad, h_ref = jax.jit(lambda x: (jax.hessian(l_bad)(x), jax.hessian(l_ref)(x)))(x0)
    assert np.linalg.norm(h_ref) > 0.1
    assert np.linalg.norm(h_bad - h_ref) > 0.5 * np.linalg.norm(h_ref)


# -- models ----------------------------------------------------------------------------------
def _mlp_problem(activation, seed):
    model = nn.mlp([5, 4, 3], activation=activation)
    k_init, k_x, k_y, k_p = jax.random.split(jax.random.key(seed), 4)
    _, params, state = model.init(k_init, (4,), jnp.float64)
    # perturb so biases are non-zero and no pre-activation sits on a kink
    flat, unravel = ravel_pytree(params)
    params = unravel(flat + 0.3 * jax.random.normal(k_p, flat.shape, flat.dtype))
    x = jax.random.normal(k_x, (6, 4), jnp.float64)
    y = jax.random.randint(k_y, (6,), 0, 3).astype(jnp.int32)
    return model, params, state, x, y


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_mlp_hessian_hand_vs_autodiff(activation):
    model, params, state, x, y = _mlp_problem(activation, seed=len(activation))
    flat0, unravel = ravel_pytree(params)

    def loss(gradients):
        fn = make_loss_fn(model, ops.softmax_cross_entropy, source=gradients)
        return lambda flat: fn(unravel(flat), state, x, y, None, True)[0]

    def explicit_grad(flat):
        grads = backprop.loss_and_grad(
            model, ops.softmax_cross_entropy, unravel(flat), state, x, y
        )[1]
        return ravel_pytree(grads)[0]

    v = jax.random.normal(jax.random.key(7), flat0.shape, flat0.dtype)
    l_hand, l_ref = loss("hand"), loss("autodiff")

    @jax.jit
    def everything(flat, v):
        g_hand = jax.grad(l_hand)
        return {
            "ref": jax.hessian(l_ref)(flat),
            "hand_hessian": jax.hessian(l_hand)(flat),  # jacfwd(jacrev): forward-over-reverse
            "hand_jacrev": jax.jacrev(g_hand)(flat),
            "explicit_jacfwd": jax.jacfwd(explicit_grad)(flat),
            "hvp_fwd_rev": jax.jvp(g_hand, (flat,), (v,))[1],
            "hvp_rev_rev": jax.grad(lambda p: jnp.vdot(g_hand(p), v))(flat),
            "hvp_ref": jax.jvp(jax.grad(l_ref), (flat,), (v,))[1],
        }

    r = everything(flat0, v)
    h = r["ref"]
    assert np.linalg.norm(h) > 1e-3  # a real curvature, also for relu (products of weights)
    for k in ("hand_hessian", "hand_jacrev", "explicit_jacfwd"):
        _close(r[k], h, f"mlp[{activation}] {k}")
    for k in ("hvp_fwd_rev", "hvp_rev_rev"):
        _close(r[k], r["hvp_ref"], f"mlp[{activation}] {k}")
    _close(r["hvp_ref"], h @ v, f"mlp[{activation}] hvp_ref vs H v")


def test_model_hvp_forward_over_reverse_through_hand_rules_only():
    """source="forward": every op of the CNN (conv, batch norm, ReLU, max pool, dropout, dense,
    softmax-CE) runs its hand JVP; jax.grad transposes them and jax.jvp of that gradient is a
    Hessian-vector product made of hand rules only. It equals autodiff's, float64."""
    from funcbp.training import make_loss_fn

    model = nn.cnn(5, channels=(3, 4), hidden=8)
    _, params, state = model.init(jax.random.key(0), (8, 8, 1), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1), jnp.float64)
    y = jnp.arange(4) % 5
    v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape, p.dtype), params)

    def hvp(source):
        loss_fn = make_loss_fn(model, source=source)
        loss = lambda p: loss_fn(p, state, x, y, jax.random.key(3), True)[0]
        return jax.jit(lambda p: jax.jvp(jax.grad(loss), (p,), (v,))[1])(params)

    report = check.compare(hvp("forward"), hvp("autodiff"), tol=1e-10, name="cnn hvp")
    assert report.ok, str(report)
