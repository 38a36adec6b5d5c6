"""Fixtures for the kfd_like tests (virtual time)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from accelcore.machine import Machine
from accelcore.testing.transports import ProcessFactory
from drivers.kfd_like.thunk import Kfd, driver_of, make_machine


@pytest.fixture
def machine2() -> Machine:
    return make_machine(5_000, 5_000)


@pytest.fixture
def kfd(machine2: Machine) -> Iterator[Kfd]:
    k = Kfd(machine2)
    k.acquire_all()
    yield k


@pytest.fixture
def kfd_both(machine2: Machine, accel_process_factory: ProcessFactory) -> Iterator[Kfd]:
    """:func:`kfd` once in process and once as a client of a devfs server."""
    k = Kfd(machine2, accel_process_factory(machine2))
    k.acquire_all()
    yield k


@pytest.fixture
def leak_check() -> Callable[[Machine], Callable[[], None]]:
    """Record the baseline of a machine now; the returned function asserts it."""

    def start(m: Machine) -> Callable[[], None]:
        base = (m.subsystem.accounting(), driver_of(m).accounting())

        def check() -> None:
            assert (m.subsystem.accounting(), driver_of(m).accounting()) == base

        return check

    return start
