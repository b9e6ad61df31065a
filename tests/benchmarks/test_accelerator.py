"""benchmarks/accelerator.py: the smoke mode runs on CPU and writes its report; the FLOP
counts and the peak table are right."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import pytest

from benchmarks import accelerator as A
from funcbp.nn.gpt import gpt


def test_peak_table_and_device_names():
    fake = lambda kind: types.SimpleNamespace(device_kind=kind, platform="gpu")
    sizes = A.SIZES["smoke"]
    assert A.peak_tflops(sizes, fake("NVIDIA H100 80GB HBM3"))[0] == 989.0
    assert A.peak_tflops(sizes, fake("NVIDIA H100 PCIe"))[0] == 756.0
    assert A.peak_tflops(sizes, fake("NVIDIA H200"))[0] == 989.0
    assert A.peak_tflops(sizes, fake("TPU v5 lite"))[0] == 197.0
    assert A.device_name(fake("NVIDIA H200")) == "nvidia-h200"
    assert A.device_name(jax.devices("cpu")[0]) == "cpu"


def test_gpt2_124m_shapes_and_flops_per_token():
    """The full run's GPT is GPT-2 124M (vocab padded to 50304, as llm.c): N = 124,475,904
    and 6N + 6·L·C·T FLOPs per token; the batch is 16K tokens."""
    sizes = A.SIZES["full"]
    config = sizes.gpt
    shapes = jax.eval_shape(lambda: gpt(config).init(jax.random.key(0), (1024,), jnp.float32))
    n = sum(p.size for p in jax.tree.leaves(shapes[1]))
    assert n == 124_475_904
    assert A.gpt_flops_per_token(config, n) == 6 * n + 6 * 12 * 768 * 1024
    assert sizes.gpt_batch * config.context >= 16 * 1024
    assert A.attention_flops(1, 1, 4, 2) == 3.5 * 4 * 16 * 2 / 2


@pytest.mark.slow
def test_smoke_run_writes_the_report(tmp_path, capsys):
    out = tmp_path / "RESULTS-cpu.md"
    assert A.main(["--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    for part in ("# funcbp on", "GPT training step", "MFU", "tokens/s", "Causal attention",
                 "flash_attention (hand)", "jax.nn.dot_product_attention", "MLP and CNN",
                 "autodiff / hand", "target <= 1.00", "## Machine"):  # fmt: skip
        assert part in text, part
    printed = capsys.readouterr().out
    assert printed.startswith("device: ") and f"wrote {out}" in printed
