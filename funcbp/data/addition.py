"""A bundled character task for the GPT: multi-digit addition with the answer written reversed.

A problem ``a + b`` with ``digits``-digit operands (zero-padded, most significant digit first,
as people write them) is the string

    "035+619=4560."      (digits=3: 35 + 619 = 654, answer 0654 written reversed, then '.')

The answer has ``digits + 1`` digits (zero-padded, so the carry-out always has a slot) and is
written *least significant digit first*. Why reversed: a left-to-right model then emits the ones
digit first, and every later answer digit depends only on the operand digits of its column and
the carry from the digit it has *just written*: the carry flows in the direction of generation,
so each step is a local, learnable function. Written the usual way round, the first answer
digit would depend on a carry chain through every column not produced yet.

Encoding: a fixed vocabulary ``0-9`` (ids 0-9), ``+`` (10), ``=`` (11) and ``.`` (12, the end
token), and a fixed length ``3·digits + 4`` for every problem (no padding is ever needed).
Language-model pairs are ``inputs = tokens[:-1]``, ``targets = tokens[1:]``, trained with the
cross-entropy over *every* position (as the issue asks): the operand digits are random, so their
positions carry an irreducible loss (log 10 each), while the ``=``, answer and ``.`` positions
are fully predictable. Token accuracy over all positions is therefore bounded well below 1;
`exact_match` (greedy decoding of the whole answer) is the task's real metric.

Split: ``make_dataset`` draws ``n_train + n_test`` *distinct* ordered pairs ``(a, b)`` by seed
and holds out the first ``n_test``: no held-out problem (as a string: ``a+b`` and ``b+a`` are
different problems) ever appears in training. The draw is deterministic for a given
``(digits, n_train, n_test, seed)``.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

__all__ = [
    "VOCAB",
    "PLUS",
    "EQUALS",
    "END",
    "MAX_DIGITS",
    "AdditionData",
    "answer_length",
    "prompt_length",
    "sequence_length",
    "encode",
    "encode_prompts",
    "decode_text",
    "answer_text",
    "parse_prompt",
    "make_dataset",
    "loss_floor",
]

VOCAB = "0123456789+=."
"""Token id i is the character ``VOCAB[i]``."""
PLUS, EQUALS, END = 10, 11, 12
MAX_DIGITS = 9
_CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB)}


def _check_digits(digits) -> int:
    if isinstance(digits, bool) or not isinstance(digits, int | np.integer):
        raise TypeError(f"addition: digits must be an int, got {type(digits).__name__}")
    if not 1 <= digits <= MAX_DIGITS:
        raise ValueError(f"addition: digits must be in 1..{MAX_DIGITS}, got {digits}")
    return int(digits)


def prompt_length(digits: int) -> int:
    """Tokens of ``"a+b="``: 2·digits + 2."""
    return 2 * _check_digits(digits) + 2


def answer_length(digits: int) -> int:
    """Answer digits (reversed, zero-padded): digits + 1."""
    return _check_digits(digits) + 1


def sequence_length(digits: int) -> int:
    """Tokens of a whole problem ``"a+b=" + reversed answer + "."``: 3·digits + 4."""
    return prompt_length(digits) + answer_length(digits) + 1


def _columns(values: np.ndarray, width: int) -> np.ndarray:
    """(N,) non-negative ints -> (N, width) decimal digits, most significant first."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)  # (width,)
    return (values[:, None] // powers[None, :]) % 10


def _check_operands(a, b, digits):
    a = np.asarray(a, np.int64).reshape(-1)
    b = np.asarray(b, np.int64).reshape(-1)
    top = 10**digits
    if a.shape != b.shape:
        raise ValueError(f"addition: a and b must have the same length, got {a.shape}, {b.shape}")
    for name, v in (("a", a), ("b", b)):
        if v.size and (v.min() < 0 or v.max() >= top):
            raise ValueError(
                f"addition: operand {name} must lie in [0, {top}) for digits={digits}, got "
                f"values in [{v.min()}, {v.max()}]"
            )
    return a, b


def encode_prompts(a, b, digits: int) -> np.ndarray:
    """Operands (N,) -> prompt tokens (N, 2·digits + 2): ``a + b =`` zero-padded, int32."""
    digits = _check_digits(digits)
    a, b = _check_operands(a, b, digits)
    n = len(a)
    plus = np.full((n, 1), PLUS)
    equals = np.full((n, 1), EQUALS)
    tokens = np.concatenate([_columns(a, digits), plus, _columns(b, digits), equals], axis=1)
    return tokens.astype(np.int32)


def encode(a, b, digits: int) -> np.ndarray:
    """Operands (N,) -> whole problems (N, 3·digits + 4) int32: prompt, reversed sum, end."""
    digits = _check_digits(digits)
    a, b = _check_operands(a, b, digits)
    answer = _columns(a + b, digits + 1)[:, ::-1]  # (N, d+1) least significant digit first
    end = np.full((len(a), 1), END)
    tokens = np.concatenate([encode_prompts(a, b, digits), answer, end], axis=1)
    return tokens.astype(np.int32)


def decode_text(tokens) -> str | list[str]:
    """Token ids -> characters: (T,) -> str, (N, T) -> list of str."""
    tokens = np.asarray(tokens)
    if tokens.ndim == 2:
        return [decode_text(row) for row in tokens]
    bad = tokens[(tokens < 0) | (tokens >= len(VOCAB))]
    if bad.size:
        raise ValueError(f"addition: token ids must lie in [0, {len(VOCAB)}), got {bad.tolist()}")
    return "".join(VOCAB[int(t)] for t in tokens)


def answer_text(answer_tokens) -> str:
    """Reversed answer tokens (d+1,) -> the sum as people write it (``[4,5,6,0]`` -> ``"654"``).

    If the model produced anything but digits, the raw characters are returned un-reversed and
    unstripped (e.g. ``"0+54"``), so a wrong answer is shown as it is, never silently fixed.
    """
    text = decode_text(np.asarray(answer_tokens).reshape(-1))[::-1]
    return str(int(text)) if text.isdigit() else text


_PROMPT = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*=?\s*$")


def parse_prompt(text: str, digits: int) -> tuple[int, int]:
    """``"12+34="`` (the ``=`` optional, spaces ignored) -> ``(12, 34)``; operands must have at
    most ``digits`` digits. Raises ValueError with the expected form otherwise."""
    digits = _check_digits(digits)
    m = _PROMPT.match(text)
    if m is None:
        raise ValueError(
            f"addition: prompt must look like 'A+B=' with A and B of at most {digits} digits "
            f"(e.g. {'1' * digits}+{'2' * digits}=), got {text!r}"
        )
    a, b = m.group(1), m.group(2)
    for s in (a, b):
        if len(s.lstrip("0") or "0") > digits:
            raise ValueError(
                f"addition: operand {s} has more than {digits} digits (this model was trained "
                f"on {digits}-digit addition), prompt {text!r}"
            )
    return int(a), int(b)


def loss_floor(digits: int) -> float:
    """The least possible mean cross-entropy over every position: the 2·digits − 1 targets
    that are operand digits (all but the first, which is never a target) are uniformly random,
    log 10 each; every other target is determined by the ones before it."""
    digits = _check_digits(digits)
    return (2 * digits - 1) * float(np.log(10)) / (sequence_length(digits) - 1)


@dataclasses.dataclass(frozen=True)
class AdditionData:
    """A train/held-out split of addition problems, in `funcbp.training.loop`'s data format.

    x_* (N, 3d+3) int32 inputs (``tokens[:, :-1]``), y_* (N, 3d+3) int32 targets
    (``tokens[:, 1:]``); ``train_problems``/``test_problems`` (N, 2) int64 operand pairs.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_problems: np.ndarray
    test_problems: np.ndarray
    digits: int
    seed: int
    n_classes: int = len(VOCAB)

    @property
    def name(self) -> str:
        return f"addition{self.digits}"


def make_dataset(
    digits: int = 2, n_train: int = 8000, n_test: int = 1000, seed: int = 0
) -> AdditionData:
    """Distinct random problems ``a + b`` (a, b in [0, 10^digits)), split by ``seed``.

    Raises ValueError when ``n_train + n_test`` exceeds the 10^(2·digits) possible problems.
    """
    digits = _check_digits(digits)
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"make_dataset: {name} must be a positive int, got {v!r}")
    total = 10 ** (2 * digits)
    if n_train + n_test > total:
        raise ValueError(
            f"make_dataset: n_train + n_test = {n_train + n_test} exceeds the {total} distinct "
            f"{digits}-digit problems"
        )
    rng = np.random.default_rng(seed)
    idx = rng.choice(total, size=n_train + n_test, replace=False)  # distinct ordered pairs
    pairs = np.stack([idx // 10**digits, idx % 10**digits], axis=1)  # (n, 2)
    test, train = pairs[:n_test], pairs[n_test:]
    tok_train = encode(train[:, 0], train[:, 1], digits)
    tok_test = encode(test[:, 0], test[:, 1], digits)
    return AdditionData(
        x_train=tok_train[:, :-1],
        y_train=tok_train[:, 1:],
        x_test=tok_test[:, :-1],
        y_test=tok_test[:, 1:],
        train_problems=train,
        test_problems=test,
        digits=digits,
        seed=seed,
    )
