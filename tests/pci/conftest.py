"""Fixtures for the simulated PCI tests: a bus in virtual time and a recording driver."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from accelcore.clock import VirtualClock
from accelcore.errors import AccelError
from accelcore.pci import (
    BarKind,
    BarSpec,
    MmioRegion,
    PciBus,
    PciDeviceId,
    PciFunction,
    SimDevice,
)
from accelcore.sysfs import SysfsTree, Uevent


class ScratchDevice(SimDevice):
    """A small test device: BAR0 registers (4-byte only), BAR2 RAM, 4 MSI-X vectors."""

    model = "scratch"
    vendor_id = 0x1DE5
    device_id = 0x0001
    subsystem_vendor_id = 0x1DE5
    subsystem_id = 0x0100
    class_code = 0x120000
    revision = 0x02
    bars = (BarSpec(0, 0x1000), BarSpec(2, 0x10000, BarKind.MEM64, prefetchable=True))
    msix_vectors = 4

    def __init__(self) -> None:
        super().__init__()
        self.regs: dict[int, int] = {}
        self.resets: list[object] = []

    def realize(self, fn: PciFunction) -> None:
        fn.bar(0).add_region(
            MmioRegion(0, 0x100, self._read, self._write, name="regs", min_size=4, max_size=4)
        )

    def _read(self, offset: int, size: int) -> int:
        return self.regs.get(offset, 0)

    def _write(self, offset: int, size: int, value: int) -> None:
        self.regs[offset] = value

    def reset(self, kind: object) -> None:
        self.regs.clear()
        self.resets.append(kind)


class RecordingDriver:
    """A driver that records every callback (``calls``) and can refuse probe."""

    def __init__(
        self,
        name: str = "rec",
        id_table: Sequence[PciDeviceId] = (PciDeviceId(0x1DE5, 0x0001),),
        refuse: AccelError | None = None,
        on_probe: Callable[[PciFunction], None] | None = None,
        on_remove: Callable[[PciFunction], None] | None = None,
    ) -> None:
        self.name = name
        self.id_table = tuple(id_table)
        self.refuse = refuse
        self.on_probe = on_probe
        self.on_remove = on_remove
        self.calls: list[tuple[str, str]] = []
        self.errors: list[object] = []

    def probe(self, fn: PciFunction) -> None:
        self.calls.append(("probe", str(fn.address)))
        if self.on_probe is not None:
            self.on_probe(fn)
        if self.refuse is not None:
            raise self.refuse

    def remove(self, fn: PciFunction) -> None:
        self.calls.append(("remove", str(fn.address)))
        if self.on_remove is not None:
            self.on_remove(fn)

    def reset_prepare(self, fn: PciFunction) -> None:
        self.calls.append(("reset_prepare", str(fn.address)))

    def reset_done(self, fn: PciFunction) -> None:
        self.calls.append(("reset_done", str(fn.address)))

    def error_detected(self, fn: PciFunction, kind: object) -> None:
        self.calls.append(("error_detected", str(fn.address)))
        self.errors.append(kind)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def tree() -> SysfsTree:
    return SysfsTree()


@pytest.fixture
def uevents(tree: SysfsTree) -> list[Uevent]:
    events: list[Uevent] = []
    tree.subscribe(events.append)
    return events


@pytest.fixture
def bus(clock: VirtualClock, tree: SysfsTree) -> Iterator[PciBus]:
    bus = PciBus(clock, tree)
    yield bus
    bus.close()


@pytest.fixture
def scratch(bus: PciBus) -> PciFunction:
    """A scratch device at 0000:00:03.0, enabled, unbound."""
    fn = bus.hot_add(ScratchDevice(), "0000:00:03.0")
    fn.enable_device()
    return fn


@pytest.fixture
def scratch_cls() -> type[ScratchDevice]:
    return ScratchDevice


@pytest.fixture
def driver_cls() -> type[RecordingDriver]:
    return RecordingDriver
