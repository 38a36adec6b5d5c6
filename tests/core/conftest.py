from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from accelcore import Process, Subsystem
from accelcore.clock import VirtualClock
from accelcore.device import AccelDevice
from accelcore.machine import Machine
from accelcore.testing import VAccelDriver
from accelcore.testing.transports import ProcessFactory
from accelcore.testing.vaccel import VACCEL_UAPI


@dataclass
class Rig:
    sub: Subsystem
    clock: VirtualClock
    driver: VAccelDriver
    dev: AccelDevice
    dev1: AccelDevice
    #: Expected changes of accounting counts by the end of the test.
    expect: dict[str, int] = field(default_factory=dict)
    #: Makes the test's processes (default: in-process :class:`Process`).
    make: Callable[..., Process] | None = None

    def process(self, **kw: object) -> Process:
        if self.make is not None:
            return self.make(**kw)
        return Process(self.sub, **kw)  # type: ignore[arg-type]

    def create_bo(self, proc: Process, fd: int, size: int = 4096) -> tuple[int, int]:
        a = VACCEL_UAPI.new("struct vaccel_create_bo", size=size)
        proc.ioctl(fd, VACCEL_UAPI.DRM_IOCTL_VACCEL_CREATE_BO, a)
        return a.handle, a.mmap_offset


def _check_leaks(r: Rig, baseline: dict[str, int]) -> None:
    for task in list(r.sub.tasks.values()):
        r.sub.exit_task(task)
    r.clock.run_until_idle()
    after = r.sub.accounting()
    leaked = {
        k: (baseline[k], after[k]) for k in baseline if baseline[k] + r.expect.get(k, 0) != after[k]
    }
    assert not leaked, f"leaked (before, after): {leaked}"


@pytest.fixture
def rig_both(accel_process_factory: ProcessFactory) -> Iterator[Rig]:
    """:func:`rig` on a machine whose processes are made in process, then (a
    second run) as sessions of a devfs server over it: the same test both ways."""
    clock = VirtualClock()
    m = Machine(clock)
    drv = m.add_driver(VAccelDriver())
    dev = m.subsystem.create_device(drv)
    dev1 = m.subsystem.create_device(drv)
    r = Rig(m.subsystem, clock, drv, dev, dev1, make=lambda **kw: accel_process_factory(m, **kw))
    baseline = m.subsystem.accounting()
    yield r
    accel_process_factory.close()  # every process exits; the server stops
    _check_leaks(r, baseline)


@pytest.fixture
def rig() -> Iterator[Rig]:
    clock = VirtualClock()
    sub = Subsystem(clock)
    drv = VAccelDriver()
    sub.register_driver(drv)
    dev = sub.create_device(drv)
    dev1 = sub.create_device(drv)
    r = Rig(sub, clock, drv, dev, dev1)
    baseline = sub.accounting()
    yield r
    _check_leaks(r, baseline)
