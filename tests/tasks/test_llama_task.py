"""The llama task end to end on a tiny model (a few steps) through the one run path, and its
decoding: cached (KV cache in the model's state) equals uncached, temperature 0 is greedy and
deterministic, sampling is seeded, and generation runs past the trained context."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp import cli
from funcbp.nn.llama import LlamaConfig, init_cache, llama
from funcbp.tasks.lm import Sampling, decode, decode_cached
from tests.helpers import perturb

TINY = [
    "--model", "llama", "--epochs", "2", "--windows", "64", "--eval-windows", "8",
    "--context", "16", "--layers", "1", "--width", "16", "--heads", "2", "--kv-heads", "1",
    "--mlp-hidden", "24", "--batch-size", "16", "--steps-per-call", "2",
    "--text", str(Path(__file__).resolve().parents[2] / "funcbp"),  # small: a quick evaluation
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny training run shared by the tests: (folder, return code, stdout)."""
    out = tmp_path_factory.mktemp("llama") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["train", *TINY, "--out", str(out)])
    return out, rc, buf.getvalue()


@pytest.mark.slow
def test_llama_run_reports_bits_per_byte_and_baselines(run):
    out, rc, stdout = run
    assert rc == 0, stdout
    m = json.loads((out / "metrics.json").read_text())
    assert 0 < m["valid_bits_per_byte"] < 9 and m["baselines"]["valid_bytes"] > 1000
    assert 1 < m["baselines"]["xz_9e"] < 4 and 1 < m["baselines"]["zlib_9"] < 4
    assert m["tokens_per_second"] > 0 and len(m["epoch_seconds"]) == 2
    assert m["samples"][0].startswith("def ") and m["epochs"] == 2
    assert m["gradient_check"]["hand_vs_autodiff_float64"]["max_rel"] < 1e-10
    record = json.loads((out / "run.json").read_text())
    assert record["task"] == "llama" and record["model"]["kv_heads"] == 1
    assert record["data"]["name"] == "funcbp" and record["data"]["windows_per_epoch"] == 64
    assert "validation" in stdout and "bits per byte; zlib -9" in stdout


@pytest.mark.slow
def test_generate_greedy_is_deterministic_and_sampling_is_seeded(run, capsys):
    out, _, _ = run
    base = ["generate", "--checkpoint", str(out), "--prompt", "def fib(n):", "--max-new-tokens"]
    assert cli.main([*base, "12", "--temperature", "0", "--seed", "1"]) == 0
    greedy = capsys.readouterr().out
    assert cli.main([*base, "12", "--seed", "2"]) == 0  # temperature 0 by default
    assert capsys.readouterr().out == greedy and greedy.startswith("def fib(n):")
    sample = [*base, "12", "--temperature", "0.8", "--top-k", "40", "--seed", "0"]
    assert cli.main(sample) == 0
    first = capsys.readouterr().out
    assert cli.main(sample) == 0 and capsys.readouterr().out == first
    assert cli.main([*base, "4", "--prompt", ""]) == 2
    assert "must not be empty" in capsys.readouterr().err
    assert cli.main([*base, "0"]) == 2
    assert "--max-new-tokens must be a positive int" in capsys.readouterr().err


CONFIG = LlamaConfig(vocab=13, context=12, layers=2, width=16, heads=4, kv_heads=2, hidden=24)


def _model(key, config=CONFIG):
    model = llama(config)
    _, params, _ = model.init(key, (config.context,), jnp.float64)
    return model, perturb(params, key, 0.5)


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.9, top_k=5, seed=3)])
def test_cached_decoding_equals_uncached(sampling, key):
    """float64: the same tokens with and without the KV cache (greedy, and sampled with the
    same keys), within the context (P + n_new − 1 = 12)."""
    model, params = _model(key)
    prompts = jax.random.randint(key, (2, 4), 0, 13)
    uncached = decode(model, params, {}, prompts, 9, sampling)
    cache = init_cache(CONFIG, model, 2, 13, jnp.float64)
    cached = decode_cached(model, params, cache, prompts, 9, sampling)
    np.testing.assert_array_equal(cached, uncached)
    again = decode_cached(model, params, cache, prompts, 9, sampling)
    np.testing.assert_array_equal(again, cached)  # deterministic


def test_cached_decoding_runs_past_the_context(key):
    """A cache longer than the context: each query sees the last C keys (window), and the
    tokens inside the context are those of the uncached decoding."""
    model, params = _model(key)
    prompts = jax.random.randint(key, (1, 3), 0, 13)
    cache = init_cache(CONFIG, model, 1, 3 + 30, jnp.float64)
    long = decode_cached(model, params, cache, prompts, 30)
    assert long.shape == (1, 30)
    np.testing.assert_array_equal(long[:, :10], decode(model, params, {}, prompts, 10))
