"""The ``gpt`` task: a GPT with hand VJPs learns multi-digit addition (answers reversed).

Data: `funcbp.data.addition` (procedurally generated, held-out problems never seen in
training). Model: `funcbp.nn.gpt.gpt`. Trained by the one run path with AdamW, warm-up then
cosine decay and gradient clipping (the task's defaults). Metric: exact match of the greedily
decoded answer on held-out problems (``test_accuracy``); next-token accuracies besides.
``funcbp generate --checkpoint DIR --prompt 12+34=`` answers prompts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from funcbp import ops
from funcbp.data import addition
from funcbp.data.addition import answer_length, encode, encode_prompts, prompt_length
from funcbp.nn.attention import KINDS
from funcbp.nn.gpt import HEADS, GPTConfig, gpt
from funcbp.tasks.base import Task
from funcbp.tasks.lm import Sampling, decode, greedy_decode, logits
from funcbp.tasks.options import Option

__all__ = ["GPT", "exact_match", "token_accuracy"]


def _batches(n, batch_size):
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _pad_rows(a, size):
    """Pad (n, ...) to (size, ...) by repeating row 0: one shape for every batch."""
    if len(a) == size:
        return a
    return np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)])


def exact_match(model, params, state, problems, digits: int, *, batch_size: int = 1000) -> float:
    """Fraction of ``problems`` (N, 2) operand pairs whose greedily decoded answer (all
    ``digits + 1`` reversed digits) is exactly right."""
    problems = np.asarray(problems).reshape(-1, 2)
    if len(problems) == 0:
        raise ValueError("exact_match: no problems given")
    prompts = encode_prompts(problems[:, 0], problems[:, 1], digits)
    want = encode(problems[:, 0], problems[:, 1], digits)[:, prompts.shape[1] : -1]
    size = min(batch_size, len(problems))
    correct = 0
    for s, e in _batches(len(problems), size):
        got = np.asarray(
            greedy_decode(
                model, params, state, _pad_rows(prompts[s:e], size), answer_length(digits)
            )
        )[: e - s]
        correct += int(np.all(got == want[s:e], axis=1).sum())
    return correct / len(problems)


def token_accuracy(model, params, state, x, y, digits: int, *, batch_size: int = 1000):
    """Teacher-forced next-token accuracy ``(all positions, answer positions)`` on ``(x, y)``.

    The answer positions are the ``digits + 1`` targets after ``=`` (the reversed sum).
    """
    x, y = np.asarray(x), np.asarray(y)
    lo = prompt_length(digits) - 1  # target index of the first answer digit
    hi = lo + answer_length(digits)
    size = min(batch_size, len(x))
    hits_all = hits_ans = 0
    fn = jax.jit(lambda p, s, xb: jnp.argmax(logits(model.apply(p, s, xb)[0]), axis=-1))
    for s, e in _batches(len(x), size):
        pred = np.asarray(fn(params, state, _pad_rows(x[s:e], size)))[: e - s]
        ok = pred == y[s:e]
        hits_all += int(ok.sum())
        hits_ans += int(ok[:, lo:hi].sum())
    return hits_all / y.size, hits_ans / (len(y) * (hi - lo))


def _load(opts):
    return addition.make_dataset(opts["digits"], opts["n_train"], opts["n_test"], opts["seed"])


def _describe(data) -> dict:
    return {
        "name": data.name,
        "digits": data.digits,
        "context": int(data.x_train.shape[1]),
        "input_shape": [int(data.x_train.shape[1])],
        "vocab": len(addition.VOCAB),
        "n_classes": len(addition.VOCAB),
        "n_train": int(len(data.x_train)),
        "n_test": int(len(data.x_test)),
    }


def _model(opts, info):
    config = GPTConfig(
        vocab=info["vocab"], context=info["context"], layers=opts["layers"], heads=opts["heads"],
        width=opts["width"], mlp_ratio=opts["mlp_ratio"], remat=opts["remat"],
        remat_policy=opts["remat_policy"], attention=opts["attention"],
        block_size=opts["block_size"], head=opts["head"],
    )  # fmt: skip
    return gpt(config), dataclasses.asdict(config)


def _evaluate(model, params, state, data, opts) -> dict:
    d = data.digits
    exact = exact_match(model, params, state, data.test_problems, d)
    train = exact_match(model, params, state, data.train_problems[: len(data.test_problems)], d)
    tok_all, tok_answer = token_accuracy(model, params, state, data.x_test, data.y_test, d)
    shown = data.test_problems[:3]
    answers = greedy_decode(
        model, params, state, encode_prompts(shown[:, 0], shown[:, 1], d), answer_length(d)
    )
    examples = [
        f"{a}+{b}={addition.answer_text(t)}"
        for (a, b), t in zip(shown, np.asarray(answers), strict=True)
    ]
    return {
        "test_accuracy": exact,
        "test_accuracy_definition": "exact match of the greedily decoded answer, held-out",
        "train_exact_match": train,
        "test_token_accuracy": tok_all,
        "test_answer_token_accuracy": tok_answer,
        "loss_floor": addition.loss_floor(d),
        "examples": examples,
    }


def _generate(model, params, state, opts, info, prompts, sampling=None) -> list[str]:
    """Answer prompts like ``"12+34="`` (the ``=`` is optional): ``["12+34=46", ...]``.

    The answer's ``digits + 1`` tokens (fewer with ``sampling.max_new_tokens``), greedy by
    default; ``sampling`` may ask for temperature/top-k draws."""
    d, sampling = info["digits"], sampling or Sampling()
    pairs = np.array([addition.parse_prompt(p, d) for p in prompts]).reshape(-1, 2)
    n_new = min(sampling.max_new_tokens or answer_length(d), answer_length(d))
    tokens = decode(
        model, params, state, encode_prompts(pairs[:, 0], pairs[:, 1], d), n_new, sampling
    )
    return [
        f"{a}+{b}={addition.answer_text(t)}"
        for (a, b), t in zip(pairs, np.asarray(tokens), strict=True)
    ]


GPT = Task(
    name="gpt",
    help="a GPT (tied head, pre-LN blocks) learns the bundled addition task",
    options=(
        Option("digits", int, 2, "operand digits", minimum=1),
        Option("n_train", int, 8192, "training problems", minimum=1),
        Option("n_test", int, 1000, "held-out problems", minimum=1),
        Option("layers", int, 2, "transformer blocks", minimum=1),
        Option("width", int, 64, "residual stream width", minimum=1),
        Option("heads", int, 4, "attention heads (must divide --width)", minimum=1),
        Option("mlp_ratio", int, 4, "MLP width / width", minimum=1),
        Option(
            "attention", str, "dense", "dense, or flash: blockwise (no T × S buffer)", choices=KINDS
        ),
        Option("block_size", int, 128, "rows and keys per block of flash attention", minimum=1),
        Option(
            "head",
            str,
            "full",
            "full logits, or chunked: the tied head fused with the "
            "loss, chunk by chunk (no N × V logits)",
            choices=HEADS,
        ),
    ),
    defaults={
        "epochs": 40,
        "batch_size": 128,
        "lr": 3e-3,
        "weight_decay": 0.1,
        "optimizer": "adamw",
        "schedule": "cosine",
        "warmup": 200,
        "clip": 1.0,
        "steps_per_call": 32,
        "check_batch": 8,
    },  # fmt: skip
    load_data=_load,
    describe_data=_describe,
    build_model=_model,
    loss=ops.softmax_cross_entropy,
    evaluate=_evaluate,
    choose_loss=lambda opts: (
        ops.unembed_cross_entropy if opts["head"] == "chunked" else ops.softmax_cross_entropy
    ),
    generate=_generate,
    labels={
        "test": "held-out",
        "loss": "cross-entropy (every position)",
        "accuracy": "next-token accuracy (every position)",
        "floor": "floor (random operand digits)",
    },
    betas=(0.9, 0.98),
    log_loss=False,
)
