"""Peers: the same networks trained by PyTorch eager autograd and by a hand-written NumPy MLP.

Both are optional (PyTorch is not a funcbp dependency: ``pip install torch==2.13.0``, a CPU
wheel). Each returns ``run(k)``, which does k SGD steps (forward, cross-entropy, backward,
update) on one fixed batch and returns when they are done; the suite times them in their own
block, after all JAX timing, because PyTorch's OpenMP workers keep spinning after a step and
slow whatever runs next (``/work/shared/BENCHMARKING.md``).

* PyTorch: ``nn.Sequential`` of the same layers (the CNN in NCHW), ``torch.optim.SGD``,
  ``F.cross_entropy``; the step is ``zero_grad(set_to_none=True)``, forward, ``backward``,
  ``step`` — no guard or metrics, so it is compared with the ``lean`` JAX step as well.
* NumPy (MLP only): forward keeping each layer's input, softmax cross-entropy, the classic
  backward ``dZ = P − onehot(y)``, ``dW = Hᵀ dZ``, ``dH = dZ Wᵀ ⊙ [H > 0]`` in float32 with
  OpenBLAS GEMMs, and an in-place update; like XLA it skips the input's gradient.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import numpy as np

from benchmarks.models import LEARNING_RATE, ModelSpec

__all__ = ["have_torch", "torch_runner", "numpy_runner", "numpy_mlp_grads", "usable_cores"]


def have_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def _torch_model(spec: ModelSpec):
    import torch
    from torch import nn as tnn

    if spec.kind == "mlp":
        layers, width = [], spec.input_shape[-1]
        for i, out in enumerate(spec.sizes):
            layers.append(tnn.Linear(width, out))
            if i < len(spec.sizes) - 1:
                layers.append(tnn.ReLU())
            width = out
        return tnn.Sequential(*layers)
    if spec.kind == "cnn":
        kw = dict(spec.cnn_kwargs)
        c1, c2 = kw.get("channels", (32, 64))
        hidden = kw.get("hidden", 128)
        h, w, c = spec.input_shape
        return tnn.Sequential(
            tnn.Conv2d(c, c1, 3, padding=1),
            tnn.BatchNorm2d(c1, momentum=0.1, eps=1e-5),
            tnn.ReLU(),
            tnn.Conv2d(c1, c2, 3, padding=1),
            tnn.ReLU(),
            tnn.MaxPool2d(2),
            tnn.Flatten(),
            tnn.Linear(c2 * (h // 2) * (w // 2), hidden),
            tnn.ReLU(),
            tnn.Dropout(kw.get("dropout", 0.25)),
            tnn.Linear(hidden, spec.n_classes),
        ).to(memory_format=torch.channels_last)
    return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def torch_runner(
    spec: ModelSpec, seed: int = 0, threads: int | None = None
) -> Callable[[int], None] | None:
    """``run(k)``: k PyTorch eager SGD steps of ``spec``'s network, or ``None`` if unavailable.

    ``threads``: PyTorch's intra-op threads, set at the start of every ``run`` (default: all
    usable cores, as JAX uses). On a busy 2-core machine one thread can be far faster: an
    OpenMP barrier waits for a worker the kernel has descheduled; the suite times both.
    """
    if not have_torch() or spec.kind not in ("mlp", "cnn"):
        return None
    import torch
    import torch.nn.functional as F

    threads = threads or usable_cores()
    torch.manual_seed(seed)
    model = _torch_model(spec)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    gen = torch.Generator().manual_seed(seed + 1)
    if spec.kind == "cnn":
        h, w, c = spec.input_shape
        x = torch.randn(spec.batch, c, h, w, generator=gen).to(memory_format=torch.channels_last)
    else:
        x = torch.randn(spec.batch, *spec.input_shape, generator=gen)
    y = torch.randint(0, spec.n_classes, (spec.batch,), generator=gen)

    def run(k: int) -> None:
        torch.set_num_threads(threads)
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

    return run


def numpy_mlp_grads(ws, bs, x, y):
    """Loss and gradients of a ReLU MLP with mean softmax cross-entropy, by hand in NumPy.

    ``ws[i]`` (I, O), ``bs[i]`` (O,), ``x`` (B, I) float32, ``y`` (B,) int. Returns
    ``(loss, dws, dbs)``. Backward: ``dZ = (P − onehot(y)) / B`` at the logits, then per layer
    ``dW = Hᵀ dZ``, ``db = Σ_batch dZ``, ``dH = dZ Wᵀ ⊙ [H > 0]`` (H the layer's input, a ReLU
    output); the first layer's input gradient is skipped.
    """
    last = len(ws) - 1
    rows = np.arange(x.shape[0])
    hs = [x]  # each layer's input: needed for dW, and (as a ReLU output) for the mask
    h = x
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        z = h @ w
        z += b
        h = z if i == last else np.maximum(z, 0, out=z)
        if i < last:
            hs.append(h)
    z = h - h.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(s[:, 0]) - z[rows, y]))
    dz = e / s
    dz[rows, y] -= 1.0
    dz *= np.asarray(1.0 / x.shape[0], dz.dtype)
    dws, dbs = [None] * len(ws), [None] * len(ws)
    for i in range(last, -1, -1):
        dws[i] = hs[i].T @ dz
        dbs[i] = dz.sum(axis=0)
        if i > 0:
            dh = dz @ ws[i].T
            dh *= hs[i] > 0
            dz = dh
    return loss, dws, dbs


def numpy_runner(spec: ModelSpec, seed: int = 0) -> Callable[[int], None] | None:
    """``run(k)``: k SGD steps of the MLP with a hand-written NumPy backward (MLPs only)."""
    if spec.kind != "mlp":
        return None
    gen = np.random.default_rng(seed)
    widths = [spec.input_shape[-1], *spec.sizes]
    ws = [
        (gen.standard_normal((i, o), dtype=np.float32) * np.float32(np.sqrt(2.0 / i)))
        for i, o in zip(widths[:-1], widths[1:], strict=True)
    ]
    bs = [np.zeros(o, np.float32) for o in widths[1:]]
    x = gen.standard_normal((spec.batch, widths[0]), dtype=np.float32)
    y = gen.integers(0, spec.n_classes, spec.batch)
    lr = np.float32(LEARNING_RATE)

    def run(k: int) -> None:
        for _ in range(k):
            _, dws, dbs = numpy_mlp_grads(ws, bs, x, y)
            for w, b, dw, db in zip(ws, bs, dws, dbs, strict=True):
                w -= lr * dw
                b -= lr * db

    return run
