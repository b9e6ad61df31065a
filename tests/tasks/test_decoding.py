"""The gpt task's decoding and metrics: greedy decoding (`funcbp.tasks.lm`), exact match and
token accuracy (`funcbp.tasks.addition`), checked with an oracle model and a naive loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcbp.data import addition
from funcbp.nn.core import Layer
from funcbp.nn.gpt import GPTConfig, gpt
from funcbp.tasks.addition import exact_match, token_accuracy
from funcbp.tasks.lm import greedy_decode


# -- decoding --------------------------------------------------------------------------------
def _oracle(digits, offset=0):
    """A 'model' that reads the operands from the ids and puts all its mass on the true next
    token of ``a + b + offset`` at every position (ignoring what was generated so far)."""
    p = addition.prompt_length(digits)
    powers = (10 ** jnp.arange(digits - 1, -1, -1))[None, :]  # (1, d)

    def apply(params, state, x, *, key=None, train=False, source="hand"):
        a = jnp.sum(x[:, :digits] * powers, axis=1)  # (N,)
        b = jnp.sum(x[:, digits + 1 : 2 * digits + 1] * powers, axis=1)
        s = (a + b + offset) % 10 ** (digits + 1)
        # reversed: ones first
        answer = (s[:, None] // (10 ** jnp.arange(digits + 1))[None, :]) % 10
        full = jnp.concatenate(
            [x[:, :p], answer.astype(x.dtype), jnp.full((len(x), 1), addition.END, x.dtype)], 1
        )  # (N, 3d+4)
        nxt = full[:, 1 : x.shape[1] + 1]  # the true next token at each input position
        return jax.nn.one_hot(nxt, len(addition.VOCAB)), state

    unused = lambda *a, **k: None
    return Layer(f"oracle{digits}+{offset}", unused, apply, unused, unused)


@pytest.mark.parametrize("digits", [1, 3])
def test_exact_match_and_token_accuracy_with_an_oracle(digits):
    d = addition.make_dataset(digits=digits, n_train=40, n_test=37, seed=1)
    right, wrong = _oracle(digits), _oracle(digits, offset=1)
    # batch_size 10 leaves a partial last batch (padded internally)
    assert exact_match(right, {}, {}, d.test_problems, digits, batch_size=10) == 1.0
    assert exact_match(wrong, {}, {}, d.test_problems, digits, batch_size=10) == 0.0
    everything, answer = token_accuracy(right, {}, {}, d.x_test, d.y_test, digits)
    assert everything == answer == 1.0
    everything, answer = token_accuracy(wrong, {}, {}, d.x_test, d.y_test, digits)
    assert answer < 1.0 and everything < 1.0


def test_greedy_decode_shapes_determinism_and_naive_loop(key):
    """On a random-init GPT: (N, n_new) ints in the vocab, the same on every call, equal to a
    naive loop that re-runs the model on the growing prefix (a new shape each step)."""
    digits = 2
    d = addition.make_dataset(digits=digits, n_train=16, n_test=5, seed=0)
    config = GPTConfig(vocab=13, context=d.x_train.shape[1], layers=1, heads=2, width=8)
    model = gpt(config)
    _, params, state = model.init(key, (config.context,), jnp.float32)
    params = jax.tree.map(lambda p: p * 20, params)  # larger logits: no argmax ties
    prompts = addition.encode_prompts(d.test_problems[:, 0], d.test_problems[:, 1], digits)
    n_new = addition.answer_length(digits)
    got = greedy_decode(model, params, state, prompts, n_new)
    assert got.shape == (5, n_new) and jnp.issubdtype(got.dtype, jnp.integer)
    assert bool(jnp.all((got >= 0) & (got < 13)))
    np.testing.assert_array_equal(greedy_decode(model, params, state, prompts, n_new), got)
    buf = jnp.asarray(prompts)
    forward = jax.jit(lambda p, s, ids: model.apply(p, s, ids)[0])  # one compile per length
    for _ in range(n_new):
        logits = forward(params, state, buf)
        nxt = jnp.argmax(logits[:, -1], axis=-1)[:, None].astype(buf.dtype)
        buf = jnp.concatenate([buf, nxt], 1)
    np.testing.assert_array_equal(buf[:, prompts.shape[1] :], got)
    with pytest.raises(ValueError, match="prompts must be an integer array"):
        greedy_decode(model, params, state, prompts.astype(np.float32), n_new)
    with pytest.raises(ValueError, match="n_new must be a positive int"):
        greedy_decode(model, params, state, prompts, 0)
    with pytest.raises(ValueError, match="1 <= T <= context"):
        greedy_decode(model, params, state, prompts, n_new + 2)
