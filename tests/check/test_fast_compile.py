"""Compile settings for checking: the XLA flag is added once, never over the caller's, and only
where the jaxlib knows it (XLA aborts the process on an unknown flag)."""

from __future__ import annotations

import os

import pytest

from funcbp.check import fast_compile as fc


def test_cheap_flags_are_appended_once_and_the_callers_value_wins():
    (flag,) = fc.CHEAP_XLA_FLAGS
    name = flag.split("=", 1)[0]
    assert fc.with_cheap_flags("") == flag
    assert fc.with_cheap_flags("--xla_dump_to=/tmp/x") == f"--xla_dump_to=/tmp/x {flag}"
    assert fc.with_cheap_flags(fc.with_cheap_flags("")) == flag
    assert fc.with_cheap_flags(f"{name}=true") == f"{name}=true"


@pytest.mark.parametrize(
    "version, known", [("0.10.0", True), ("0.10.2", True), ("0.9.9", False), ("0.11.0", False)]
)
def test_flag_only_for_jaxlib_versions_checked(version, known):
    assert fc.flag_known(version) is known


def test_late_call_warns_and_leaves_xla_flags(monkeypatch):
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # the backend has started
    monkeypatch.setenv("XLA_FLAGS", "")
    if fc.flag_known():
        with pytest.warns(RuntimeWarning, match=r"backend already started.*not applied"):
            fc.compile_cheaply()
    assert os.environ["XLA_FLAGS"] == ""
    monkeypatch.setenv("XLA_FLAGS", fc.with_cheap_flags(""))
    fc.compile_cheaply()  # already in place: nothing to say
