"""The gradient-comparison notebooks: sources in sync, re-executed from scratch, asserts hold.

The source of each notebook is ``notebooks/NN_name.py`` (jupytext percent format, linted by
ruff); ``notebooks/build.py`` executes it and commits ``NN_name.ipynb`` with its outputs. Here

* every ``.py`` has its ``.ipynb`` and the two hold the same cells (a ``.py`` edited without
  rebuilding fails), and the committed ``.ipynb`` was executed without errors or stderr;
* every notebook is executed again from its ``.py`` with a kernel running this interpreter (the
  venv's python; see ``build.venv_kernel``): a wrong formula fails an ``assert`` in a cell,
  which fails the test with the cell's traceback. A kernel that writes to stderr (a warning
  from matplotlib, JAX, ...) fails the test too.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


def _load_build():
    spec = importlib.util.spec_from_file_location(
        "funcbp_notebooks_build", NOTEBOOK_DIR / "build.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()
STEMS = [path.stem for path in build.SOURCES]
PRINTED = {  # stem: text a run must print (besides its asserts)
    "07_forward_mode_by_hand": ["forward-mode rules vs autodiff"],
    "08_long_context_by_hand": ["chunked CE dw", "grouped dk"],
}

# Warnings stay errors here (pyproject): this process only runs the Jupyter client side, which
# emits none with the pinned stack (jupyter_client 8, pyzmq 27; pyproject already ignores their
# DeprecationWarnings from older versions). Warnings inside the kernel (matplotlib, JAX, ...)
# are printed to the notebook's stderr, which the tests below require to be empty.


def _outputs(nb, kind=None):
    for cell in nb.cells:
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                if kind is None or out.get("output_type") == kind:
                    yield cell, out


def _stream_text(nb, name: str) -> str:
    return "".join(out.get("text", "") for _, out in _outputs(nb, "stream") if out.name == name)


def _plots(nb) -> bool:
    """Whether the notebook uses matplotlib (then it must show at least one PNG)."""
    return any("matplotlib" in c.source for c in nb.cells if c.cell_type == "code")


def test_every_notebook_source_has_its_executed_twin():
    """Each ``NN_name.py`` and ``NN_name.ipynb`` hold the same cells; the latter has outputs."""
    assert STEMS, "no notebooks/NN_name.py found"
    twins = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert twins == STEMS, "every NN_name.py needs its NN_name.ipynb and back"
    for path in build.SOURCES:
        rebuild = f"out of sync: run `.venv/bin/python notebooks/build.py {path.stem[:2]}`"
        committed = nbformat.read(path.with_suffix(".ipynb"), as_version=4)
        nbformat.validate(committed)
        assert build.sources(committed) == build.sources(build.read_source(path)), (
            f"{path.name} and its .ipynb hold different cells: {rebuild}"
        )
        code_cells = [c for c in committed.cells if c.cell_type == "code"]
        assert code_cells and all(c.execution_count is not None for c in code_cells), (
            f"{path.stem}.ipynb is committed without executing it: {rebuild}"
        )
        assert not list(_outputs(committed, "error")), path.stem
        assert not _stream_text(committed, "stderr"), f"{path.stem}.ipynb has stderr output"
        assert not _plots(committed) or any(
            "image/png" in out.get("data", {}) for _, out in _outputs(committed)
        ), f"{path.stem}.ipynb shows no plot"


def test_a_stale_twin_is_detected(tmp_path):
    """The comparison above sees a one-character edit of a code cell."""
    path = build.SOURCES[0]
    edited = tmp_path / path.name
    edited.write_text(path.read_text().replace("import jax\n", "import jax  # edited\n", 1))
    committed = nbformat.read(path.with_suffix(".ipynb"), as_version=4)
    assert build.sources(build.read_source(edited)) != build.sources(committed)


@pytest.mark.slow
def test_kernel_runs_this_python():
    """The notebooks' kernel is this interpreter, whatever kernelspecs are installed."""
    nb = new_notebook(cells=[new_code_cell("import sys; print(sys.executable, end='')")])
    build.execute(nb, timeout=120)
    (out,) = [o for _, o in _outputs(nb, "stream")]
    assert Path(out.text).resolve() == Path(sys.executable).resolve()


@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_notebook_executes_and_its_asserts_hold(stem, monkeypatch):
    """Every notebook, from its source. ``FUNCBP_NOTEBOOK_QUICK=1`` lets a notebook whose cost
    is repetition (02: shapes per op and timing rounds) run fewer repetitions here — the same
    asserts; the committed outputs come from the full run (`notebooks/build.py`)."""
    monkeypatch.setenv("FUNCBP_NOTEBOOK_QUICK", "1")
    nb = build.read_source(NOTEBOOK_DIR / f"{stem}.py")
    build.execute(nb)  # raises CellExecutionError (with the traceback) if any cell fails
    assert not _stream_text(nb, "stderr"), f"{stem} wrote to stderr:\n{_stream_text(nb, 'stderr')}"
    assert not _plots(nb) or any("image/png" in out.get("data", {}) for _, out in _outputs(nb))
    stdout = _stream_text(nb, "stdout")
    for text in PRINTED.get(stem, []):
        assert text in stdout, f"{stem} did not print {text!r}"
