"""`run_gpt` and `generate` end to end on a tiny GPT (a few steps): outputs, config, errors."""

from __future__ import annotations

import contextlib
import io
import json
import re
import types

import pytest

from funcbp import checkpoint, gpt_cli

TINY = [
    "--digits", "2", "--n-train", "256", "--n-test", "20", "--epochs", "2", "--batch-size", "64",
    "--layers", "1", "--width", "8", "--heads", "2", "--check-batch", "2", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny training run shared by the tests: (folder, return code, stdout)."""
    out = tmp_path_factory.mktemp("gpt") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = gpt_cli.main(["train", *TINY, "--out", str(out)])
    return out, rc, buf.getvalue()


def test_run_gpt_writes_metrics_config_plot_and_checkpoint(run):
    out, rc, stdout = run
    assert rc == 0, stdout
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["test_accuracy"] <= 1.0 and m["test_accuracy_definition"].startswith("exact")
    assert 0.0 <= m["test_token_accuracy"] <= 1.0 and 0.0 <= m["test_answer_token_accuracy"] <= 1
    assert len(m["train_loss"]) == 2 and m["epochs"] == 2 and m["steps"] == 2 * (256 // 64)
    assert (
        m["loss_floor"] > 0 and m["seconds"] > 0 and m["steps_per_second"] > 0 and m["n_params"] > 0
    )
    for key in (
        "hand_vs_autodiff_float32",
        "hand_vs_autodiff_float64",
        "explicit_vs_autodiff_float32",
        "explicit_vs_autodiff_float64",
    ):
        check = m["gradient_check"][key]
        assert check["ok"], key
        assert len(check["per_param"]) == 4 + 12  # tok, pos, ln_f γ/β + 12 per block
    assert m["gradient_check"]["hand_vs_autodiff_float64"]["max_rel"] < 1e-9
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert checkpoint.read_extra(out / "checkpoint.npz")["epoch"] == 2
    saved = json.loads((out / gpt_cli.CONFIG_NAME).read_text())
    assert saved["model"] == {
        "vocab": 13,
        "context": 9,
        "layers": 1,
        "heads": 2,
        "width": 8,
        "mlp_ratio": 4,
        "eps": 1e-5,
    }
    assert saved["task"]["digits"] == 2 and saved["optimizer"]["total_steps"] == 8
    assert "gradient check" in stdout and "held-out exact match" in stdout


def test_generate_prints_answers_from_the_checkpoint(run, capsys):
    out, _, _ = run
    assert gpt_cli.main(["generate", "--checkpoint", str(out), "--prompt", "12+34=", "5+7"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"12\+34=\S+", lines[0]) and re.fullmatch(r"5\+7=\S+", lines[1])
    # the .npz itself may be given too, and decoding is deterministic
    assert (
        gpt_cli.main(
            ["generate", "--checkpoint", str(out / "checkpoint.npz"), "--prompt", "12+34="]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == lines[0]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("12*34=", r"prompt must look like 'A\+B='"), ("123+4=", "operand 123 has more than 2")],
)
def test_generate_rejects_bad_prompts(run, capsys, prompt, message):
    out, _, _ = run
    assert gpt_cli.main(["generate", "--checkpoint", str(out), "--prompt", prompt]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_generate_needs_a_gpt_run_folder(tmp_path, capsys):
    assert gpt_cli.main(["generate", "--checkpoint", str(tmp_path), "--prompt", "1+2="]) == 2
    assert "no gpt.json in" in capsys.readouterr().err


def test_resume_with_another_config_is_refused(run, capsys):
    out, _, _ = run
    args = ["train", *TINY, "--out", str(out), "--resume"]
    args[args.index("--width") + 1] = "16"
    assert gpt_cli.main(args) == 2
    assert "--resume with a different model config" in capsys.readouterr().err
    assert gpt_cli.main(["train", *TINY, "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_run_gpt_takes_any_namespace_and_validates(tmp_path, capsys):
    """Options absent from the namespace (another parser) fall back to GPT_DEFAULTS; bad ones
    are reported before any training."""
    args = types.SimpleNamespace(out=str(tmp_path), digits=1, n_train=10, n_test=5)
    assert gpt_cli.run_gpt(args) == 2  # batch 128 (the default) > 10 problems
    assert "--batch-size 128 exceeds the 10 training problems" in capsys.readouterr().err
    args = types.SimpleNamespace(out=str(tmp_path), digits=1, n_train=95, n_test=6)
    assert gpt_cli.run_gpt(args) == 2
    assert "exceeds the 100 distinct 1-digit problems" in capsys.readouterr().err
    args = types.SimpleNamespace(out=str(tmp_path), width=10, heads=4)
    assert gpt_cli.run_gpt(args) == 2
    assert "width 10 must be divisible by heads 4" in capsys.readouterr().err


def test_standalone_entry_is_the_funcbp_parser(capsys):
    """`python -m funcbp.gpt_cli train ...` is `funcbp train --model gpt ...`: one parser, the
    same help, messages and exit codes."""
    from funcbp import cli

    helps = []
    for main in (cli.main, gpt_cli.main):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            main(["train", "--help"])
        assert e.value.code == 0
        helps.append(out.getvalue())
    assert helps[0] == helps[1] and "--check-batch" in helps[0] and "--hidden" in helps[0]
    bad = ["train", "--epochs", "-3", "--no-progress"]
    assert gpt_cli.main(bad) == 2  # the GPT's own check: --model gpt is implied
    err = capsys.readouterr().err
    assert cli.main([*bad, "--model", "gpt"]) == 2
    assert capsys.readouterr().err == err == "funcbp train: --epochs must be positive, got -3\n"
