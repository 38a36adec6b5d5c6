from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from accelcore import Process, Subsystem
from accelcore.clock import VirtualClock
from accelcore.device import AccelDevice
from accelcore.testing import VAccelDriver
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

    def process(self, **kw: object) -> Process:
        return Process(self.sub, **kw)  # type: ignore[arg-type]

    def create_bo(self, proc: Process, fd: int, size: int = 4096) -> tuple[int, int]:
        a = VACCEL_UAPI.new("struct vaccel_create_bo", size=size)
        proc.ioctl(fd, VACCEL_UAPI.DRM_IOCTL_VACCEL_CREATE_BO, a)
        return a.handle, a.mmap_offset


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
    for task in list(sub.tasks.values()):
        sub.exit_task(task)
    clock.run_until_idle()
    after = sub.accounting()
    leaked = {
        k: (baseline[k], after[k]) for k in baseline if baseline[k] + r.expect.get(k, 0) != after[k]
    }
    assert not leaked, f"leaked (before, after): {leaked}"
