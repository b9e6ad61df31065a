"""The ``llama`` task: a Llama-style model with hand VJPs learns real text, byte by byte.

Data: `funcbp.data.text` — the Python standard library's own source by default (``--text PATH``:
a user's file or folder), split by file into train and validation bytes. An epoch is a fresh
draw of ``--windows`` training windows of ``--context`` + 1 bytes at random offsets
(``epoch_examples``: the corpus is far larger than what an epoch should take), so every epoch
sees new text; after each, the loss on a fixed sample of ``--eval-windows`` validation windows.

Metrics (``evaluate``): ``valid_bits_per_byte`` over every non-overlapping validation window
(the mean cross-entropy / ln 2), next to the same validation bytes compressed by zlib -9 and
xz -9e (``baselines``), and a sample; the run path adds ``tokens_per_second`` (the data's
``tokens_per_example``). Progress: validation bits per byte and tokens/s of each epoch
(`Task.epoch_fields`). ``funcbp generate --checkpoint DIR
--prompt "def fib(n):"`` continues prompts through a KV cache.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from funcbp import ops
from funcbp.data import text
from funcbp.nn.kv_cache import KINDS
from funcbp.nn.llama import LlamaConfig, init_cache, llama
from funcbp.tasks.base import Task
from funcbp.tasks.lm import Sampling, decode_cached
from funcbp.tasks.options import Option

__all__ = ["LLAMA", "TextData", "bits_per_byte"]

LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class TextData:
    """A corpus as windows: ``x_train, y_train`` (epoch 0's draw), ``x_test, y_test`` (the
    per-epoch validation sample), ``x_valid, y_valid`` (every validation window), the corpus
    and the draw's settings."""

    corpus: text.TextCorpus
    context: int
    windows: int
    seed: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray

    @property
    def name(self) -> str:
        return self.corpus.name

    def epoch_examples(self, epoch: int):
        """Epoch ``epoch``'s ``windows`` training windows at random offsets (seeded by the
        run's seed and the epoch): ``(x, y)`` int32 (windows, context)."""
        rng = np.random.default_rng([self.seed, epoch, 0x7E47])
        return text.random_windows(self.corpus.train, self.context, self.windows, rng)


def load(opts) -> TextData:
    corpus = text.load_corpus(opts["text"] or None)
    t = opts["context"]
    x_valid, y_valid = text.windows(corpus.valid, t)
    n_eval = min(opts["eval_windows"] or len(x_valid), len(x_valid))
    pick = np.sort(np.random.default_rng([opts["seed"], 0xE7A1]).permutation(len(x_valid))[:n_eval])
    data = TextData(corpus, t, opts["windows"], opts["seed"], *(None,) * 2,
                    x_valid[pick], y_valid[pick], x_valid, y_valid)  # fmt: skip
    x, y = data.epoch_examples(0)
    return dataclasses.replace(data, x_train=x, y_train=y)


def describe(data: TextData) -> dict:
    return {
        "name": data.name,
        "input_shape": [data.context],
        "context": data.context,
        "vocab": text.VOCAB,
        "n_classes": text.VOCAB,
        "tokens_per_example": data.context,
        "train_bytes": int(len(data.corpus.train)),
        "valid_bytes": int(len(data.corpus.valid)),
        "train_files": data.corpus.n_train_files,
        "valid_files": data.corpus.n_valid_files,
        "windows_per_epoch": data.windows,
        "eval_windows": int(len(data.x_test)),
        "valid_windows": int(len(data.x_valid)),
    }


def config(opts, info) -> LlamaConfig:
    """The model's `LlamaConfig` from the task's options and the data's description."""
    return LlamaConfig(
        vocab=info["vocab"], context=info["context"], layers=opts["layers"],
        width=opts["width"], heads=opts["heads"], kv_heads=opts["kv_heads"],
        hidden=opts["mlp_hidden"], rope_theta=opts["rope_theta"],
        tie_embeddings=opts["tie_embeddings"], attention=opts["attention"],
        remat=opts["remat"], remat_policy=opts["remat_policy"],
    )  # fmt: skip


def _model(opts, info):
    c = config(opts, info)
    return llama(c), dataclasses.asdict(c)


