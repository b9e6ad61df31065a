"""``funcbp train``: train a model on bundled digits (or a user ``.npz``) with hand VJPs.

Writes into ``--out`` (default ``runs/<timestamp>/``): ``checkpoint.npz`` (params, optimizer
state, history; written atomically every epoch), ``metrics.json`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
import time

from funcbp import _cli_common as common

MODELS = ("mlp", "cnn", "gpt")
# defaults of the options the models share; the GPT has its own tuned ones (funcbp.gpt_cli)
DEFAULTS = {"epochs": 30, "batch_size": 32, "lr": 0.05, "weight_decay": 1e-4, "steps_per_call": 1}
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=MODELS, default="mlp", help="model (default: mlp)")
    p.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[128, 128],
        help="MLP hidden widths (default: 128 128)",
    )
    p.add_argument("--activation", default="relu", help="MLP activation (default: relu)")
    p.add_argument("--epochs", type=int, default=None, help="(default 30; gpt: its own)")
    p.add_argument("--batch-size", type=int, default=None, help="(default 32)")
    p.add_argument("--lr", type=float, default=None, help="learning rate η (default 0.05)")
    p.add_argument("--weight-decay", type=float, default=None, help="L2 factor λ (default 1e-4)")
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="sgd",
        help="sgd is the classic W ← W − η(dE/dW + λW) (default)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="digits", help="'digits' (bundled) or a FILE.npz")
    p.add_argument("--gradients", choices=("hand", "autodiff"), default="hand")
    p.add_argument(
        "--engine",
        choices=("grad", "explicit"),
        default="grad",
        help="grad: jax.grad through the custom VJPs; explicit: the reverse pass of "
        "funcbp.backprop (no autodiff)",
    )
    p.add_argument(
        "--steps-per-call",
        type=int,
        default=None,
        help="fuse k steps into one jitted call (lax.scan)",
    )
    p.add_argument("--out", default=None, help="output folder (default runs/<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="shard each batch over N devices (default: all local devices; on CPU "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N)",
    )
    p.add_argument(
        "--model-parallel",
        type=int,
        default=1,
        help="devices per model-parallel group: 2-D weights split over them",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: call jax.distributed.initialize() first (see README)",
    )
    p.add_argument(
        "--remat",
        type=int,
        default=0,
        help="rematerialise activations in segments of K layers (0: keep residuals)",
    )
    p.add_argument(
        "--remat-policy",
        default="nothing_saveable",
        help="jax.checkpoint policy name for --remat (default nothing_saveable)",
    )
    from funcbp.gpt_cli import add_gpt_arguments

    add_gpt_arguments(p)


def fill_defaults(args) -> None:
    """Options left unset take the MLP/CNN defaults (`DEFAULTS`)."""
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def validate_args(args) -> None:
    """Reject nonsensical settings before any work: ValueError naming the option."""
    import math

    fill_defaults(args)
    checks = [
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.lr > 0, f"--lr must be > 0, got {args.lr}"),  # NaN fails too; inf may diverge
        (
            math.isfinite(args.weight_decay) and args.weight_decay >= 0,
            f"--weight-decay must be a finite number >= 0, got {args.weight_decay}",
        ),
        (args.steps_per_call >= 1, f"--steps-per-call must be >= 1, got {args.steps_per_call}"),
        (all(h >= 1 for h in args.hidden), f"--hidden widths must be >= 1, got {args.hidden}"),
        (args.devices is None or args.devices >= 1, f"--devices must be >= 1, got {args.devices}"),
        (args.model_parallel >= 1, f"--model-parallel must be >= 1, got {args.model_parallel}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    from funcbp.nn.models import ACTIVATIONS

    if args.activation not in ACTIVATIONS:
        raise ValueError(
            f"--activation must be one of {sorted(ACTIVATIONS)}, got {args.activation!r}"
        )


def _optimizer(args):
    import optax

    from funcbp.train import classic_sgd

    if args.optimizer == "sgd":
        return classic_sgd(args.lr, args.weight_decay)
    if args.optimizer == "momentum":
        return optax.chain(
            optax.add_decayed_weights(args.weight_decay), optax.sgd(args.lr, momentum=0.9)
        )
    if args.optimizer == "adam":
        return optax.adam(args.lr)
    return optax.adamw(args.lr, weight_decay=args.weight_decay)


def _model(args, n_classes):
    from funcbp import nn

    if args.model == "cnn":
        model = nn.cnn(n_classes)
    else:
        model = nn.mlp([*args.hidden, n_classes], activation=args.activation)
    if args.remat:
        from funcbp.remat import remat_model

        model = remat_model(model, args.remat_policy, segment=args.remat)
    return model


def run(args) -> int:
    if args.model == "gpt":
        from funcbp.gpt_cli import run_gpt

        return run_gpt(args)

    import jax

    if args.distributed:
        jax.distributed.initialize()  # reads the coordinator/process env of the launcher
    jax.config.update("jax_enable_x64", True)  # for the float64 gradient check; training is f32
    import jax.numpy as jnp

    from funcbp import data, distributed, fit

    t_start = time.perf_counter()
    try:
        validate_args(args)
    except ValueError as e:
        return common.fail(f"funcbp train: {e}")
    out = common.run_folder(args.out, "%Y%m%d-%H%M%S")
    if args.resume and args.out is None:
        return common.fail(f"funcbp train: {common.RESUME_NEEDS_OUT}")
    try:
        kw = {"image": args.model == "cnn"}  # NHWC images for the CNN, flat vectors for the MLP
        if args.data == "digits":
            kw["seed"] = args.seed  # the seed of the stratified split
        dataset = data.load(args.data, **kw)
    except (ValueError, TypeError, OSError) as e:
        return common.fail(f"funcbp train: {e}")
    model = _model(args, dataset.n_classes)
    optimizer = _optimizer(args)
    try:
        n_devices = args.devices or len(jax.devices())
        mesh = None
        if n_devices > 1 or args.model_parallel > 1:
            mesh = distributed.make_mesh(n_devices, model=args.model_parallel)
            distributed.check_batch_divisible(args.batch_size, mesh, "funcbp train")
    except ValueError as e:
        return common.fail(f"funcbp train: {e}")

    # Gradient check on one batch before training: hand (and explicit) vs jax.grad of refs.
    params, state = fit.init_model(model, args.seed, dataset.x_train.shape[1:], jnp.float32)
    xb = dataset.x_train[: args.batch_size]
    yb = dataset.y_train[: args.batch_size]
    check_key = jax.random.key(args.seed)  # dropout masks in the check (same for all paths)
    reports, grad_check = common.gradient_check(
        model, params, state, xb, yb, name=args.model, key=check_key
    )

    print(
        f"training {args.model} on {dataset.name}: {len(dataset.x_train)} train / "
        f"{len(dataset.x_test)} test, gradients={args.gradients} engine={args.engine}, "
        f"out={out}"
    )
    try:
        result = fit.fit(
            model,
            dataset,
            optimizer=optimizer,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            gradients=args.gradients,
            engine=args.engine,
            out_dir=out,
            resume=args.resume,
            steps_per_call=args.steps_per_call,
            progress=not args.no_progress,
            mesh=mesh,
        )
    except fit.NonFiniteError as e:
        return common.fail(f"funcbp train: {e}", 1)
    except ValueError as e:
        return common.fail(f"funcbp train: {e}")
    seconds = time.perf_counter() - t_start
    h = result.history
    metrics = {
        "model": args.model,
        "data": dataset.name,
        "gradients": args.gradients,
        "engine": args.engine,
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "test_accuracy": h["test_accuracy"][-1] if h["test_accuracy"] else None,
        "test_loss": h["test_loss"][-1] if h["test_loss"] else None,
        "train_loss": h["train_loss"],
        "train_accuracy": h["train_accuracy"],
        "test_accuracy_history": h["test_accuracy"],
        "step_loss": h["step_loss"],
        "epochs": result.epochs_run,
        "resumed_from_epoch": result.resumed_from,
        "seconds": seconds,
        "steps_per_second": fit.steps_per_second(h, args.batch_size, len(dataset.x_train)),
        "gradient_check": grad_check,
        **common.environment(),  # versions, device
        "devices": n_devices,
        "mesh": dict(mesh.shape) if mesh is not None else None,
    }
    common.write_metrics(out, metrics)
    if h["epoch"]:
        common.plot_curves(h, out / "curves.png", log_loss=True)
    print(
        f"test accuracy {metrics['test_accuracy']:.4f} after {result.epochs_run} epochs in "
        f"{seconds:.1f} s ({metrics['steps_per_second']:.0f} steps/s); wrote "
        f"{out / 'metrics.json'}, {out / 'curves.png'}, {out / fit.CHECKPOINT_NAME}"
    )
    return 0 if all(r.ok for r in reports) else 1
