"""``funcbp train``: any task through the one run path, with a start-up gradient check.

Writes into ``--out`` (default ``runs/<task>-<time>/``): ``run.json`` (what is run, written once
all options and data are validated), ``checkpoint.npz`` (atomically, every epoch),
``metrics.json`` and ``curves.png``.
"""

from __future__ import annotations

import time

from funcbp.cli.common import Progress, fail, plot_curves
from funcbp.cli.options import given_options, readers

__all__ = ["run_train"]


def _check_lines(reports) -> None:
    for r in reports:
        print(
            f"gradient check {r.a:>8} vs autodiff [{r.dtype}]: max rel error "
            f"{r.worst_rel:.2e} over {len(r.leaves)} params (tol {r.tol:.0e}) "
            f"{'ok' if r.ok else 'FAIL'}"
        )


def _summary(reports, note: str = "") -> dict:
    out = {
        f"{r.a}_vs_autodiff_{r.dtype}": {
            "max_rel": r.worst_rel,
            "tol": r.tol,
            "ok": r.ok,
            "per_param": {leaf.path: leaf.rel for leaf in r.leaves},
        }
        for r in reports
    }
    return out | ({"note": note} if note else {})


def gradient_check(run, params, state) -> tuple[bool, dict]:
    """Hand and explicit vs autodiff on one batch (float32 and float64), printed. When it fails
    only because inputs sit exactly at a kink (ReLU at 0), say so and check a nudged batch."""
    import jax

    from funcbp import check
    from funcbp.check.kinks import kinks, nudge

    n, key = run.options["check_batch"], jax.random.key(run.options["seed"])
    x, y = run.data.x_train[:n], run.data.y_train[:n]
    kw = dict(loss=run.task.loss_for(run.options), name=run.task.name, key=key)
    reports = check.check_model(run.model, params, state, x, y, **kw)
    _check_lines(reports)
    if all(r.ok for r in reports):
        return True, _summary(reports)
    at = kinks(run.model, params, state, x, key=key)
    if not at:
        return False, _summary(reports)
    note = (
        f"{sum(at.values())} inputs sit exactly at a kink ({', '.join(at)}), where the "
        f"derivative is undefined and hand (0) and autodiff (1/2) legitimately differ"
    )
    print(f"gradient check: {note}; checking again on the batch nudged by 1e-3·N(0, 1)")
    reports = check.check_model(run.model, params, state, nudge(x, key), y, **kw)
    _check_lines(reports)
    return all(r.ok for r in reports), _summary(reports, note)


def _curves(run, metrics, history) -> None:
    labels = run.task.labels
    plot_curves(
        history,
        run.out / "curves.png",
        test_label=labels.get("test", "test"),
        loss_label=labels.get("loss", "loss"),
        accuracy_label=labels.get("accuracy", "accuracy"),
        log_loss=run.task.log_loss,
        floor=metrics.get("loss_floor"),
        floor_label=labels.get("floor", "floor"),
        title=f"{run.model.name}: test accuracy {metrics['test_accuracy']:.3f}",
    )


def _start_distributed(given: dict) -> None:
    """``--distributed``: join the multi-process run before any other JAX work."""
    launch = ("coordinator", "num_processes", "process_id")
    if not given.get("distributed"):
        for name in launch:
            if name in given:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} is an option of a --distributed run")
        return
    from funcbp.training import distributed

    distributed.initialize(*(given.get(name) for name in launch))


def run_train(args) -> int:
    """The train command: 0 on success, 1 if the gradient check failed or training met
    NaN/Inf, 2 for bad options, data or folder."""
    import jax

    from funcbp.tasks import TASKS
    from funcbp.tasks import run as runs

    t0 = time.perf_counter()
    task, given = TASKS[args.task], given_options(args)
    try:
        _start_distributed(given)
        jax.config.update("jax_enable_x64", True)  # the float64 gradient check; training is f32
        run = runs.prepare(task, given, readers=readers())
    except (ValueError, TypeError, OSError) as e:
        return fail(f"funcbp train: {e}")
    try:
        return _train(run, t0)
    finally:
        run.close()


def _train(run, t0) -> int:
    import jax

    from funcbp.tasks import run as runs
    from funcbp.training.loop import NonFiniteError

    params, state = runs.initial_params(run)
    ok, grad_check = gradient_check(run, params, state)
    print(
        f"training {run.model.name} on {run.info['name']}: {len(run.data.x_train)} train / "
        f"{len(run.data.x_test)} test, source={run.options['source']}, out={run.out}"
    )
    hook = run.task.epoch_fields
    fields = None if hook is None else (lambda r: hook(r, run.options, run.info))
    events = Progress(not run.options["no_progress"], fields)
    try:
        result = runs.train(run, events)
    except NonFiniteError as e:
        return fail(f"funcbp train: {e}", 1)
    except ValueError as e:
        return fail(f"funcbp train: {e}")
    finally:
        events.stop()
    metrics = runs.finish(run, result, time.perf_counter() - t0, {"gradient_check": grad_check})
    if result.history["epoch"] and jax.process_index() == 0:
        _curves(run, metrics, result.history)
    examples = f"; e.g. {', '.join(metrics['examples'])}" if metrics.get("examples") else ""
    if metrics.get("summary"):
        print(metrics["summary"])
    print(
        f"test accuracy {metrics['test_accuracy']:.4f} after {result.epochs_run} epochs in "
        f"{metrics['seconds']:.1f} s ({metrics['steps_per_second']:.0f} steps/s){examples}; "
        f"wrote {run.out}/run.json, metrics.json, curves.png, checkpoint.npz"
    )
    return 0 if ok else 1
