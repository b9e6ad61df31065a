"""Losses (scalar outputs, means over samples): mse, softmax cross-entropy, BCE with logits."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcbp.ops import _sample
from funcbp.ops._checks import (
    is_concrete,
    require_float,
    require_ndim,
    require_same_dtype,
    require_shape,
)
from funcbp.ops._op import Op, register
from funcbp.ops._precision import acc_dtype
from funcbp.ops.softmax import log_softmax_reference

__all__ = ["mse", "softmax_cross_entropy", "binary_cross_entropy_with_logits"]


# -- mse -----------------------------------------------------------------------------------
def mse_reference(pred, target):
    """pred, target: same shape -> scalar.  L = (1/n) Σ (pred − target)²."""
    return jnp.mean((pred - target) ** 2)


def mse_fwd(pred, target):
    """Keeps the difference d = pred − target (one array instead of two)."""
    d = pred - target
    return jnp.mean(d * d), (d,)


def mse_bwd(res, g):
    """dpred = g · 2 d / n;  dtarget = −dpred."""
    (d,) = res
    dpred = g * (2 / d.size) * d
    return dpred, -dpred


def mse_jvp(primals, tangents):
    """dL = (2/n) Σ d ⊙ (dpred − dtarget),  d = pred − target.

    L = (1/n) Σ d² and dd = dpred − dtarget, so dL = (1/n) Σ 2 d dd: a scalar, one dot product.
    """
    pred, target = primals
    dpred, dtarget = tangents
    d = pred - target
    return jnp.mean(d * d), (2 / d.size) * jnp.sum(d * (dpred - dtarget))


def _validate_mse(pred, target):
    require_float("mse", "pred", pred)
    require_float("mse", "target", target)
    require_shape("mse", "target", target, pred.shape, "the shape of pred")
    require_same_dtype("mse", pred=pred, target=target)
    if pred.size == 0:
        raise ValueError(f"mse: pred must not be empty, got shape {pred.shape}")


def _sample_mse(key, dtype):
    gen = _sample.rng(key)
    shape = (*_sample.batch_shape(gen, max_dims=2), int(gen.integers(1, 6)))
    k1, k2 = jax.random.split(key)
    return (_sample.normal(k1, shape, dtype), _sample.normal(k2, shape, dtype)), {}


mse = register(
    Op("mse", mse_reference, mse_fwd, mse_bwd, _sample_mse, 2, _validate_mse, jvp=mse_jvp)
)


# -- softmax_cross_entropy -----------------------------------------------------------------
def _label_valid(labels, n_classes):
    return (labels >= 0) & (labels < n_classes)


def softmax_cross_entropy_reference(logits, labels):
    """logits (..., C); labels int (...) or float (..., C) -> scalar mean over the ... positions.

    Integer labels:  L = −(1/N) Σ_n log softmax(z_n)[y_n].
    Float labels q (one-hot or soft):  L = −(1/N) Σ_n Σ_c q_nc log softmax(z_n)_c.
    An integer label outside [0, C) gives NaN (the trainer's NaN guard reports it); concrete
    out-of-range labels are rejected with an error before that.
    """
    logp = log_softmax_reference(logits, -1)  # (..., C)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        n_classes = logits.shape[-1]
        valid = _label_valid(labels, n_classes)
        picked = jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)
        nll = jnp.where(valid, -picked[..., 0], jnp.nan)  # (...)
        return jnp.mean(nll)
    return -jnp.mean(jnp.sum(labels * logp, axis=-1))


def softmax_cross_entropy_fwd(logits, labels):
    """Keeps log p = log_softmax(z) and the labels: p = e^{log p} and, for soft labels, the
    gradient with respect to the labels (−log p / N) both come from log p."""
    loss = softmax_cross_entropy_reference(logits, labels)
    return loss, (log_softmax_reference(logits, -1), labels)


def softmax_cross_entropy_bwd(res, g):
    """dz = g (p Σ_c q − q) / N;  dq = −g log p / N  (float labels; integer labels get None).

    With L_n = −Σ_c q_c (z_c − lse(z)) and ∂lse/∂z_k = p_k:  ∂L_n/∂z_k = −q_k + p_k Σ_c q_c,
    which is p − onehot(y) for integer labels. It is computed in two steps, as the chain rule
    reads: dL/d(log p) = −(g/N)·[c = y] (the one-hot written as ``iota == y``, no one-hot array
    or scatter), then log-softmax's VJP dz = d − p Σ_c d_c. A row whose label is out of range
    has a NaN loss that does not depend on the logits: its d is 0, hence dz = 0 (as jax.grad of
    the reference gives). Written this way XLA keeps one activation buffer fewer in a whole
    MLP train step at large batch than with ``p − (iota == y)`` in one expression (the same
    gradient; benchmarks/RESULTS.md, "MLP sweep: the linear and softmax-CE backward forms").
    """
    logp, labels = res  # (..., C), (...) or (..., C)
    p = jnp.exp(logp)  # (..., C)
    n = math.prod(logp.shape[:-1])
    scale = g / n
    if jnp.issubdtype(labels.dtype, jnp.integer):
        hit = lax.broadcasted_iota(labels.dtype, p.shape, p.ndim - 1) == labels[..., None]
        dlogp = jnp.where(hit, -scale, jnp.zeros((), p.dtype)).astype(p.dtype)  # (..., C)
        return dlogp - p * jnp.sum(dlogp, axis=-1, keepdims=True), None
    dz = p * jnp.sum(labels, axis=-1, keepdims=True) - labels
    return scale * dz, -scale * logp


def softmax_cross_entropy_jvp(primals, tangents):
    """dL = (1/N) Σ_n [ (Σ_c q_nc) ⟨p_n, dz_n⟩ − ⟨q_n, dz_n⟩ − ⟨dq_n, log p_n⟩ ].

    log p = z − lse(z) moves by d log p = dz − ⟨p, dz⟩ (see `log_softmax_jvp`), so with
    L_n = −⟨q_n, log p_n⟩ the product rule gives dL_n = −⟨dq_n, log p_n⟩ − ⟨q_n, dz_n⟩ +
    (Σ_c q_nc) ⟨p_n, dz_n⟩. Integer labels are a one-hot q (Σ_c q = 1, no tangent):
    dL_n = ⟨p_n, dz_n⟩ − dz_n[y_n]. A row with an out-of-range label has a NaN loss that does
    not depend on the logits: its tangent is 0 (the VJP's rule, read forwards).
    """
    logits, labels = primals
    dlogits, dlabels = tangents
    logp = log_softmax_reference(logits, -1)  # (..., C)
    p = jnp.exp(logp)  # (..., C)
    p_dz = jnp.sum(p * dlogits, axis=-1)  # (...)
    loss = softmax_cross_entropy_reference(logits, labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        valid = _label_valid(labels, logits.shape[-1])  # (...)
        picked = jnp.take_along_axis(dlogits, jnp.where(valid, labels, 0)[..., None], axis=-1)
        dnll = jnp.where(valid, p_dz - picked[..., 0], jnp.zeros((), dlogits.dtype))  # (...)
        return loss, jnp.mean(dnll)
    total = jnp.sum(labels, axis=-1)  # (...)
    dnll = total * p_dz - jnp.sum(labels * dlogits + dlabels * logp, axis=-1)  # (...)
    return loss, jnp.mean(dnll)


def _validate_sce(logits, labels):
    op = "softmax_cross_entropy"
    require_float(op, "logits", logits)
    require_ndim(op, "logits", logits, (1, None), "(..., C)")
    if logits.size == 0:  # the mean over no positions (or log softmax over no classes) is NaN
        raise ValueError(
            f"{op}: logits must not be empty, got shape {tuple(logits.shape)}; need at least "
            f"one position and one class (an empty batch has no mean loss)"
        )
    if hasattr(labels, "dtype") and jnp.issubdtype(labels.dtype, jnp.integer):
        if tuple(labels.shape) != tuple(logits.shape[:-1]):
            raise ValueError(
                f"{op}: integer labels must have shape {tuple(logits.shape[:-1])} (the logits' "
                f"shape {tuple(logits.shape)} without the class axis), got {tuple(labels.shape)}"
            )
        if is_concrete(labels) and labels.size:
            lab = np.asarray(labels)
            if lab.min() < 0 or lab.max() >= logits.shape[-1]:
                raise ValueError(
                    f"{op}: labels must lie in [0, {logits.shape[-1]}) for {logits.shape[-1]} "
                    f"classes, got values in [{lab.min()}, {lab.max()}]"
                )
        return
    require_float(op, "labels", labels)
    if tuple(labels.shape) != tuple(logits.shape):
        raise ValueError(
            f"{op}: float labels (one-hot or soft) must have the logits' shape "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}; integer class ids need an "
            f"integer dtype"
        )
    require_same_dtype(op, logits=logits, labels=labels)


def _sample_sce(key, dtype):
    gen = _sample.rng(key)
    lead = (int(gen.integers(1, 7)),) if gen.integers(0, 3) else (2, int(gen.integers(1, 4)))
    n_classes = int(gen.integers(2, 7))
    k1, k2 = jax.random.split(key)
    logits = _sample.normal(k1, (*lead, n_classes), dtype, scale=2.0)
    if gen.integers(0, 2):
        labels = _sample.host(gen.integers(0, n_classes, size=lead), jnp.int32)
    else:  # soft labels: a softmax of random logits, computed on the host (no compile per shape)
        z = np.asarray(_sample.normal(k2, (*lead, n_classes), jnp.float64, scale=2.0))
        q = np.exp(z - z.max(axis=-1, keepdims=True))
        labels = _sample.host(q / q.sum(axis=-1, keepdims=True), dtype)
    return (logits, labels), {}


softmax_cross_entropy = register(
    Op(
        "softmax_cross_entropy",
        softmax_cross_entropy_reference,
        softmax_cross_entropy_fwd,
        softmax_cross_entropy_bwd,
        _sample_sce,
        2,
        _validate_sce,
        jvp=softmax_cross_entropy_jvp,
    )
)


# -- binary_cross_entropy_with_logits ------------------------------------------------------
def binary_cross_entropy_with_logits_reference(logits, targets):
    """logits, targets: same shape -> scalar.

    L = (1/n) Σ [max(z, 0) − z t + log(1 + e^{−|z|})], the stable form of
    −t log σ(z) − (1 − t) log(1 − σ(z)): no exp overflows for any |z|.
    """
    z, t = logits, targets
    return jnp.mean(jnp.maximum(z, 0) - z * t + jnp.log1p(jnp.exp(-jnp.abs(z))))


def binary_cross_entropy_with_logits_fwd(logits, targets):
    """Keeps z and t: σ(z) is recomputed in the backward (one exp, cheaper than storing)."""
    return binary_cross_entropy_with_logits_reference(logits, targets), (logits, targets)


def binary_cross_entropy_with_logits_bwd(res, g):
    """dz = g (σ(z) − t) / n;  dt = −g z / n.

    d/dz [max(z,0) + log(1 + e^{−|z|})] = σ(z) on both sides of 0, so dz = σ(z) − t.
    Half-precision inputs are computed in float32 and rounded once: σ(z) − t cancels where
    σ(z) ≈ t, and rounding σ(z) and g/n first lost digits autodiff keeps (`funcbp check
    --precision bf16`: 2.2× its error before, 1× after).
    """
    z, t = res
    acc = acc_dtype(z)  # z's own dtype for float32/float64
    scale = g.astype(acc) / z.size
    dz = scale * (jax.nn.sigmoid(z.astype(acc)) - t.astype(acc))
    return dz.astype(z.dtype), (-scale * z.astype(acc)).astype(t.dtype)


def binary_cross_entropy_with_logits_jvp(primals, tangents):
    """dL = (1/n) Σ [(σ(z) − t) ⊙ dz − z ⊙ dt].

    Per entry ℓ = max(z, 0) − z t + log(1 + e^{−|z|}): ∂ℓ/∂z = σ(z) − t on both sides of 0
    (see the backward) and ∂ℓ/∂t = −z; the mean divides by n.
    """
    z, t = primals
    dz, dt = tangents
    loss = binary_cross_entropy_with_logits_reference(z, t)
    return loss, jnp.mean((jax.nn.sigmoid(z) - t) * dz - z * dt)


def _validate_bce(logits, targets):
    op = "binary_cross_entropy_with_logits"
    require_float(op, "logits", logits)
    require_float(op, "targets", targets)
    require_shape(op, "targets", targets, logits.shape, "the shape of logits")
    require_same_dtype(op, logits=logits, targets=targets)
    if logits.size == 0:
        raise ValueError(f"{op}: logits must not be empty, got shape {logits.shape}")


def _sample_bce(key, dtype):
    gen = _sample.rng(key)
    shape = (*_sample.batch_shape(gen, max_dims=2), int(gen.integers(1, 6)))
    k1, k2 = jax.random.split(key)
    logits = _sample.away_from_zero(k1, shape, dtype, 0.05, 4.0)  # |z| kink of the stable form
    targets = _sample.uniform(k2, shape, dtype)
    return (logits, targets), {}


binary_cross_entropy_with_logits = register(
    Op(
        "binary_cross_entropy_with_logits",
        binary_cross_entropy_with_logits_reference,
        binary_cross_entropy_with_logits_fwd,
        binary_cross_entropy_with_logits_bwd,
        _sample_bce,
        2,
        _validate_bce,
        jvp=binary_cross_entropy_with_logits_jvp,
    )
)
