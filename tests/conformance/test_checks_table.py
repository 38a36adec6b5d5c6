"""The table of checks the documentation renders."""

from __future__ import annotations

import inspect

import pytest

from accelcore.testing import conformance
from accelcore.testing.conformance import AREAS, CHECKS, check, checks_table


def test_every_conformance_test_is_in_the_table() -> None:
    rows = checks_table()
    names = {name for name, _, _ in rows}
    for modname in {c.module for c in CHECKS.values()}:
        mod = __import__(modname, fromlist=["_"])
        tests = {n for n, f in inspect.getmembers(mod, inspect.isfunction) if n.startswith("test_")}
        assert tests <= names, f"{modname}: unregistered checks {sorted(tests - names)}"
    assert len(rows) == len(names) >= 30


def test_table_rows_are_ordered_by_area_with_one_line_descriptions() -> None:
    rows = checks_table()
    order = [AREAS.index(area) for _, area, _ in rows]
    assert order == sorted(order)
    assert {area for _, area, _ in rows} == set(AREAS)
    assert all(what and "\n" not in what for _, _, what in rows)


def test_check_refuses_an_unknown_area() -> None:
    with pytest.raises(ValueError, match="unknown conformance area 'gpu'"):
        check("gpu", "x")


def test_package_documents_how_to_run() -> None:
    assert "--accel-driver" in (conformance.__doc__ or "")


def test_every_check_names_the_bug_it_catches() -> None:
    checks_table()
    assert all(c.catches for c in CHECKS.values())
    assert "restartable" in CHECKS["test_restart_at_every_wait_point"].catches
