"""The addition task: encoding, the held-out split, parsing, and greedy decoding/exact match
(checked with an oracle model that knows the answer, and against a naive decoding loop)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from funcbp import ops
from funcbp.data import addition


@given(digits=st.integers(1, 5), data=st.data())
def test_encoding_round_trip(digits, data):
    """encode -> text -> operands and sum back; the answer is reversed and zero-padded."""
    n = data.draw(st.integers(1, 4))
    top = 10**digits - 1
    a = np.array(data.draw(st.lists(st.integers(0, top), min_size=n, max_size=n)))
    b = np.array(data.draw(st.lists(st.integers(0, top), min_size=n, max_size=n)))
    tokens = addition.encode(a, b, digits)
    assert tokens.shape == (n, addition.sequence_length(digits)) == (n, 3 * digits + 4)
    assert tokens.dtype == np.int32
    p = addition.prompt_length(digits)
    for row, x, y in zip(addition.decode_text(tokens), a, b, strict=True):
        lhs, rhs = row.split("=")
        assert lhs == f"{x:0{digits}d}+{y:0{digits}d}"
        assert rhs == f"{x + y:0{digits + 1}d}"[::-1] + "."
        assert addition.parse_prompt(lhs + "=", digits) == (x, y)
    for row, x, y in zip(tokens, a, b, strict=True):
        assert addition.answer_text(row[p:-1]) == str(x + y)
    np.testing.assert_array_equal(addition.encode_prompts(a, b, digits), tokens[:, :p])


def test_answer_text_shows_non_digits_as_they_are():
    assert addition.answer_text([4, 5, 6, 0]) == "654"
    assert addition.answer_text([0, 0, 0]) == "0"
    assert addition.answer_text([4, addition.PLUS, 0]) == "0+4"


@given(digits=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_split_is_disjoint_deterministic_and_shifted(digits, seed):
    n_test = min(50, 10 ** (2 * digits) // 4)
    n_train = min(300, 10 ** (2 * digits) - n_test)
    d = addition.make_dataset(digits=digits, n_train=n_train, n_test=n_test, seed=seed)
    seq = addition.sequence_length(digits)
    assert d.x_train.shape == d.y_train.shape == (n_train, seq - 1)
    assert d.x_test.shape == d.y_test.shape == (n_test, seq - 1)
    np.testing.assert_array_equal(d.x_train[:, 1:], d.y_train[:, :-1])  # targets = next token
    full = addition.encode(d.test_problems[:, 0], d.test_problems[:, 1], digits)
    np.testing.assert_array_equal(full[:, :-1], d.x_test)
    np.testing.assert_array_equal(full[:, 1:], d.y_test)
    train = {tuple(p) for p in d.train_problems.tolist()}
    test = {tuple(p) for p in d.test_problems.tolist()}
    assert len(train) == n_train and len(test) == n_test  # distinct problems
    assert not train & test  # no held-out problem is trained on
    train_strings = set(addition.decode_text(d.x_train))
    assert not train_strings & set(addition.decode_text(d.x_test))
    again = addition.make_dataset(digits=digits, n_train=n_train, n_test=n_test, seed=seed)
    np.testing.assert_array_equal(again.x_train, d.x_train)
    np.testing.assert_array_equal(again.test_problems, d.test_problems)
    other = addition.make_dataset(digits=digits, n_train=n_train, n_test=n_test, seed=seed + 1)
    assert not np.array_equal(other.train_problems, d.train_problems)
    assert d.n_classes == len(addition.VOCAB) == 13 and d.name == f"addition{digits}"


@pytest.mark.parametrize("digits", [1, 2, 4])
def test_loss_floor_is_the_cross_entropy_of_the_best_possible_model(digits):
    """A model uniform over the 10 digits where the target is an operand digit and certain
    elsewhere reaches exactly `loss_floor`, computed here by the loss op itself."""
    d = addition.make_dataset(digits=digits, n_train=30, n_test=7, seed=3)
    n, t = d.y_test.shape
    random_target = np.zeros(t, bool)
    random_target[: digits - 1] = True  # a's digits after the first
    random_target[digits : 2 * digits] = True  # b's digits
    logits = np.where(np.arange(13) < 10, 0.0, -np.inf) * np.ones((n, t, 13))
    sure = np.full((n, t, 13), -1e30)
    np.put_along_axis(sure, d.y_test[..., None], 0.0, axis=-1)
    logits = np.where(random_target[None, :, None], logits, sure)
    loss = ops.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(d.y_test))
    np.testing.assert_allclose(float(loss), addition.loss_floor(digits), rtol=1e-12)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="exceeds the 100 distinct 1-digit problems"):
        addition.make_dataset(digits=1, n_train=100, n_test=1)
    with pytest.raises(ValueError, match="digits must be in 1..9"):
        addition.make_dataset(digits=0)
    with pytest.raises(ValueError, match="n_test must be a positive int"):
        addition.make_dataset(digits=2, n_test=0)
    with pytest.raises(ValueError, match=r"operand a must lie in \[0, 100\)"):
        addition.encode([100], [1], 2)
    with pytest.raises(ValueError, match="prompt must look like 'A\\+B='"):
        addition.parse_prompt("12-3=", 2)
    with pytest.raises(ValueError, match="operand 123 has more than 2 digits"):
        addition.parse_prompt("123+4=", 2)
    assert addition.parse_prompt(" 7 + 05 ", 2) == (7, 5)
    with pytest.raises(ValueError, match="token ids must lie in"):
        addition.decode_text([13])
