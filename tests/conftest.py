"""Strict test setup: float64 available, rank promotion raises, warnings are errors (pyproject),
fresh PRNG keys, and hypothesis profiles sized for 2 cores.

Hypothesis profiles (env ``FUNCBP_HYPOTHESIS``): ``default`` (few examples: every new shape
recompiles under jit), ``deep`` (many, for occasional long runs), ``ci`` (= default, derandomized).
"""

from __future__ import annotations

import os
import zlib

import jax
import pytest
from hypothesis import HealthCheck, settings

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
