"""The README's example runs and shows hand gradients agreeing with jax.grad."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_shows_both_commands():
    text = README.read_text()
    assert "make train" in text and "make test" in text


def test_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    errors = [float(v) for v in re.findall(r"relative error ([0-9.e+-]+)", out)]
    assert len(errors) == 4 and max(errors) < 1e-5
