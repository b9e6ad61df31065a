"""The ``funcbp`` command: ``funcbp check``, ``funcbp train``. Thin over the library."""

from __future__ import annotations

import argparse
import sys

from funcbp._cli_common import fail

__all__ = ["main"]


def _cmd_check(args) -> int:
    import jax

    if args.model:
        from funcbp.diverge import check_model_cli

        return check_model_cli(args.model)
    if args.mutants:
        from funcbp.mutate import mutation_cli

        return mutation_cli(args.ops)
    if args.calibrate:
        from funcbp.calibrate import calibration_cli

        return calibration_cli(args.ops, seeds=args.seeds)

    jax.config.update("jax_enable_x64", True)  # float64 rows need it; float32 rows are unaffected
    from rich.console import Console
    from rich.table import Table

    from funcbp import check
    from funcbp.ops import REGISTRY

    names = args.ops or list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        return fail(f"funcbp check: unknown op(s) {unknown}; known: {sorted(REGISTRY)}")
    if args.seeds < 1:
        return fail(f"funcbp check: --seeds must be >= 1, got {args.seeds}")
    reports = check.check_registry(
        dtypes=("float32", "float64"),
        seeds=range(args.seeds),
        ops=[REGISTRY[n] for n in names],
    )
    table = Table(
        title=f"funcbp check: hand VJP vs jax.grad and finite differences "
        f"(worst of {args.seeds} random draws)"
    )
    for col in ("op", "dtype", "vs", "rel error", "max abs", "tol", "", "worst input"):
        table.add_column(col, justify="right" if col in ("rel error", "max abs", "tol") else "left")
    for r in reports:
        table.add_row(
            r.name,
            r.dtype,
            r.b,
            f"{r.worst_rel:.2e}",
            f"{r.worst_abs:.2e}",
            f"{r.tol:.0e}",
            "[green]pass[/green]" if r.ok else "[red]FAIL[/red]",
            r.detail,
        )
    console = Console()
    console.print(table)
    failed = [r for r in reports if not r.ok]
    console.print(f"{len(reports) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _cmd_train(args) -> int:
    from funcbp.train_cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="funcbp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="check every op's hand VJP against jax.grad and FD")
    p.add_argument("--ops", nargs="*", help="only these ops (default: the whole registry)")
    p.add_argument("--seeds", type=int, default=3, help="random draws per op and dtype")
    p.add_argument(
        "--model",
        choices=("mlp", "cnn", "gpt"),
        default=None,
        help="whole-network divergence report: hand vs autodiff gradient of every "
        "activation and parameter, naming the first layer that diverges",
    )
    p.add_argument(
        "--mutants",
        action="store_true",
        help="mutation test of the checker: broken bwd variants must all be caught",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="float32 tolerances calibrated from the reference's own f32 error",
    )
    p.set_defaults(func=_cmd_check)

    from funcbp.train_cli import add_arguments

    p = sub.add_parser("train", help="train a model with hand VJPs (default: MLP on digits)")
    add_arguments(p)
    p.set_defaults(func=_cmd_train)

    from funcbp.gpt_cli import add_generate_arguments, generate

    p = sub.add_parser("generate", help="answer addition prompts with a trained GPT")
    add_generate_arguments(p)
    p.set_defaults(func=generate)

    from funcbp.bench import add_bench_arguments, run_bench

    p = sub.add_parser("bench", help="benchmarks: hand VJP vs autodiff (and peers)")
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
