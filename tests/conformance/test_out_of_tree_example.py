"""The guide's out-of-tree example driver (docs/examples/tinynpu) passes the
conformance suite, as its author would run it after ``pip install -e .``."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "tinynpu"


def test_tinynpu_passes_the_conformance_suite(pytester: pytest.Pytester) -> None:
    pytester.syspathinsert(EXAMPLE)
    result = pytester.runpytest_inprocess(
        "--pyargs",
        "accelcore.testing.conformance",
        "-p",
        "no:cacheprovider",
        "--accel-driver",
        "tinynpu:TinyNpuDriver",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes["passed"] >= 30
    # Every check ran through both transports (the default), with the same fuzz run.
    result.stdout.fnmatch_lines(
        [
            "drv=tinynpu via inproc: fuzz: * calls over 3/3 ioctls*",
            "drv=tinynpu via server: fuzz: * calls over 3/3 ioctls*",
        ]
    )
