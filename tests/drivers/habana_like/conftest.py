"""Fixtures: a machine with two habana_like devices in virtual time, user programs
that are torn down after each test, and a leak check against the baseline."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from accelcore import Process, VirtualClock
from accelcore.machine import Machine
from accelcore.testing.transports import ProcessFactory
from drivers.habana_like import HabanaLikeDriver
from drivers.habana_like.userlib import HlkClient


@pytest.fixture
def machine() -> Machine:
    m = Machine(VirtualClock())
    m.bus.populate([{"model": "habana_like", "count": 2}])
    m.add_driver(HabanaLikeDriver())
    return m


@pytest.fixture
def procs(machine: Machine) -> Iterator[Callable[..., Process]]:
    """Make user processes; at teardown all exit and every count is back to baseline."""
    baseline = machine.subsystem.accounting()
    made: list[Process] = []

    def make(**kwargs: object) -> Process:
        p = Process(machine.subsystem, **kwargs)  # type: ignore[arg-type]
        made.append(p)
        return p

    yield make
    for p in made:
        p.exit()
    assert machine.subsystem.oopses == []
    assert machine.subsystem.accounting() == baseline


@pytest.fixture
def client(procs: Callable[..., Process]) -> Callable[..., HlkClient]:
    """``client(path)``: a new process with ``path`` open, wrapped in HlkClient."""

    def make(path: str = "/dev/accel/accel0", **kwargs: object) -> HlkClient:
        p = procs(**kwargs)
        return HlkClient(p, p.open(path))

    return make


@pytest.fixture
def procs_both(
    machine: Machine, accel_process_factory: ProcessFactory
) -> Iterator[Callable[..., Process]]:
    """:func:`procs` once in process and once as sessions of a devfs server over
    the machine (``accel_process_factory``); the same baseline check at the end."""
    baseline = machine.subsystem.accounting()
    yield lambda **kwargs: accel_process_factory(machine, **kwargs)
    accel_process_factory.close()
    assert machine.subsystem.oopses == []
    assert machine.subsystem.accounting() == baseline


@pytest.fixture
def client_both(procs_both: Callable[..., Process]) -> Callable[..., HlkClient]:
    """:func:`client` through each transport."""

    def make(path: str = "/dev/accel/accel0", **kwargs: object) -> HlkClient:
        p = procs_both(**kwargs)
        return HlkClient(p, p.open(path))

    return make
