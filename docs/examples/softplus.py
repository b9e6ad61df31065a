"""softplus(x) = log(1 + eˣ): an op written end to end (reference, fwd, bwd, jvp, validate,
sample, registration), then put through the checks the test suite runs on every registered op.

This file is the worked example of docs/hand-vjp.md (included there verbatim) and runs as a
script in ``tests/test_docs.py``: ``python docs/examples/softplus.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcbp.ops import _sample
from funcbp.ops._checks import require_float
from funcbp.ops._op import Op, register


def softplus_reference(x):
    """x: any shape -> same.  y = log(1 + eˣ) (as logaddexp(x, 0): no overflow for large x)."""
    return jnp.logaddexp(x, 0.0)


def softplus_fwd(x):
    """Keeps s = σ(x), all that the backward needs: softplus'(x) = eˣ / (1 + eˣ) = σ(x)."""
    return softplus_reference(x), (jax.nn.sigmoid(x),)


def softplus_bwd(res, g):
    """dx = g ⊙ σ(x): the Jacobian is diagonal (elementwise op), diag(σ(x))."""
    (s,) = res
    return (g * s,)


def softplus_jvp(primals, tangents):
    """dy = σ(x) ⊙ dx: the same diagonal Jacobian applied to the tangent."""
    (x,), (dx,) = primals, tangents
    return softplus_reference(x), jax.nn.sigmoid(x) * dx


def _validate(x):
    require_float("softplus", "x", x)


def _sample_softplus(key, dtype):
    """A random shape (0-3 dims of 1-6) and normal values of scale 2: smooth everywhere."""
    shape = _sample.batch_shape(_sample.rng(key), max_dims=3, max_size=6)
    return (_sample.normal(key, shape, dtype, scale=2.0),), {}


softplus = register(
    Op(
        "softplus",
        softplus_reference,
        softplus_fwd,
        softplus_bwd,
        _sample_softplus,
        1,
        _validate,
        jvp=softplus_jvp,
    )
)


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    from funcbp.check import check_op
    from funcbp.check.jvp import check_jvp, check_transpose
    from funcbp.check.mutate import mutate_op

    for seed in range(3):  # random shapes and values each time
        key = jax.random.key(seed)
        for report in (
            check_op(softplus, key, jnp.float64),  # hand vs jax.grad of the reference
            check_op(softplus, key, jnp.float32),
            check_op(softplus, key, jnp.float64, "hand", "fd"),  # vs finite differences
            check_op(softplus, key, jnp.float64, "explicit", "autodiff"),  # fwd + bwd by hand
            check_jvp(softplus, key),  # hand JVP vs jax.jvp of the reference
            check_transpose(softplus, key),  # <J dx, g> = <dx, Jᵀ g>: jvp and bwd agree
        ):
            print(f"{report.a:>8} vs {report.b:<12} {report.dtype}: {report.worst_rel:.1e}")
            assert report.ok, report
    mutation = mutate_op(softplus, jax.random.key(0))
    print(
        f"mutants: {mutation.made} made, {mutation.killed} caught, {len(mutation.survivors)} missed"
    )
    assert mutation.killed > 0 and not mutation.survivors
