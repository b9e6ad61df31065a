"""``funcbp check``: every op's hand VJP vs jax.grad and finite differences (the default),
a whole model's divergence report (``--model``), mutation testing of the checker
(``--mutants``), calibrated float32 tolerances (``--calibrate``) and each op's error in
bfloat16/float16 against autodiff's (``--precision bf16``) — rendered as tables.

Exit status: 0 all pass, 1 something failed, 2 bad arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

from funcbp.cli.common import console, fail

__all__ = ["run_check"]


def _ops(names: Sequence[str] | None, what: str):
    """The registry's ops named (default: all), or None after printing the error."""
    from funcbp.ops import REGISTRY

    names = list(names) if names else list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        fail(f"funcbp check{what}: unknown op(s) {unknown}; known: {sorted(REGISTRY)}")
        return None
    return [REGISTRY[n] for n in names]


def _table(title: str, columns: Sequence[str], right: Sequence[str] = ()):
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", no_wrap=True)
    return table


def _mark(ok: bool) -> str:
    return "[green]pass[/green]" if ok else "[red]FAIL[/red]"


def _op_table(reports, seeds: int):
    table = _table(
        f"funcbp check: hand VJP vs jax.grad and finite differences (worst of {seeds} draws)",
        ("op", "dtype", "vs", "rel error", "max abs", "tol", "", "worst input"),
        ("rel error", "max abs", "tol"),
    )
    for r in reports:
        table.add_row(
            r.name,
            r.dtype,
            r.b,
            f"{r.worst_rel:.2e}",
            f"{r.worst_abs:.2e}",
            f"{r.tol:.0e}",
            _mark(r.ok),
            r.detail,
        )
    return table


