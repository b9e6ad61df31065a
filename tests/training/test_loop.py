"""The fit loop: determinism, exact resume, the NaN guard, fused steps, argument errors."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax
import pytest

from funcbp import nn
from funcbp import training as train
from funcbp.training import checkpoint
from funcbp.training import loop as fit
from tests.helpers import toy_classification, tree_max_abs_diff


class _Log(fit.Events):
    def __init__(self):
        self.lines, self.epochs, self.steps_done = [], [], 0

    def log(self, message):
        self.lines.append(message)

    def epoch(self, record):
        self.epochs.append(record)

    def steps(self, k):
        self.steps_done += k


def _run(data, tmp=None, epochs=3, resume=False, events=None, **kw):
    model = nn.mlp([8, data.n_classes])
    optimizer = kw.pop("optimizer", optax.adam(1e-2))
    config = fit.FitConfig(epochs, kw.pop("batch_size", 16), **kw)
    return fit.fit(model, data, optimizer, config, out_dir=tmp, resume=resume, events=events)


def _equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fit_learns_and_records_history(tmp_path):
    data = toy_classification()
    r = _run(data, tmp_path, epochs=4)
    h = r.history
    assert h["epoch"] == [1, 2, 3, 4]
    assert len(h["step_loss"]) == 4 * (len(data.x_train) // 16)
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["test_accuracy"][-1] > 0.8
    assert (tmp_path / fit.CHECKPOINT_NAME).exists()
    assert checkpoint.read_extra(tmp_path / fit.CHECKPOINT_NAME)["epoch"] == 4


def test_same_seed_same_result_and_other_seed_differs():
    data = toy_classification()
    a, b, c = _run(data), _run(data), _run(data, seed=1)
    _equal(a.params, b.params)
    assert tree_max_abs_diff(a.params, c.params) > 0


def test_resume_is_bit_identical_to_uninterrupted(tmp_path):
    data = toy_classification()
    full = _run(data, tmp_path / "full", epochs=5)
    _run(data, tmp_path / "cut", epochs=2)  # "interrupted" after epoch 2
    resumed = _run(data, tmp_path / "cut", epochs=5, resume=True)
    assert resumed.resumed_from == 2
    _equal(full.params, resumed.params)
    _equal(full.opt_state, resumed.opt_state)
    timing = lambda h: {k: v for k, v in h.items() if k != "seconds"}
    assert timing(full.history) == timing(resumed.history)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    data = toy_classification()
    events = _Log()
    r = _run(data, tmp_path, epochs=1, resume=True, events=events)
    assert r.resumed_from is None and "starting from scratch" in events.lines[0]


def test_resume_with_other_architecture_is_a_clear_error(tmp_path):
    data = toy_classification()
    _run(data, tmp_path, epochs=1)
    with pytest.raises(checkpoint.CheckpointError, match="another architecture|structure"):
        fit.fit(
            nn.mlp([9, data.n_classes]),
            data,
            optax.adam(1e-2),
            fit.FitConfig(2, 16),
            out_dir=tmp_path,
            resume=True,
        )


def test_nan_in_data_stops_with_step_and_tensor_and_keeps_checkpoint(tmp_path):
    data = toy_classification()
    _run(data, tmp_path, epochs=2)
    ckpt = tmp_path / fit.CHECKPOINT_NAME
    before = ckpt.read_bytes()
    x = data.x_train.copy()
    x[:] = np.nan  # every batch of the next epoch is poisoned
    bad = dataclasses.replace(data) if dataclasses.is_dataclass(data) else data
    bad.x_train = x
    with pytest.raises(fit.NonFiniteError, match=r"step 12 \(epoch 3, step 1 of 6\).*input") as e:
        _run(bad, tmp_path, epochs=4, resume=True)
    assert e.value.step == 12
    assert "input batch x" in e.value.tensors
    assert ckpt.read_bytes() == before  # the last good checkpoint is intact
    assert e.value.result.epochs_run == 2


def test_diverging_learning_rate_stops(tmp_path):
    data = toy_classification()
    with pytest.raises(fit.NonFiniteError, match="non-finite values at step 0") as e:
        _run(data, tmp_path, epochs=2, optimizer=optax.sgd(float("inf")))
    assert "params after the update" in e.value.tensors
    assert not (tmp_path / fit.CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("k", [2, 4])
def test_fused_steps_match_one_step_per_call(k):
    data = toy_classification()  # 96 examples / 16 = 6 steps: k=4 leaves a remainder of 2
    a = _run(data, epochs=2)
    b = _run(data, epochs=2, steps_per_call=k)
    assert tree_max_abs_diff(a.params, b.params) < 1e-5
    np.testing.assert_allclose(a.history["step_loss"], b.history["step_loss"], rtol=1e-5)


def test_explicit_engine_and_autodiff_paths_train_alike():
    data = toy_classification()
    opt = train.classic_sgd(0.1, 1e-4)
    a = _run(data, optimizer=opt, source="explicit")
    b = _run(data, optimizer=opt, source="autodiff")
    assert tree_max_abs_diff(a.params, b.params) < 1e-5


def test_events_report_steps_and_epochs():
    events = _Log()
    r = _run(toy_classification(), epochs=2, events=events)
    assert events.steps_done == 12 and [e["epoch"] for e in events.epochs] == [1, 2]
    # the first dispatch (it compiles) is timed apart; steps/s leaves it out
    assert r.first_call[0] == 1 and len(r.step_seconds) == 2
    assert fit.steps_per_second(r, 16, 96) > 0


def test_labels_out_of_range_are_refused_before_training():
    data = toy_classification()
    bad = dataclasses.replace(data) if dataclasses.is_dataclass(data) else data
    bad.y_test = data.y_test.copy()
    bad.y_test[0] = 7
    with pytest.raises(ValueError, match=r"labels range over \[0, 7\] but mlp8-3 has 3 outputs"):
        _run(bad, epochs=1)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"batch_size": 1000}, "exceeds"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"steps_per_call": 0}, "steps_per_call must be an int >= 1"),
        ({"source": "numeric"}, "fit: source must be one of"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        _run(toy_classification(), **kw)


class _Stream:
    """toy data whose training examples are redrawn every epoch (``epoch_examples``)."""

    def __init__(self, data, shape_ok=True):
        self.__dict__.update(vars(data))
        self.calls, self.shape_ok = [], shape_ok

    def epoch_examples(self, epoch):
        self.calls.append(epoch)
        rng = np.random.default_rng(epoch)
        idx = rng.permutation(len(self.x_train))[: len(self.x_train) if self.shape_ok else 5]
        return self.x_train[idx] + 0.01 * epoch, self.y_train[idx]


def test_epoch_examples_are_drawn_per_epoch_and_replayed_on_resume(tmp_path):
    data = toy_classification()
    stream = _Stream(data)
    full = _run(stream, epochs=3)
    assert stream.calls == [0, 1, 2]
    assert tree_max_abs_diff(full.params, _run(data, epochs=3).params) > 0  # other examples
    _run(_Stream(data), tmp_path, epochs=2)
    resumed = _Stream(data)
    again = _run(resumed, tmp_path, epochs=3, resume=True)
    assert resumed.calls == [2]
    _equal(again.params, full.params)
    with pytest.raises(ValueError, match=r"epoch_examples\(0\) gave x \(5, 6\)"):
        _run(_Stream(data, shape_ok=False), epochs=1)
