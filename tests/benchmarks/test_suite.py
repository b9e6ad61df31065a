"""Smoke test of the benchmark suite (``benchmarks/``, ``funcbp bench``): toy sizes, 2 rounds.

It checks that every part runs and reports the structure the report needs; it asserts nothing
about speed (timings on a shared machine are not test material). The NumPy peer's hand
backward is checked against `jax.grad`, since a wrong peer would make its timing meaningless.
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, suite
from benchmarks.models import VARIANTS, matmul_step, model_specs
from benchmarks.torch_numpy import have_torch, numpy_mlp_grads
from funcbp import nn, ops
from funcbp.cli.bench import add_bench_arguments, run_bench

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results():
    from benchmarks.xla_flags import SETTINGS

    flags = {k: SETTINGS[k] for k in ("default", "device_count=8")}
    return suite.run_suite(
        scale="tiny", repeats=2, flag_settings=flags, flag_rounds=1, flag_hogs=0, log=lambda s: None
    )


def _is_timing(t, n):
    assert isinstance(t, common.Timing)
    assert len(t.samples) == n
    assert all(math.isfinite(s) and s > 0 for s in t.samples)
    assert t.min <= t.median <= t.max


def test_models_structure(results):
    names = [m["model"] for m in results["models"]]
    assert names == [s.name for s in model_specs("tiny")]
    kinds = {s.name: s.kind for s in model_specs("tiny")}
    for m in results["models"]:
        extra = {"matmuls"} if kinds[m["model"]] == "mlp" else set()
        assert set(m["variants"]) == set(VARIANTS) | extra
        if extra:  # the bound does a subset of the step's work
            assert m["variants"]["matmuls"]["flops"] <= m["variants"]["hand"]["flops"]
        assert m["n_params"] > 0 and m["inner"] >= 1
        for v in m["variants"].values():
            _is_timing(v["time"], 2)
            assert v["flops"] > 0
            assert isinstance(v["temp_bytes"], int) and v["temp_bytes"] >= 0


def test_peak_multi_scaling_structure(results):
    assert len(results["peak"]) == 2
    for p in results["peak"]:
        _is_timing(p["jnp"], 3)
        assert p["best_gflops"] == max(p["gflops"].values()) > 0
    multi = results["multi"]["variants"]
    assert set(multi) == {
        "1 step/dispatch",
        "k=2",
        "k=4",
        "bound: k=4, no guard or metrics",
        "bound: k=4, the matmuls and update only",
    }
    for v in multi.values():
        assert v["steps_per_s"] == pytest.approx(1 / v["time"].median)
    _is_timing(results["floor"]["time"], 2)
    sc = results["scaling"]
    assert [p["width"] for p in sc["width"]] == list(sc["config"]["widths"])
    assert [p["batch"] for p in sc["batch"]] == list(sc["config"]["batches"])


def test_peers_and_flags_structure(results):
    peers = results["peers"]
    assert peers["torch_available"] == have_torch()
    by_model = {r["model"]: r for r in peers["rows"]}
    assert {"mlp-small", "mlp-large"} <= set(by_model)  # NumPy covers every MLP
    for r in peers["rows"]:
        assert ("numpy" in r["variants"]) == r["model"].startswith("mlp")
        assert any(k.startswith("torch") for k in r["variants"]) == (
            have_torch() and not r["model"].startswith("gpt")
        )
        for v in r["variants"].values():
            _is_timing(v["time"], 2)
    flags = results["flags"]
    assert set(flags) == {"default", "device_count=8"}
    runs = {k: v["runs"][0] for k, v in flags.items()}
    assert all("error" not in r for r in runs.values()), runs
    assert runs["default"]["device_count"] == 1
    assert runs["device_count=8"]["device_count"] == 8
    # the client's intra-op pool grows with the forced device count (the finding's mechanism)
    assert runs["device_count=8"]["threads"].get("tf_XLAEigen", 0) >= 8
    assert runs["default"]["hlo_sha"] == runs["device_count=8"]["hlo_sha"]


def test_targets_and_report(results, tmp_path):
    targets = results["targets"]
    assert [t["target"].split()[0] for t in targets][:2] == ["hand/autodiff", "hand"]
    assert all(t["met"] in (True, False, None) for t in targets)
    paths = suite.write_outputs(results, str(tmp_path), command="pytest")
    md = (tmp_path / "RESULTS.md").read_text()
    for heading in (
        "## Machine and run",
        "## Targets",
        "## Matmul ceiling",
        "## Train step",
        "## Peers",
        "## Fused multi-step",
        "## Scaling",
        "## XLA CPU flags",
    ):
        assert heading in md
    assert suite.NOTES_BEGIN in md and suite.NOTES_END in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["models"][0]["variants"]["hand"]["time"]["samples_s"]
    with open(paths["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # hand-written notes survive a rewrite of the report
    (tmp_path / "RESULTS.md").write_text(
        md.replace(suite.NOTES_END, "kept note\n" + suite.NOTES_END)
    )
    suite.write_outputs(results, str(tmp_path), command="pytest")
    assert "kept note" in (tmp_path / "RESULTS.md").read_text()


def test_interleaved_alternates_order():
    calls = []
    variants = {n: (lambda n=n: calls.append(n)) for n in "ABC"}
    times = common.interleaved(variants, repeats=3, warmup=1, inner={"A": 1, "B": 2, "C": 4})
    assert calls == list("ABCABCCBAABC")
    assert {k: len(t.samples) for k, t in times.items()} == {"A": 3, "B": 3, "C": 3}


def test_paired_ratio_interval_is_the_sign_tests():
    """Per-round ratios a_i / b_i; the interval is [r_(k), r_(n+1-k)] with the binomial k."""
    ratios = [1.0 + 0.01 * i for i in range(15)]
    b = common.Timing([2.0] * 15)
    a = common.Timing([2.0 * r for r in reversed(ratios)])  # pairing is by round, not by sort
    got = common.paired_ratio(a, b)
    # n = 15: P(Bin(15, 1/2) < 4) = 576/32768 <= 0.025 < P(< 5), so k = 4: [r_4, r_12]
    assert got["n"] == 15 and got["median"] == pytest.approx(1.07)
    assert (got["lo"], got["hi"]) == pytest.approx((1.03, 1.11))
    assert got["coverage"] == pytest.approx(1 - 2 * 576 / 32768)
    few = common.paired_ratio(common.Timing([1.0, 3.0]), common.Timing([1.0, 1.0]))
    assert (few["lo"], few["hi"], few["coverage"]) == (1.0, 3.0, 0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_peer_gradients_match_autodiff(seed):
    gen = np.random.default_rng(seed)
    n_in, batch = int(gen.integers(2, 7)), int(gen.integers(2, 9))
    sizes = [int(gen.integers(2, 8)) for _ in range(int(gen.integers(1, 4)))] + [3]
    model = nn.mlp(sizes)
    _, params, state = model.init(jax.random.key(seed), (n_in,), jnp.float64)
    # random biases: a zero bias on a dead row puts a pre-activation exactly on ReLU's kink
    params = jax.tree.map(
        lambda a: jnp.asarray(gen.standard_normal(a.shape)) if a.ndim == 1 else a, params
    )
    x = gen.standard_normal((batch, n_in))
    y = gen.integers(0, 3, batch)

    def loss(p):
        out, _ = model.apply(p, state, jnp.asarray(x), source="autodiff")
        return ops.softmax_cross_entropy(out, jnp.asarray(y))

    grads = jax.grad(loss)(params)
    dense = [i for i, p in enumerate(params) if p]
    ws = [np.array(params[i]["w"]) for i in dense]
    bs = [np.array(params[i]["b"]) for i in dense]
    value, dws, dbs = numpy_mlp_grads(ws, bs, x, y)
    assert value == pytest.approx(float(loss(params)), rel=1e-12)
    for j, i in enumerate(dense):
        np.testing.assert_allclose(dws[j], grads[i]["w"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dbs[j], grads[i]["b"], rtol=1e-10, atol=1e-12)


def _args(argv):
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(argv)


def test_cli_quick_models_only(tmp_path, capsys):
    argv = [
        "--quick",
        "--models",
        "mlp-small",
        "--skip",
        "multi",
        "scaling",
        "peers",
        "flags",
        "--out",
        str(tmp_path),
    ]
    assert run_bench(_args(argv)) == 0
    out = capsys.readouterr().out
    assert "mlp-small" in out and "| hand |" in out
    assert (tmp_path / "RESULTS.md").exists() and not (tmp_path / "scaling.png").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--quick", "--repeats", "0"], "--repeats must be >= 1"),
        (["--quick", "--models", "nope"], "unknown models"),
    ],
)
def test_cli_bad_arguments(argv, message, capsys):
    assert run_bench(_args(argv)) == 2
    assert message in capsys.readouterr().err


def test_conv_study_quick_runs_and_its_formulations_train_alike(tmp_path, capsys):
    """`benchmarks/conv_study.py --quick`: every part runs, the JSON is written, and one step of
    the GEMM-conv CNN updates the params as the lax-conv one does (float32)."""
    from benchmarks import conv_study

    out = tmp_path / "conv.json"
    res = conv_study.main(["--quick", "--no-torch", "--json", str(out)])
    assert json.loads(out.read_text())["cnn"] and res["layers"]
    cnn = res["cnn"]
    assert 0 <= cnn["hand_vs_lax_params_err"] < 1e-4, cnn
    assert "hand" in capsys.readouterr().out


def test_matmul_step_is_the_mlp_steps_gemms(key):
    """`matmul_step` does per layer W − η Xᵀ dY with dY back-propagated by dY Wᵀ (linear)."""
    k1, k2, k3 = jax.random.split(key, 3)
    ws = (jax.random.normal(k1, (5, 4)), jax.random.normal(k2, (4, 3)))
    x = jax.random.normal(k3, (6, 5))
    a1 = x @ ws[0]
    dy2 = a1 @ ws[1]  # the bound seeds dY with the output itself
    dy1 = dy2 @ ws[1].T
    want = (ws[0] - 0.5 * x.T @ dy1, ws[1] - 0.5 * a1.T @ dy2)
    for got, w in zip(matmul_step(ws, x, lr=0.5), want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)
