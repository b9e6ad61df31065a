"""``funcbp train --model gpt`` and ``funcbp generate``: a GPT with hand VJPs learns addition.

``run_gpt(args)`` trains `funcbp.nn.gpt.gpt` on the bundled addition task (`funcbp.addition`,
answers written reversed) with AdamW, linear warm-up then cosine decay, and gradient clipping,
through `funcbp.fit.fit`; it writes into ``args.out``:

* ``gpt.json``       the model and task config (written first: `generate` rebuilds from it);
* ``checkpoint.npz`` params, optimizer state and history (by `fit`, atomically, every epoch);
* ``metrics.json``   ``test_accuracy`` = exact match of greedy decoding on held-out problems,
  token accuracies, loss history, timing, and the per-parameter gradient check;
* ``curves.png``     loss and token accuracy per epoch.

``generate(args)`` loads ``gpt.json`` and the checkpoint from ``args.checkpoint`` and answers
``args.prompt`` (``"12+34="``) by greedy decoding, printing ``12+34=46``.

Both take argparse namespaces. Shared training options (``--epochs`` ...) that are absent or
``None`` fall back to `GPT_DEFAULTS`. The options are parsed by `funcbp.cli` only;
``python -m funcbp.gpt_cli train|generate ...`` is kept as a shorthand for ``funcbp train --model
gpt ...`` / ``funcbp generate ...`` and goes through that same parser (`main`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from funcbp import _cli_common as common

__all__ = [
    "GPT_DEFAULTS",
    "CONFIG_NAME",
    "add_gpt_arguments",
    "add_generate_arguments",
    "generate",
    "main",
    "make_optimizer",
    "run_gpt",
]

CONFIG_NAME = "gpt.json"
FORMAT = "funcbp-gpt-1"

GPT_DEFAULTS = {
    "epochs": 40,
    "batch_size": 128,
    "lr": 3e-3,
    "weight_decay": 0.1,
    "seed": 0,
    "gradients": "hand",
    "engine": "grad",
    "steps_per_call": 32,
    "resume": False,
    "no_progress": False,
    "out": None,
    # GPT / task specific (add_gpt_arguments)
    "digits": 2,
    "n_train": 8192,
    "n_test": 1000,
    "layers": 2,
    "width": 64,
    "heads": 4,
    "mlp_ratio": 4,
    "warmup": 200,
    "clip": 1.0,
    "check_batch": 8,
}
"""The tuned defaults: 2-digit addition, 2 blocks of width 64 with 4 heads, batch 128, 40
epochs of 64 steps (2560 AdamW steps, fused 32 per call) at peak lr 3e-3."""


def _opt(args, name):
    """``args.name`` unless absent or None, else the GPT default."""
    value = getattr(args, name, None)
    return GPT_DEFAULTS[name] if value is None else value


def add_gpt_arguments(p: argparse.ArgumentParser) -> None:
    """The GPT/addition-specific options of ``funcbp train --model gpt`` (all default None:
    `GPT_DEFAULTS` fills them in)."""
    g = p.add_argument_group("gpt (with --model gpt)")
    g.add_argument("--digits", type=int, default=None, help="operand digits (default 2)")
    g.add_argument("--n-train", type=int, default=None, help="training problems (default 8192)")
    g.add_argument("--n-test", type=int, default=None, help="held-out problems (default 1000)")
    g.add_argument("--layers", type=int, default=None, help="transformer blocks (default 2)")
    g.add_argument("--width", type=int, default=None, help="residual width (default 64)")
    g.add_argument("--heads", type=int, default=None, help="attention heads (default 4)")
    g.add_argument("--mlp-ratio", type=int, default=None, help="MLP width / width (default 4)")
    g.add_argument("--warmup", type=int, default=None, help="lr warm-up steps (default 200)")
    g.add_argument("--clip", type=float, default=None, help="clip global grad norm (default 1)")
    g.add_argument(
        "--check-batch",
        type=int,
        default=None,
        help="examples in the start-up gradient check (default 8)",
    )


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``funcbp generate``."""
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a run folder written by `funcbp train --model gpt` (or its checkpoint.npz)",
    )
    p.add_argument(
        "--prompt",
        required=True,
        nargs="+",
        help="one or more problems like '12+34=' (the '=' is optional)",
    )


def make_optimizer(lr, weight_decay, warmup, total_steps, clip):
    """``clip_by_global_norm(clip)`` then AdamW (β = 0.9, 0.98; decay on weights with ndim ≥ 2
    only) at a warm-up/cosine schedule: 0 → ``lr`` over ``warmup`` steps, then cosine down to
    ``lr/20`` at ``total_steps``."""
    import jax
    import optax

    total_steps = max(int(total_steps), 1)
    warmup = max(0, min(int(warmup), total_steps - 1))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps, lr / 20)
    mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=weight_decay, mask=mask),
    )


