"""The ``funcbp`` command: ``check``, ``train``, ``generate``, ``bench``. Thin over the library:
this package is the only place that parses arguments and prints."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

__all__ = ["build_parser", "main"]


def _check_arguments(p: argparse.ArgumentParser) -> None:
    from funcbp.tasks import TASKS

    p.add_argument("--ops", nargs="*", help="only these ops (default: the whole registry)")
    p.add_argument("--seeds", type=int, default=3, help="random draws per op and dtype")
    p.add_argument(
        "--deep", action="store_true", help="at least 20 random draws per op and dtype (default: 3)"
    )
    p.add_argument(
        "--forward",
        action="store_true",
        help="also the hand JVPs: vs jax.jvp of the reference (f32, f64) and the "
        "transpose identity with the hand VJP (f64), and jacfwd vs jacrev",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help="processes for the op table (default: 2 where 2 cores are free, else 1); "
        "checking is bound by Python tracing, so a second core needs a second process",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="compile everything afresh (default: JAX's persistent compilation "
        "cache in $FUNCBP_CACHE or ~/.cache/funcbp/jax)",
    )
    p.add_argument(
        "--model",
        choices=sorted(TASKS),
        default=None,
        help="whole-network divergence report of a task's model: hand vs autodiff "
        "gradient of every leaf layer's input and parameters, naming the first "
        "layer that diverges",
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
    p.add_argument(
        "--precision",
        choices=("bf16", "f16"),
        default=None,
        help="each op in bfloat16/float16: hand VJP error vs autodiff's, both against float64 "
        "(FlashAttention's rule: ratio <= 2); --seeds draws are pooled",
    )


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="the folder of a `funcbp train` run (or its checkpoint.npz)",
    )
    p.add_argument(
        "--prompt",
        required=True,
        nargs="+",
        help="one or more prompts, e.g. '12+34=' for the gpt task, 'def fib(n):' for llama",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="tokens to generate per prompt (default: the task's: gpt the answer, llama 200)",
    )
    p.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)"
    )
    p.add_argument(
        "--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: all)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling draws")


def build_parser(*, bench: bool = True) -> argparse.ArgumentParser:
    """The ``funcbp`` parser. ``bench=False`` leaves the benchmark suite's options out (they
    import ``benchmarks/``, which only ``funcbp bench`` needs)."""
    from funcbp.cli.bench import add_bench_arguments, run_bench
    from funcbp.cli.check import run_check
    from funcbp.cli.generate import run_generate
    from funcbp.cli.options import add_train_arguments
    from funcbp.cli.train import run_train

    parser = argparse.ArgumentParser(prog="funcbp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="check every op's hand VJP against jax.grad and FD")
    _check_arguments(p)
    p.set_defaults(func=run_check)
    p = sub.add_parser("train", help="train a task's model with hand VJPs (default: mlp)")
    add_train_arguments(p)
    p.set_defaults(func=run_train)
    p = sub.add_parser("generate", help="continue prompts with a trained run's model")
    _generate_arguments(p)
    p.set_defaults(func=run_generate)
    p = sub.add_parser("bench", help="benchmarks: hand VJP vs autodiff (and peers)")
    if bench:
        add_bench_arguments(p)
    p.set_defaults(func=run_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. An unexpected error is one line on stderr (set
    ``FUNCBP_DEBUG=1`` for the traceback), never a raw traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(bench=argv[:1] == ["bench"]).parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"funcbp {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (the last line of defence of a CLI)
        if os.environ.get("FUNCBP_DEBUG"):
            traceback.print_exc()
        print(
            f"funcbp {args.command}: internal error: {type(e).__name__}: {e} (set "
            f"FUNCBP_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
