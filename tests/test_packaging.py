"""``python -m build`` makes an sdist and a wheel that install into a fresh venv and run.

How (and why this is honest without a network): ``python -m build --no-isolation`` builds the
sdist from the repository, then the wheel *from the sdist* (so a file missing from the sdist
breaks the wheel), with this venv's setuptools (the dev extras pin it: no download). Each
artifact is installed with ``--no-deps --no-index`` into its own new venv, created without pip
(pip runs from this venv via ``--python``). The new venv sees this venv's site-packages through
a ``.pth`` line, for the *dependencies* only (jax, optax, ...): a plain path line in a ``.pth``
puts that folder at the end of ``sys.path`` without running the ``.pth`` files inside it, so
this venv's editable install of funcbp is not active there, and the installed copy comes first.
The test asserts that ``funcbp`` is imported from the new venv, then runs the installed
``funcbp check --ops linear`` from a folder outside the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import funcbp

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _fresh_venv(path: Path) -> Path:
    """A new venv without pip whose path ends with this venv's site-packages (dependencies)."""
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    purelib = _run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=path
    )
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib.strip()) / "funcbp_test_dependencies.pth").write_text("\n".join(sorted(ours)))
    return python


def _install_and_run(artifact: Path, where: Path) -> str:
    python = _fresh_venv(where)
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet"]
    _run(*pip, "--no-deps", "--no-index", "--no-build-isolation", artifact, cwd=where)
    probe = "import funcbp; print(funcbp.__version__); print(funcbp.__file__)"
    version, location = _run(python, "-c", probe, cwd=where).split()
    assert version == funcbp.__version__
    assert Path(location).is_relative_to(where), f"funcbp imported from {location}, not {where}"
    return _run(where / "bin" / "funcbp", "check", "--ops", "linear", cwd=where)


@pytest.mark.slow
def test_sdist_and_wheel_install_and_run(tmp_path):
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT, cwd=ROOT)
    (sdist,) = dist.glob(f"funcbp-{funcbp.__version__}.tar.gz")
    (wheel,) = dist.glob(f"funcbp-{funcbp.__version__}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "funcbp/ops/linear.py" in names and "funcbp/cli/main.py" in names
        assert not [n for n in names if n.startswith(("tests/", "notebooks/", "docs/"))]
        metadata = z.read(f"funcbp-{funcbp.__version__}.dist-info/METADATA").decode()
        assert re.search(rf"^Version: {re.escape(funcbp.__version__)}$", metadata, re.M)
    with tarfile.open(sdist) as t:
        assert f"funcbp-{funcbp.__version__}/funcbp/ops/linear.py" in t.getnames()
    for kind, artifact in (("wheel", wheel), ("sdist", sdist)):
        out = _install_and_run(artifact, tmp_path / f"venv-{kind}")
        assert re.search(r"\b3 passed, 0 failed", out), out
