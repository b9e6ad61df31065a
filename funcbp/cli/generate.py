"""``funcbp generate``: continue prompts with the model of a finished run (any task that
defines generation: the GPT on addition, ``--prompt 12+34=`` prints ``12+34=46``; the Llama on
text, ``--prompt "def fib(n):" --max-new-tokens 200 --temperature 0.8 --top-k 40 --seed 0``
samples through a KV cache; temperature 0 is greedy)."""

from __future__ import annotations

from pathlib import Path

from funcbp.cli.common import fail

__all__ = ["run_generate"]


def _load(where: Path):
    """``(task, model, params, state, options, info)`` of the run in ``where``."""
    import jax.numpy as jnp

    from funcbp.tasks import TASKS, folder
    from funcbp.tasks.run import rebuild
    from funcbp.training import checkpoint
    from funcbp.training.loop import CHECKPOINT_NAME, init_model

    path = Path(where)
    run_dir = path.parent if path.suffix == ".npz" else path
    ckpt = path if path.suffix == ".npz" else path / CHECKPOINT_NAME
    record = folder.read_run(run_dir)
    task = TASKS.get(record.get("task"))
    if task is None:
        raise ValueError(f"{run_dir}: unknown task {record.get('task')!r}; known: {sorted(TASKS)}")
    if task.generate is None:
        raise ValueError(f"{run_dir}: task {task.name} does not generate (it classifies)")
    try:
        model, optimizer, opts, info = rebuild(task, record)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{run_dir / folder.RUN_NAME} is not a valid run record ({e})") from None
    params, state = init_model(model, 0, tuple(info["input_shape"]), jnp.float32)
    template = {"params": params, "opt_state": optimizer.init(params), "state": state}
    tree, _ = checkpoint.restore(ckpt, template)
    return task, model, tree["params"], tree["state"], opts, info


def run_generate(args) -> int:
    """One output line per prompt; 0, or 2 for a bad folder, checkpoint or prompt."""
    from funcbp.tasks.lm import Sampling

    try:
        sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.seed)
        task, model, params, state, opts, info = _load(args.checkpoint)
        lines = task.generate(model, params, state, opts, info, list(args.prompt), sampling)
    except (ValueError, OSError) as e:
        return fail(f"funcbp generate: {e}")
    for line in lines:
        print(line)
    return 0
