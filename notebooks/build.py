"""Execute the notebooks from their jupytext sources; save each ``.ipynb`` with its outputs.

The source of a notebook is ``notebooks/NN_name.py`` in jupytext's percent format (markdown cells
as ``# %% [markdown]`` comments, LaTeX intact), linted and formatted by ruff like the package.
Edit the ``.py``, never the ``.ipynb``, then

    .venv/bin/python notebooks/build.py             # execute all, write each .ipynb, README.md
    .venv/bin/python notebooks/build.py 02 07       # only notebooks whose name contains 02 or 07
    .venv/bin/python notebooks/build.py --no-execute  # write the .ipynb without outputs

Each ``.ipynb`` is saved with its outputs (plots as PNG, tables as text) so it renders on a code
host and in the documentation site. ``tests/notebooks/test_notebooks.py`` fails when a ``.py``
and its ``.ipynb`` hold different cells, and re-executes every notebook from scratch (its
``assert`` cells make a wrong formula fail the tests).

The kernel is this interpreter (``sys.executable``, i.e. the venv's python), through a kernelspec
written to a temporary ``JUPYTER_PATH``: no global Jupyter configuration is read or changed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
KERNEL_NAME = "funcbp-notebooks"
TIMEOUT_S = 900
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
SOURCES = sorted(HERE.glob("[0-9][0-9]_*.py"))  # the notebooks, in order
DESCRIPTIONS = {  # stem: what the notebook shows (notebooks/README.md's table)
    "01_linear_layer_by_hand": "The linear layer Y = XW + b: dL/dW, dL/dX, dL/db derived, coded "
    "in jnp and checked against jax.grad and finite differences; outer products; the chained "
    "recursion; why update only after all gradients; the L2 update vs classic_sgd.",
    "02_every_op_vs_jax_grad": "Every op in funcbp.ops.REGISTRY: hand VJP vs autodiff (float32, "
    "float64) and vs finite differences (float64) over random shapes and cotangents; error "
    "distributions per op; hand vs autodiff timings.",
    "03_training_hand_vs_autodiff": "An MLP trained on digits with hand VJPs and with autodiff "
    "from the same init: loss curves, per-step parameter drift (float32 vs float64), accuracy, "
    "misclassified digits, steps/s.",
    "04_layers_by_hand": "Convolution, batch norm, layer norm and attention by hand: each VJP "
    "derived with shapes (im2col dW = PᵀdY, dX as a transposed conv; the three batch-norm "
    "terms; dZ = P ⊙ (dP − rowsum(dO ⊙ O))), coded in jnp and checked against funcbp, jax.grad "
    "and finite differences on hand-picked and random shapes; what dropping batch-norm terms "
    "costs.",
    "05_finding_a_planted_bug": "The divergence report on the digits MLP and CNN: no divergence "
    "when healthy; three planted bugs (dW sign, a wrong residual from funcbp.check.mutate, batch "
    "norm without its mean term) each named exactly; per-layer errors from the loss backwards; "
    "every mutant of linear, conv2d and batch_norm caught.",
    "06_llama_block_by_hand": "RMSNorm, RoPE and SwiGLU by hand: each VJP derived (RoPE's is "
    "the rotation by −φ, written with complex numbers), coded in jnp and checked against funcbp, "
    "jax.grad and finite differences; hand JVPs; a tiny Llama's hand and explicit gradients vs "
    "autodiff.",
    "07_forward_mode_by_hand": "A hand JVP next to every VJP: forward mode (jax.jvp, jacfwd) "
    "through op.forward_mode, the dot-product test that the two hand rules are each other's "
    "transpose, and a Hessian-vector product of a digits MLP forward-over-reverse through hand "
    "rules only, vs autodiff.",
    "08_long_context_by_hand": "Online softmax and the FlashAttention-2 backward (grouped heads "
    "included) and the chunked linear cross-entropy gradient, derived blockwise, coded in jnp "
    "and checked against funcbp, jax.grad and finite differences; the temporary memory each "
    "saves.",
}


def read_source(path: Path) -> nbformat.NotebookNode:
    """The unexecuted notebook held by the jupytext source ``path`` (``NN_name.py``)."""
    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    return nb


def sources(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """``(cell_type, source)`` of every cell: what must agree between a ``.py`` and its twin."""
    return [(c.cell_type, c.source) for c in nb.cells]


@contextlib.contextmanager
def venv_kernel():
    """Yield the name of a kernel that runs ``sys.executable`` (this venv's python).

    The kernelspec lives in a temporary directory put first on ``JUPYTER_PATH`` for the
    duration; the previous value is restored afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="funcbp-kernel-") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"funcbp ({sys.executable})",
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = tmp + (os.pathsep + old if old else "")
        try:
            yield KERNEL_NAME
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def execute(nb: nbformat.NotebookNode, *, cwd: Path = HERE, timeout: int = TIMEOUT_S) -> float:
    """Execute ``nb`` in place with the venv kernel; returns the wall time in seconds and
    records it, with the kernel's CPU time, in ``nb.metadata["funcbp"]``.

    Raises `nbclient.exceptions.CellExecutionError` (with the cell's traceback) when a cell
    fails, e.g. an ``assert`` on the numbers.
    """
    from nbclient import NotebookClient

    metadata = dict(nb.metadata)
    with venv_kernel() as kernel_name:
        client = NotebookClient(
            nb,
            kernel_name=kernel_name,
            timeout=timeout,
            record_timing=False,
            resources={"metadata": {"path": str(cwd)}},
        )
        cpu0, t0 = _children_cpu(), time.perf_counter()
        client.execute()  # the kernel is shut down and reaped before this returns
        seconds, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    nb.metadata["kernelspec"] = metadata.get("kernelspec", dict(KERNELSPEC))
    nb.metadata["funcbp"] = {"execution_s": round(seconds, 1), "kernel_cpu_s": round(cpu, 1)}
    return seconds


