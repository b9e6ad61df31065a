"""What the ``funcbp`` subcommands share: error exits, the console, the progress bar, the
loss/accuracy curves and the gradient-check lines. Heavy imports (rich, matplotlib) stay inside
the functions so that ``funcbp --help`` starts fast."""

from __future__ import annotations

import sys
from pathlib import Path

from funcbp.training.loop import Events

__all__ = ["Progress", "console", "fail", "plot_curves"]


def fail(message: str, code: int = 2) -> int:
    """Print ``message`` to stderr and return the exit ``code`` (2: bad options or input)."""
    print(message, file=sys.stderr)
    return code


def console(**kw):
    """A rich console that never truncates: when stdout is not a terminal (``funcbp check >
    log.txt``) it is as wide as the content needs instead of 80 columns."""
    from rich.console import Console

    if not sys.stdout.isatty():
        kw.setdefault("width", 240)
    return Console(**kw)


class Progress(Events):
    """`funcbp.training.loop`'s events as a rich progress bar and one line per epoch."""

    def __init__(self, enabled: bool = True, fields=None):
        """``fields(record) -> {label: text}``: a task's extras for each epoch's line."""
        self.enabled, self.bar, self.task, self.fields = enabled, None, None, fields

    def start(self, epochs: int, steps_per_epoch: int) -> None:
        if not self.enabled or epochs <= 0:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=console(),  # unwrapped epoch lines when the output is a file
        )
        self.task = self.bar.add_task("train", total=epochs * steps_per_epoch, metrics="")
        self.bar.start()

    def steps(self, k: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, k)

    def epoch(self, r: dict) -> None:
        if self.bar is not None:
            text = (
                f"epoch {r['epoch']}: loss {r['train_loss']:.4f} acc {r['train_accuracy']:.3f} "
                f"| test loss {r['test_loss']:.4f} acc {r['test_accuracy']:.3f}"
            )
            if self.fields is not None:
                text += "".join(f" | {k} {v}" for k, v in self.fields(r).items())
            self.bar.update(self.task, metrics=text)
            self.bar.console.print(text)

    def log(self, message: str) -> None:
        print(message)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


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