def _divergence_table(report):
    """A rich `Table` of a `funcbp.check.diverge.DivergenceReport`, the first divergence marked."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    first = report.first_divergence
    where = "none" if first is None else f"layer {first.index} ({first.name})"
    table = Table(
        title=f"{report.model} ({report.dtype}): hand ({report.source}) vs autodiff, loss "
        f"{report.loss:.4g}, tol {report.rows[0].tol:.0e}; first divergence: {where}",
        caption="relative errors, from the loss backwards; local = the layer's hand backward "
        "fed the true dL/dout",
        box=box.SIMPLE_HEAD,
    )
    for col in ("#", "path", "layer", "dL/dout", "dL/dW", "dL/din", "local dW", "local din", ""):
        table.add_column(
            col, justify="left" if col in ("path", "layer", "") else "right", no_wrap=True
        )
    fmt = lambda e: "—" if e is None else f"{e:.1e}"
    for row in report.rows:
        mark = "[green]ok[/green]" if row.ok else "[red]DIVERGES[/red]"
        if first is not None and row.index == first.index:
            mark = "[red bold]FIRST[/red bold]"
        name = row.name + (f" ({row.worst_param})" if row.worst_param else "")
        table.add_row(
            str(row.index),
            escape(row.path),
            escape(name),
            fmt(row.dy),
            fmt(row.dparams),
            fmt(row.dx),
            fmt(row.local_dparams),
            fmt(row.local_dx),
            mark,
        )
    return table


def _mutation_table(results):
    table = _table(
        "funcbp mutation testing: broken backwards the checker must flag",
        ("op", "made", "killed", "equivalent", "survived", "equivalent mutants (why)"),
        ("made", "killed", "equivalent", "survived"),
    )
    for r in results:
        why = "; ".join(f"{e.name.split(':', 1)[1]}: {e.reason}" for e in r.equivalent)
        surv = ", ".join(s.name.split(":", 1)[1] for s in r.survivors)
        table.add_row(
            r.op,
            str(r.made),
            str(r.killed),
            str(len(r.equivalent)),
            f"[red]{len(r.survivors)} {surv}[/red]" if r.survivors else "0",
            why,
        )
    totals = [
        sum(r.made for r in results),
        sum(r.killed for r in results),
        sum(len(r.equivalent) for r in results),
        sum(len(r.survivors) for r in results),
    ]
    table.add_row("[b]total[/b]", *map(str, totals), "")
    return table


def _calibration_table(calibrations):
    from funcbp.check.calibrate import FACTOR, FLOOR

    table = _table(
        f"float32 tolerances calibrated on the reference's own error (tol = max({FACTOR:g} × "
        f"ref, {FLOOR:.1e}))",
        ("op", "ref f32 err", "calibrated tol", "fixed tol", "hand f32 err", ""),
        ("ref f32 err", "calibrated tol", "fixed tol", "hand f32 err"),
    )
    for c in calibrations:
        table.add_row(
            c.op,
            f"{c.reference:.1e}",
            f"{c.tol:.1e}",
            f"{c.fixed:.0e}",
            f"{c.hand:.1e}",
            _mark(c.ok),
        )
    return table


def _precision_table(reports, draws: int):
    from funcbp.check.precision import FLOOR, RULE

    table = _table(
        f"funcbp check --precision {reports[0].dtype if reports else ''}: hand VJP vs jax.grad "
        f"of the reference, both in that dtype, errors vs float64 ({draws} draws pooled; rule: "
        f"hand <= {RULE:g} x autodiff + {FLOOR:.0e})",
        ("op", "worst array", "hand error", "autodiff error", "ratio", ""),
        ("hand error", "autodiff error", "ratio"),
    )
    for r in reports:
        w = r.worst
        table.add_row(r.name, w.name, f"{w.hand:.2e}", f"{w.autodiff:.2e}", f"{w.ratio:.2f}",
                      _mark(r.ok))  # fmt: skip
    return table


def check_precision(ops, precision: str, draws: int, print_fn=None) -> int:
    """``funcbp check --precision bf16|f16``: the precision report of ``ops``; 0 when every op
    meets the rule, 1 otherwise."""
    from funcbp.check.precision import check_registry_precision
    from funcbp.training.precision import get_policy

    print_fn = print_fn or console().print
    reports = check_registry_precision(get_policy(precision).compute_dtype, draws=draws, ops=ops)
    print_fn(_precision_table(reports, draws))
    failed = [r.name for r in reports if not r.ok]
    print_fn(f"{len(reports) - len(failed)} passed, {len(failed)} failed {failed or ''}")
    return 1 if failed else 0


def check_model(name: str, *, seed: int = 0, batch: int = 32, print_fn=None) -> int:
    """``funcbp check --model NAME``: the divergence report of a task's model (float64 and
    float32), one table each; 0 when hand and autodiff agree everywhere, 1 otherwise."""
    import jax

    from funcbp.check.diverge import divergence_report
    from funcbp.tasks import TASKS
    from funcbp.tasks.run import problem

    print_fn = print_fn or console().print
    if name not in TASKS:
        print_fn(f"funcbp check --model: unknown model {name!r}; known: {sorted(TASKS)}")
        return 2
    model, params, state, x, y = problem(TASKS[name], seed=seed, batch=batch)
    code = 0
    for dtype in ("float64", "float32"):
        report = divergence_report(
            model, params, state, x, y, loss=TASKS[name].loss, key=jax.random.key(seed), dtype=dtype
        )
        print_fn(_divergence_table(report))
        code = max(code, 0 if report.ok else 1)
    return code


def _compile_cheaply(cache: bool) -> None:
    """Checks run tiny programs many times over: compile them cheaply (`funcbp.check.
    fast_compile`) and keep them in JAX's persistent compilation cache (``$FUNCBP_CACHE`` or
    ``~/.cache/funcbp/jax``), so a second ``funcbp check`` — after editing one op, say —
    recompiles only what changed."""
    import os
    from pathlib import Path

    from funcbp.check.fast_compile import compile_cheaply

    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    folder = os.environ.get("FUNCBP_CACHE") or str(Path(base) / "funcbp" / "jax")
    compile_cheaply(folder if cache else None)


def _forward_table(reports, seeds: int):
    table = _table(
        f"funcbp check --forward: hand JVP vs jax.jvp, and ⟨JVP t, c⟩ = ⟨t, VJP c⟩ "
        f"(worst of {seeds} draws)",
        ("op", "dtype", "check", "rel error", "tol", "", "worst input"),
        ("rel error", "tol"),
    )
    for r in reports:
        table.add_row(
            r.name, r.dtype, r.b, f"{r.worst_rel:.2e}", f"{r.tol:.0e}", _mark(r.ok), r.detail
        )
    return table


def run_check(args) -> int:
    """The check command (see the module doc)."""
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 rows need it; float32 rows are unaffected
    _compile_cheaply(cache=not args.no_cache)
    if args.deep:
        args.seeds = max(args.seeds, 20)
    if args.seeds < 1:
        return fail(f"funcbp check: --seeds must be >= 1, got {args.seeds}")
    if args.processes is not None and args.processes < 1:
        return fail(f"funcbp check: --processes must be >= 1, got {args.processes}")
    if args.model:
        return check_model(args.model)
    what = " --mutants" if args.mutants else " --calibrate" if args.calibrate else ""
    ops = _ops(args.ops, what or (" --precision" if args.precision else ""))
    if ops is None:
        return 2
    if args.precision:
        return check_precision(ops, args.precision, args.seeds)
    out = console()
    if args.mutants:
        from funcbp.check.mutate import mutate_registry

        results = mutate_registry(jax.random.key(0), ops)
        out.print(_mutation_table(results))
        return 0 if all(r.ok for r in results) else 1
    if args.calibrate:
        from funcbp.check.calibrate import calibrate_registry

        cals = calibrate_registry(range(args.seeds), ops)
        out.print(_calibration_table(cals))
        return 0 if all(c.ok for c in cals) else 1
    from funcbp.check.parallel import check_registry_parallel

    names = [op.name for op in ops]
    seeds = range(args.seeds)
    reports = check_registry_parallel(
        names, ("float32", "float64"), seeds, processes=args.processes
    )
    out.print(_op_table(reports, args.seeds))
    if args.forward:
        from funcbp.check.jvp import check_jvp_registry

        forward = check_jvp_registry(("float32", "float64"), range(args.seeds), ops)
        out.print(_forward_table(forward, args.seeds))
        reports += forward
    failed = [r for r in reports if not r.ok]
    out.print(f"{len(reports) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
