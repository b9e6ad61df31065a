"""`check_registry_parallel` gives `check_registry`'s rows, in order, from two processes."""

from __future__ import annotations

import pytest

from funcbp import check
from funcbp.check.parallel import MIN_OPS_PER_PROCESS, check_registry_parallel, default_processes
from funcbp.ops import REGISTRY


def test_two_processes_give_the_rows_of_one():
    names = ["relu", "linear", "softmax"]
    kw = dict(dtypes=("float64",), seeds=[0])
    one = check.check_registry(ops=[REGISTRY[n] for n in names], **kw)
    two = check_registry_parallel(names, processes=2, **kw)
    assert [(r.name, r.dtype, r.a, r.b, r.detail) for r in two] == [
        (r.name, r.dtype, r.a, r.b, r.detail) for r in one
    ]
    assert all(r.ok for r in two)
    for a, b in zip(one, two, strict=True):
        assert a.worst_rel == pytest.approx(b.worst_rel, rel=1e-6, abs=1e-15)


def test_few_ops_stay_in_one_process_and_names_are_checked():
    assert default_processes(1) == 1
    assert default_processes(2 * MIN_OPS_PER_PROCESS - 1) == 1
    assert default_processes(2 * MIN_OPS_PER_PROCESS) in (1, 2)
    with pytest.raises(ValueError, match=r"check_registry_parallel: unknown op\(s\) \['nope'\]"):
        check_registry_parallel(["relu", "nope"])
