"""Strict test setup: float64 available, rank promotion raises, warnings are errors (pyproject),
fresh PRNG keys, and hypothesis profiles sized for 2 cores.

Hypothesis profiles (env ``FUNCBP_HYPOTHESIS``): ``default`` (few examples: every new shape
recompiles under jit), ``deep`` (many, for occasional long runs), ``ci`` (= default, derandomized).

Compilation is most of the suite's cost (tiny shapes run in microseconds, each new program takes
tens of milliseconds to compile), so the tests:

* share JAX's persistent compilation cache (``.jax_cache/`` in the repository, or
  ``FUNCBP_JAX_CACHE``; ``FUNCBP_JAX_CACHE=off`` disables it) between the xdist workers and the
  subprocesses they start, with no minimum compile time: a program compiled by one test (the
  hand gradient of an op at a sampled shape) is loaded, not compiled, by every other test that
  builds the same program;
* compile without XLA's backend (LLVM) optimisations (``JAX_DISABLE_MOST_OPTIMIZATIONS``): the
  HLO passes (fusion, buffer assignment) still run, so memory measurements are unchanged; only
  the machine code is less optimised, which tiny test shapes never notice;
* add `funcbp.check.fast_compile.CHEAP_XLA_FLAGS` to ``XLA_FLAGS`` (XLA's older CPU fusion
  emitters compile faster), set before any backend starts and inherited likewise.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

_CACHE = os.environ.get("FUNCBP_JAX_CACHE") or str(
    Path(__file__).resolve().parents[1] / ".jax_cache"
)
if _CACHE != "off":  # before jax is imported: workers and subprocesses inherit the environment
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from funcbp.check.fast_compile import flag_known, with_cheap_flags  # noqa: E402

if flag_known() and os.environ.get("FUNCBP_CHEAP_XLA_FLAGS", "1") != "0":
    os.environ["XLA_FLAGS"] = with_cheap_flags(os.environ.get("XLA_FLAGS", ""))

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("default", max_examples=3, derandomize=True, **_COMMON)
settings.register_profile("ci", max_examples=3, derandomize=True, **_COMMON)
settings.register_profile("deep", max_examples=200, **_COMMON)
settings.load_profile(os.environ.get("FUNCBP_HYPOTHESIS", "default"))


@pytest.fixture
def key(request):
    """A fresh PRNG key per test, fixed by the test's id (reproducible in any order)."""
    return jax.random.key(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def keys(key):
    """An endless supply of fresh keys: ``next(keys)``."""

    def gen(k):
        while True:
            k, sub = jax.random.split(k)
            yield sub

    return gen(key)
