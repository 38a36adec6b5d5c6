"""The pytest plugin (entry point ``pytest11``): fixtures for driver tests.

Fixtures:
    accel_subsystem: a fresh :class:`~accelcore.subsystem.Subsystem` in virtual time.
    accel_leak_check: snapshots :meth:`Subsystem.accounting` and fails the test if
        anything is still alive, or an oops happened, when it ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..clock import VirtualClock
from ..subsystem import Subsystem


@pytest.fixture
def accel_subsystem() -> Subsystem:
    """A subsystem with no drivers, in virtual time."""
    return Subsystem(VirtualClock())


@pytest.fixture
def accel_leak_check(accel_subsystem: Subsystem) -> Iterator[Subsystem]:
    """The subsystem, checked at teardown for leaks and oopses."""
    before = accel_subsystem.accounting()
    yield accel_subsystem
    after = accel_subsystem.accounting()
    leaked = {k: (before[k], after[k]) for k in before if after[k] != before[k]}
    assert not leaked, f"resources leaked (before, after): {leaked}"
