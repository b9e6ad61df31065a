"""Compile for checking, not for speed: the settings `funcbp check` and the test suite use.

Checking runs thousands of tiny programs once each, so XLA's compile time, not run time, is
the cost (measured in benchmarks/RESULTS.md, issue 19). Three settings cut it, none changes a
number a check compares beyond float rounding:

* ``jax_disable_most_optimizations``: XLA's HLO passes (fusion, buffer assignment) still run,
  LLVM's backend optimisations do not;
* ``--xla_cpu_use_fusion_emitters=false`` (`CHEAP_XLA_FLAGS`): XLA's CPU backend emits each
  fusion with its older LLVM IR emitters instead of the MLIR fusion pipeline, which compiles
  the registry's small gradient programs several times faster (jaxlib 0.10). XLA
  reads ``XLA_FLAGS`` once, when its backend starts, and aborts the process on a flag it does not
  know, so the flag is only added before the backend starts and only for jaxlib versions known
  to have it (`flag_known`);
* JAX's persistent compilation cache, with no minimum compile time, so a second run loads what
  the first compiled.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["CHEAP_XLA_FLAGS", "compile_cheaply", "flag_known", "with_cheap_flags"]

CHEAP_XLA_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)
"""XLA flags that shorten CPU compiles; each must exist in every jaxlib `flag_known` accepts."""

_KNOWN_JAXLIB = ((0, 10), (0, 11))  # [from, to): the versions the flag was checked in


def flag_known(version: str | None = None) -> bool:
    """Does this jaxlib (or ``version``, "X.Y.Z") know `CHEAP_XLA_FLAGS`?"""
    if version is None:
        from jaxlib.version import __version__ as version
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    return _KNOWN_JAXLIB[0] <= parts < _KNOWN_JAXLIB[1]


def with_cheap_flags(xla_flags: str) -> str:
    """``xla_flags`` (an ``XLA_FLAGS`` value) with each of `CHEAP_XLA_FLAGS` appended, unless it
    already sets that flag (the caller's value wins)."""
    present = {f.split("=", 1)[0] for f in xla_flags.split()}
    extra = [f for f in CHEAP_XLA_FLAGS if f.split("=", 1)[0] not in present]
    return " ".join([*xla_flags.split(), *extra])


def compile_cheaply(cache_dir: str | None = None) -> None:
    """Apply the three settings of the module doc to this process (and to the subprocesses it
    starts, through ``XLA_FLAGS``); ``cache_dir=None`` leaves the persistent cache as it is.

    Call it before the first computation: once XLA's backend has started, the flags are not read
    again, and this warns that only the other two settings apply.
    """
    import jax

    jax.config.update("jax_disable_most_optimizations", True)
    flags = os.environ.get("XLA_FLAGS", "")
    if flag_known() and with_cheap_flags(flags) != flags:
        from jax._src import xla_bridge  # no public "has the backend started?" (jax 0.10)

        if xla_bridge.backends_are_initialized():
            warnings.warn(
                "funcbp.check.compile_cheaply: XLA's backend already started; "
                f"{' '.join(CHEAP_XLA_FLAGS)} not applied",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            os.environ["XLA_FLAGS"] = with_cheap_flags(flags)
    if cache_dir is not None:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