def bits_per_byte(model, params, state, x, y, *, tokens_per_call: int = 16384) -> float:
    """Mean next-byte cross-entropy over every position of the windows ``(x, y)``, in bits
    (about ``tokens_per_call`` positions per jitted call)."""
    batch_size = max(1, tokens_per_call // x.shape[1])
    fn = jax.jit(lambda p, s, xb, yb: ops.softmax_cross_entropy(
        model.apply(p, s, xb, train=False)[0], yb) * xb.size)  # fmt: skip
    total = 0.0
    for s in range(0, len(x), batch_size):
        total += float(fn(params, state, x[s : s + batch_size], y[s : s + batch_size]))
    return total / (y.size * LN2)


def _evaluate(model, params, state, data: TextData, opts) -> dict:
    base = text.compressed_bits_per_byte(data.corpus.valid)
    bpb = bits_per_byte(model, params, state, data.x_valid, data.y_valid)
    return {
        "summary": f"validation {bpb:.3f} bits per byte; zlib -9 {base['zlib_9']:.3f}, xz -9e "
        f"{base['xz_9e']:.3f} on the same {len(data.corpus.valid)} bytes",
        "valid_bits_per_byte": bpb,
        "valid_bits_per_byte_definition": "mean cross-entropy / ln 2 over every position of "
        f"the {len(data.x_valid)} non-overlapping validation windows of {data.context} bytes",
        "baselines": {**base, "valid_bytes": int(len(data.corpus.valid))},
        "beats_zlib": bpb <= base["zlib_9"],
        "samples": _generate(model, params, state, opts, describe(data), ["def "],
                             Sampling(max_new_tokens=120, temperature=0.8, top_k=40)),
    }  # fmt: skip


def _epoch_fields(record: dict, opts: dict, info: dict) -> dict[str, str]:
    """The progress line's extras: validation (sample) bits per byte, tokens/s of the epoch."""
    tokens = opts["windows"] // opts["batch_size"] * opts["batch_size"] * info["context"]
    return {
        "val bpb": f"{record['test_loss'] / LN2:.3f}",
        "tok/s": f"{tokens / record['seconds']:.0f}",
    }


def _generate(model, params, state, opts, info, prompts, sampling: Sampling) -> list[str]:
    """Each prompt continued by ``sampling.max_new_tokens`` bytes (default 200) through the KV
    cache (`funcbp.tasks.lm.decode_cached`): the prompt and its continuation, as text."""
    n_new = sampling.max_new_tokens or 200
    c = config(opts, info)
    dtype = jax.tree.leaves(params)[0].dtype
    out = []
    for prompt in prompts:
        ids = text.encode(prompt)
        if not len(ids):
            raise ValueError("llama: a prompt must not be empty")
        cache = init_cache(c, model, 1, len(ids) + n_new, dtype)
        new = decode_cached(model, params, cache, jnp.asarray(ids)[None], n_new, sampling)
        out.append(prompt + text.decode(np.asarray(new)[0]))
    return out


LLAMA = Task(
    name="llama",
    help="a Llama-style model (RMSNorm, RoPE, grouped heads, SwiGLU) on bytes of real text",
    options=(
        Option(
            "text",
            str,
            "",
            "a file or folder of text (default: the Python standard "
            "library's *.py, test folders left out)",
        ),
        Option("context", int, 128, "bytes per training window (the model's context)", minimum=2),
        Option("windows", int, 2048, "training windows drawn per epoch", minimum=1),
        Option(
            "eval_windows",
            int,
            256,
            "validation windows scored after each epoch (0: all)",
            minimum=0,
        ),
        Option("layers", int, 4, "transformer blocks", minimum=1),
        Option("width", int, 128, "residual stream width", minimum=2),
        Option("heads", int, 4, "query heads (must divide --width; even head size)", minimum=1),
        Option("kv_heads", int, 2, "key/value heads (must divide --heads)", minimum=1),
        Option("mlp_hidden", int, 352, "SwiGLU hidden width (the MLP's)", minimum=1),
        Option("rope_theta", float, 10000.0, "RoPE base θ", minimum=1, above=True),
        Option("tie_embeddings", bool, False, "tie the output head to the byte embedding"),
        Option("attention", str, "dense", "attention op", choices=KINDS),
    ),  # fmt: skip
    defaults={
        "epochs": 20,
        "batch_size": 32,
        "lr": 5e-3,
        "weight_decay": 0.1,
        "optimizer": "adamw",
        "schedule": "cosine",
        "warmup": 100,
        "clip": 1.0,
        "steps_per_call": 8,
        "check_batch": 2,
    },
    load_data=load,
    describe_data=describe,
    build_model=_model,
    loss=ops.softmax_cross_entropy,
    evaluate=_evaluate,
    generate=_generate,
    epoch_fields=_epoch_fields,
    labels={
        "test": "validation (sample)",
        "loss": "cross-entropy (nats per byte)",
        "accuracy": "next-byte accuracy",
    },
    betas=(0.9, 0.95),
    log_loss=False,
)