def _check_config(path: Path, config: dict) -> str | None:
    """On --resume: the saved config must equal this run's (else the checkpoint is another
    model or task). Returns an error message or None."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    for part in ("model", "task", "optimizer"):
        if saved.get(part) != config[part]:
            return (
                f"funcbp train: --resume with a different {part} config than {path}: "
                f"saved {saved.get(part)}, now {config[part]}"
            )
    return None


def run_gpt(args) -> int:
    """Train the GPT on addition; write gpt.json, checkpoint.npz, metrics.json, curves.png.

    Returns 0 on success, 1 if the gradient check failed or training met NaN/Inf, 2 on bad
    options.
    """
    import jax

    jax.config.update("jax_enable_x64", True)  # for the float64 gradient check; training is f32
    import jax.numpy as jnp
    import numpy as np

    from funcbp import addition, fit, ops
    from funcbp.nn.gpt import GPTConfig, gpt

    t_start = time.perf_counter()
    o = {name: _opt(args, name) for name in GPT_DEFAULTS}
    out = common.run_folder(o["out"], "gpt-%Y%m%d-%H%M%S")
    if o["resume"] and o["out"] is None:
        return common.fail(f"funcbp train: {common.RESUME_NEEDS_OUT}")
    for name in ("epochs", "batch_size", "steps_per_call", "check_batch", "warmup"):
        if o[name] < (0 if name in ("epochs", "warmup") else 1):
            return common.fail(
                f"funcbp train: --{name.replace('_', '-')} must be positive, got {o[name]}"
            )
    try:
        data = addition.make_dataset(o["digits"], o["n_train"], o["n_test"], o["seed"])
        config = GPTConfig(
            vocab=len(addition.VOCAB),
            context=data.x_train.shape[1],
            layers=o["layers"],
            heads=o["heads"],
            width=o["width"],
            mlp_ratio=o["mlp_ratio"],
        )
    except (ValueError, TypeError) as e:
        return common.fail(f"funcbp train: {e}")
    if o["batch_size"] > len(data.x_train):
        return common.fail(
            f"funcbp train: --batch-size {o['batch_size']} exceeds the "
            f"{len(data.x_train)} training problems"
        )
    model = gpt(config)
    total_steps = o["epochs"] * (len(data.x_train) // o["batch_size"])
    opt_config = {
        "lr": o["lr"],
        "weight_decay": o["weight_decay"],
        "warmup": o["warmup"],
        "total_steps": total_steps,
        "clip": o["clip"],
    }
    optimizer = make_optimizer(**opt_config)
    saved = {
        "format": FORMAT,
        "model": dataclasses.asdict(config),
        "task": {
            "name": "addition",
            "digits": data.digits,
            "n_train": o["n_train"],
            "n_test": o["n_test"],
            "seed": o["seed"],
        },
        "optimizer": opt_config,
    }
    if o["resume"] and (msg := _check_config(out / CONFIG_NAME, saved)):
        return common.fail(msg)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(saved, indent=2))

    # Gradient check before training: hand and explicit vs jax.grad of the references, every
    # parameter, float32 and float64, on a few training problems.
    params, state = fit.init_model(model, o["seed"], data.x_train.shape[1:], jnp.float32)
    xb, yb = data.x_train[: o["check_batch"]], data.y_train[: o["check_batch"]]
    reports, grad_check = common.gradient_check(model, params, state, xb, yb, name="gpt")

    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    print(
        f"training {model.name} ({n_params} params) on {data.name}: {len(data.x_train)} "
        f"train / {len(data.x_test)} held-out problems, {total_steps} steps, "
        f"gradients={o['gradients']} engine={o['engine']}, out={out}"
    )
    t_train = time.perf_counter()
    try:
        result = fit.fit(
            model,
            data,
            optimizer=optimizer,
            epochs=o["epochs"],
            batch_size=o["batch_size"],
            seed=o["seed"],
            loss=ops.softmax_cross_entropy,
            gradients=o["gradients"],
            engine=o["engine"],
            out_dir=out,
            resume=o["resume"],
            steps_per_call=o["steps_per_call"],
            progress=not o["no_progress"],
        )
    except fit.NonFiniteError as e:
        return common.fail(f"funcbp train: {e}", 1)
    except ValueError as e:
        return common.fail(f"funcbp train: {e}")
    train_seconds = time.perf_counter() - t_train
    params, state = result.params, result.state
    exact = addition.exact_match(model, params, state, data.test_problems, data.digits)
    exact_train = addition.exact_match(
        model, params, state, data.train_problems[: len(data.test_problems)], data.digits
    )
    tok_all, tok_answer = addition.token_accuracy(
        model, params, state, data.x_test, data.y_test, data.digits
    )
    seconds = time.perf_counter() - t_start
    h = result.history
    metrics = {
        "model": "gpt",
        "data": data.name,
        "gradients": o["gradients"],
        "engine": o["engine"],
        "config": {**saved, "options": o},
        "n_params": n_params,
        "test_accuracy": exact,
        "test_accuracy_definition": "exact match of the greedily decoded answer, held-out",
        "train_exact_match": exact_train,
        "test_token_accuracy": tok_all,
        "test_answer_token_accuracy": tok_answer,
        "test_loss": h["test_loss"][-1] if h["test_loss"] else None,
        "loss_floor": addition.loss_floor(data.digits),
        "train_loss": h["train_loss"],
        "train_accuracy": h["train_accuracy"],
        "test_token_accuracy_history": h["test_accuracy"],
        "test_loss_history": h["test_loss"],
        "step_loss": h["step_loss"],
        "epochs": result.epochs_run,
        "steps": result.epochs_run * (len(data.x_train) // o["batch_size"]),
        "resumed_from_epoch": result.resumed_from,
        "seconds": seconds,
        "train_seconds": train_seconds,
        "steps_per_second": fit.steps_per_second(h, o["batch_size"], len(data.x_train)),
        "gradient_check": grad_check,
        **common.environment(),  # versions, device
    }
    common.write_metrics(out, metrics)
    if h["epoch"]:
        common.plot_curves(
            h,
            out / "curves.png",
            test_label="held-out",
            loss_label="cross-entropy (every position)",
            accuracy_label="next-token accuracy (every position)",
            floor=addition.loss_floor(data.digits),
            floor_label="floor (random operand digits)",
            title=f"{model.name} on {data.name}: held-out exact match {exact:.3f}",
        )
    example = data.test_problems[:3]
    answers = addition.greedy_decode(
        model,
        params,
        state,
        addition.encode_prompts(example[:, 0], example[:, 1], data.digits),
        addition.answer_length(data.digits),
    )
    shown = ", ".join(
        f"{a}+{b}={addition.answer_text(t)}" for (a, b), t in zip(example, answers, strict=True)
    )
    print(
        f"held-out exact match {exact:.4f} (train {exact_train:.4f}), next-token accuracy "
        f"{tok_all:.4f} (answer digits {tok_answer:.4f}) after {result.epochs_run} epochs "
        f"in {seconds:.1f} s ({metrics['steps_per_second']:.0f} steps/s); e.g. {shown}"
    )
    print(
        f"wrote {out / 'metrics.json'}, {out / 'curves.png'}, {out / fit.CHECKPOINT_NAME}, "
        f"{out / CONFIG_NAME}"
    )
    return 0 if all(r.ok for r in reports) else 1


def generate(args) -> int:
    """Answer ``args.prompt`` (one or more ``"A+B="``) with the GPT saved in
    ``args.checkpoint``; prints one ``A+B=SUM`` line per prompt. Returns 0, or 2 on error."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from funcbp import addition, checkpoint, fit
    from funcbp.nn.gpt import GPTConfig, gpt

    path = Path(args.checkpoint)
    folder = path.parent if path.suffix == ".npz" else path
    ckpt = path if path.suffix == ".npz" else path / fit.CHECKPOINT_NAME
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.exists():
        return common.fail(
            f"funcbp generate: no {CONFIG_NAME} in {folder} (expected the folder of a "
            f"`funcbp train --model gpt` run)"
        )
    try:
        saved = json.loads(cfg_path.read_text())
        if saved.get("format") != FORMAT:
            raise ValueError(f"format {saved.get('format')!r}, expected {FORMAT!r}")
        config = GPTConfig(**saved["model"])
        digits = int(saved["task"]["digits"])
        optimizer = make_optimizer(**saved["optimizer"])
    except (ValueError, TypeError, KeyError) as e:
        return common.fail(f"funcbp generate: {cfg_path} is not a valid GPT config ({e})")
    prompts = [args.prompt] if isinstance(args.prompt, str) else list(args.prompt)
    try:
        pairs = [addition.parse_prompt(p, digits) for p in prompts]
    except ValueError as e:
        return common.fail(f"funcbp generate: {e}")

    model = gpt(config)
    params, state = fit.init_model(model, 0, (config.context,), jnp.float32)
    template = {"params": params, "opt_state": optimizer.init(params), "state": state}
    try:
        tree, extra = checkpoint.restore(ckpt, template)
    except checkpoint.CheckpointError as e:
        return common.fail(f"funcbp generate: {e}")
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    tokens = addition.greedy_decode(
        model,
        tree["params"],
        tree["state"],
        addition.encode_prompts(a, b, digits),
        addition.answer_length(digits),
    )
    for x, y, t in zip(a, b, np.asarray(jax.device_get(tokens)), strict=True):
        print(f"{x}+{y}={addition.answer_text(t)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m funcbp.gpt_cli train ...`` is ``funcbp train ... --model gpt``, and
    ``python -m funcbp.gpt_cli generate ...`` is ``funcbp generate ...``: `funcbp.cli`'s parser
    (same options, messages and exit codes), so there is one definition of every flag."""
    from funcbp import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        argv.extend(["--model", "gpt"])
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