def _children_cpu() -> float:
    """User + system CPU seconds of this process's terminated children (the kernel)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_readme() -> None:
    """Rewrite ``README.md``: one row per notebook, with the timings recorded in its metadata."""
    lines = [
        "# Notebooks",
        "",
        "Gradient-comparison notebooks: every formula is derived in markdown, coded, and proved",
        "numerically with `assert`s. The source of each is the jupytext percent-format `.py`",
        "(linted by ruff; edit it, never the `.ipynb`); `build.py` executes it and writes the",
        "`.ipynb` with its outputs. `tests/notebooks/test_notebooks.py` checks that every pair",
        "holds the same cells and re-executes every notebook from scratch.",
        "",
        "    .venv/bin/python notebooks/build.py        # execute all, write the .ipynb, this file",
        "",
        "| notebook | source | what it shows | wall time | kernel CPU time |",
        "|---|---|---|---|---|",
    ]
    for path in SOURCES:
        ipynb = path.with_suffix(".ipynb")
        t = nbformat.read(ipynb, as_version=4).metadata.get("funcbp", {}) if ipynb.exists() else {}
        wall = f"{t['execution_s']:.0f} s" if "execution_s" in t else "not measured"
        cpu = f"{t['kernel_cpu_s']:.0f} s" if "kernel_cpu_s" in t else "not measured"
        description = DESCRIPTIONS.get(path.stem, "")
        lines.append(
            f"| [{ipynb.name}]({ipynb.name}) | [{path.name}]({path.name}) | {description} "
            f"| {wall} | {cpu} |"
        )
    lines += [
        "",
        "Measured when the notebooks were last built, on a 2-core CPU machine shared with other",
        "jobs: the wall time (kernel start included) depends on that load; the kernel's CPU time",
        "(user + system, all threads) is the better guide to the wall time on an idle machine.",
        "",
    ]
    (HERE / "README.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="substrings selecting notebooks (default: all)")
    parser.add_argument("--no-execute", action="store_true", help="write without outputs")
    args = parser.parse_args(argv)
    chosen = [p for p in SOURCES if not args.names or any(s in p.name for s in args.names)]
    if not chosen:
        parser.error(f"no notebook matches {args.names}; have {[p.name for p in SOURCES]}")
    for path in chosen:
        nb = read_source(path)
        if not args.no_execute:
            print(f"executing {path.name} ...", flush=True)
            execute(nb)
            t = nb.metadata["funcbp"]
            print(f"  {t['execution_s']:.1f} s wall, {t['kernel_cpu_s']:.1f} s kernel CPU")
        nbformat.validate(nb)
        nbformat.write(nb, path.with_suffix(".ipynb"))
    write_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main())
