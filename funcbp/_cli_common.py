"""What the ``funcbp`` subcommands share: error exits, the run folder, the start-up gradient
check and its report, metrics.json and the loss/accuracy curves.

Used by `funcbp.cli` (``funcbp check``), `funcbp.train_cli` (``funcbp train``) and
`funcbp.gpt_cli` (``funcbp train --model gpt``, ``funcbp generate``). Heavy imports (jax,
matplotlib) stay inside the functions so that ``funcbp --help`` starts fast.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

RESUME_NEEDS_OUT = "--resume needs --out (the folder of the run to continue)"


def fail(message: str, code: int = 2) -> int:
    """Print ``message`` to stderr and return the exit ``code`` (2: bad options or input)."""
    print(message, file=sys.stderr)
    return code


def run_folder(out: str | None, stamp: str) -> Path:
    """``out``, or ``runs/<time.strftime(stamp)>`` when it is None (or empty)."""
    return Path(out or Path("runs") / time.strftime(stamp))


def gradient_check(model, params, state, x, y, *, name: str, key=None):
    """Hand and explicit vs autodiff gradients of every parameter on one batch ``x, y``
    (`funcbp.check.check_model`), one printed line per report.

    Returns ``(reports, summary)``; ``summary`` is metrics.json's ``gradient_check``:
    ``{"<a>_vs_autodiff_<dtype>": {"max_rel", "tol", "ok", "per_param": {path: rel}}}``.
    """
    from funcbp import check

    reports = check.check_model(model, params, state, x, y, name=name, key=key)
    summary = {}
    for r in reports:
        summary[f"{r.a}_vs_autodiff_{r.dtype}"] = {
            "max_rel": r.worst_rel,
            "tol": r.tol,
            "ok": r.ok,
            "per_param": {leaf.path: leaf.rel for leaf in r.leaves},
        }
        print(
            f"gradient check {r.a:>8} vs autodiff [{r.dtype}]: max rel error "
            f"{r.worst_rel:.2e} over {len(r.leaves)} params (tol {r.tol:.0e}) "
            f"{'ok' if r.ok else 'FAIL'}"
        )
    return reports, summary


def environment() -> dict:
    """metrics.json's ``versions`` (jax, numpy) and ``device`` (the first device)."""
    import jax
    import numpy as np

    return {
        "versions": {"jax": jax.__version__, "numpy": np.__version__},
        "device": str(jax.devices()[0]),
    }


def write_metrics(out: Path, metrics: dict) -> Path:
    """Write ``metrics`` as ``out/metrics.json`` (indented, keys in the given order), creating
    ``out`` if needed; returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2))
    return path


def plot_curves(
    history,
    path: Path,
    *,
    test_label: str = "test",
    loss_label: str = "loss",
    accuracy_label: str = "accuracy",
    log_loss: bool = False,
    floor: float | None = None,
    floor_label: str = "floor",
    title: str | None = None,
) -> None:
    """Loss (left) and accuracy (right) per epoch, train and ``test_label``, saved as a PNG.

    ``history`` holds lists ``epoch``, ``train_loss``, ``test_loss``, ``train_accuracy``,
    ``test_accuracy``. ``floor``: a dashed horizontal line on the loss panel; ``log_loss``: a
    log loss axis; ``title``: a title over both panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = history["epoch"]
    a1.plot(epochs, history["train_loss"], label="train")
    a1.plot(epochs, history["test_loss"], label=test_label)
    if floor is not None:
        a1.axhline(floor, color="gray", linestyle="--", label=floor_label)
    a1.set_xlabel("epoch")
    a1.set_ylabel(loss_label)
    if log_loss:
        a1.set_yscale("log")
    a1.legend()
    a2.plot(epochs, history["train_accuracy"], label="train")
    a2.plot(epochs, history["test_accuracy"], label=test_label)
    a2.set_xlabel("epoch")
    a2.set_ylabel(accuracy_label)
    a2.legend()
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
