"""The gpt task end to end on a tiny GPT (a few steps) through the one run path: outputs,
run.json, generation, resume and option errors."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from funcbp import cli
from funcbp.training import checkpoint

TINY = [
    "--model", "gpt", "--digits", "2", "--n-train", "256", "--n-test", "20", "--epochs", "2",
    "--batch-size", "64", "--layers", "1", "--width", "8", "--heads", "2", "--check-batch", "2",
    "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny training run shared by the tests: (folder, return code, stdout)."""
    out = tmp_path_factory.mktemp("gpt") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["train", *TINY, "--out", str(out)])
    return out, rc, buf.getvalue()


def test_gpt_run_writes_metrics_record_plot_and_checkpoint(run):
    out, rc, stdout = run
    assert rc == 0, stdout
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["test_accuracy"] <= 1.0 and m["test_accuracy_definition"].startswith("exact")
    assert 0.0 <= m["test_token_accuracy"] <= 1.0 and 0.0 <= m["test_answer_token_accuracy"] <= 1
    assert len(m["train_loss"]) == 2 and m["epochs"] == 2 and len(m["step_loss"]) == 8
    assert m["loss_floor"] > 0 and m["seconds"] > 0 and m["n_params"] > 0
    assert len(m["examples"]) == 3 and all("+" in e and "=" in e for e in m["examples"])
    for key in ("hand_vs_autodiff_float32", "hand_vs_autodiff_float64",
                "explicit_vs_autodiff_float32", "explicit_vs_autodiff_float64"):  # fmt: skip
        check = m["gradient_check"][key]
        assert check["ok"], key
        assert len(check["per_param"]) == 4 + 12  # tok, pos, ln_f γ/β + 12 per block
    assert m["gradient_check"]["hand_vs_autodiff_float64"]["max_rel"] < 1e-9
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert checkpoint.read_extra(out / "checkpoint.npz")["epoch"] == 2
    record = json.loads((out / "run.json").read_text())
    assert record["format"] == "funcbp-run-1" and record["task"] == "gpt"
    assert record["model"] == {
        "vocab": 13, "context": 9, "layers": 1, "heads": 2, "width": 8, "mlp_ratio": 4,
        "eps": 1e-5, "remat": 0, "remat_policy": "nothing_saveable", "attention": "dense",
        "block_size": 128, "head": "full",
    }  # fmt: skip
    assert record["data"]["digits"] == 2 and record["optimizer"]["total_steps"] == 8
    assert record["optimizer"]["name"] == "adamw" and record["optimizer"]["b2"] == 0.98
    assert "gradient check" in stdout and "test accuracy" in stdout


def test_generate_prints_answers_from_the_checkpoint(run, capsys):
    out, _, _ = run
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "12+34=", "5+7"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"12\+34=\S+", lines[0]) and re.fullmatch(r"5\+7=\S+", lines[1])
    # the .npz itself may be given too, and decoding is deterministic
    ckpt = str(out / "checkpoint.npz")
    assert cli.main(["generate", "--checkpoint", ckpt, "--prompt", "12+34="]) == 0
    assert capsys.readouterr().out.strip() == lines[0]
    # the sampling options of `funcbp generate` (as for llama): seeded draws of the answer
    sample = ["generate", "--checkpoint", ckpt, "--prompt", "12+34=", "--temperature", "0.8",
              "--top-k", "3", "--seed", "1", "--max-new-tokens", "200"]  # fmt: skip
    assert cli.main(sample) == 0
    drawn = capsys.readouterr().out.strip()
    assert re.fullmatch(r"12\+34=\S+", drawn)
    assert cli.main(sample) == 0 and capsys.readouterr().out.strip() == drawn


@pytest.mark.parametrize(
    ("prompt", "message"),
    [("12*34=", r"prompt must look like 'A\+B='"), ("123+4=", "operand 123 has more than 2")],
)
def test_generate_rejects_bad_prompts(run, capsys, prompt, message):
    out, _, _ = run
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", prompt]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_generate_needs_a_run_folder_of_a_generating_task(tmp_path, capsys):
    assert cli.main(["generate", "--checkpoint", str(tmp_path), "--prompt", "1+2="]) == 2
    assert "no run.json in" in capsys.readouterr().err
    (tmp_path / "run.json").write_text(json.dumps({"format": "funcbp-run-1", "task": "mlp"}))
    assert cli.main(["generate", "--checkpoint", str(tmp_path), "--prompt", "1"]) == 2
    assert "task mlp does not generate" in capsys.readouterr().err
    (tmp_path / "run.json").write_text("[1, 2]")
    assert cli.main(["generate", "--checkpoint", str(tmp_path), "--prompt", "1"]) == 2
    assert "is not a funcbp run record" in capsys.readouterr().err


def test_resume_with_another_config_is_refused_naming_it(run, capsys):
    out, _, _ = run
    args = ["train", *TINY, "--out", str(out), "--resume"]
    args[args.index("--width") + 1] = "16"
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--resume with a different config" in err and "model.width: 8 -> 16" in err
    assert cli.main(["train", *TINY, "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n-train", "10", "--n-test", "5", "--batch-size", "128"], "--batch-size 128 exceeds"),
        (["--digits", "1", "--n-train", "95", "--n-test", "6"], "exceeds the 100 distinct"),
        (["--width", "10", "--heads", "4"], "width 10 must be divisible by heads 4"),
        (["--hidden", "7"], "--hidden is not an option of task gpt"),
        (["--data", "f.npz"], "--data is not an option of task gpt"),
        (["--lr", "-1"], "--lr must be > 0"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    assert cli.main(["train", "--model", "gpt", "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_flash_attention_and_chunked_head_train_and_generate(tmp_path, capsys):
    out = tmp_path / "flash"
    args = ["train", *TINY, "--epochs", "1", "--attention", "flash", "--block-size", "4",
            "--head", "chunked", "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["model"]["attention"] == "flash" and record["model"]["head"] == "chunked"
    assert cli.main(["generate", "--checkpoint", str(out), "--prompt", "1+2="]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("1+2=")
