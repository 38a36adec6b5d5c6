"""FLR and hot reset: driver callbacks, config defaults, restored host state."""

from __future__ import annotations

import pytest

from accelcore.errors import NotSupported
from accelcore.pci import PciBus, ResetKind, SimDevice
from accelcore.pci.caps import PCIE
from accelcore.pci.config import COMMAND, STATUS, CapId


@pytest.fixture
def bound(bus: PciBus, scratch, driver_cls):
    got: list[int] = []

    def setup(fn) -> None:
        fn.set_master()
        fn.alloc_irq_vectors(1, 4)
        fn.request_irq(0, got.append)

    drv = driver_cls(on_probe=setup)
    bus.register_driver(drv)
    scratch.got = got
    return scratch, drv


def test_flr_calls_prepare_then_done(bus: PciBus, bound) -> None:
    fn, drv = bound
    bus.reset(fn, ResetKind.FLR)
    assert drv.calls[-2:] == [("reset_prepare", "0000:00:03.0"), ("reset_done", "0000:00:03.0")]


def test_flr_restores_config_defaults(bus: PciBus, bound) -> None:
    fn, _ = bound
    fn.config.write(0x0C, 1, 0x10)  # cache line size
    fn.config.update_bits("status", STATUS.SIG_SYSTEM_ERROR, True)
    bus.reset(fn)
    assert fn.config.read(0x0C, 1) == 0
    assert not fn.config.read(0x06, 2) & STATUS.SIG_SYSTEM_ERROR


def test_flr_restores_host_programmed_state(bus: PciBus, bound) -> None:
    fn, _ = bound
    address = fn.bar(0).address
    bus.reset(fn)
    assert fn.bar(0).address == address
    assert fn.config.read(0x04, 2) & (COMMAND.MEMORY | COMMAND.MASTER) == (
        COMMAND.MEMORY | COMMAND.MASTER
    )
    fn.device_model.raise_irq(0)
    assert fn.got == [0]


def test_flr_resets_device_model(bus: PciBus, bound) -> None:
    fn, _ = bound
    fn.iomap(0).write32(0x10, 5)
    bus.reset(fn)
    assert fn.iomap(0).read32(0x10) == 0
    assert fn.device_model.resets == [ResetKind.FLR]


def test_reset_without_driver_leaves_device_disabled(bus: PciBus, scratch_cls) -> None:
    fn = bus.hot_add(scratch_cls())
    fn.config.write(0x04, 2, COMMAND.MEMORY)  # a tool poked it; no host state recorded
    bus.reset(fn)
    assert fn.config.read(0x04, 2) == 0


def test_reset_cancels_scheduled_work(bus: PciBus, scratch, clock) -> None:
    fired: list[int] = []
    scratch.device_model.schedule(10, lambda: fired.append(1))
    bus.reset(scratch)
    clock.advance(100)
    assert fired == []


def test_hot_reset_resets_every_function_of_the_slot(bus: PciBus, scratch_cls, driver_cls) -> None:
    f0 = bus.hot_add(scratch_cls(), "0000:00:05.0")
    f1 = bus.hot_add(scratch_cls(), "0000:00:05.1")
    other = bus.hot_add(scratch_cls(), "0000:00:06.0")
    drv = driver_cls()
    bus.register_driver(drv)
    bus.reset(f1, ResetKind.HOT)
    assert f0.device_model.resets == [ResetKind.HOT] == f1.device_model.resets
    assert other.device_model.resets == []
    assert [c for c, _ in drv.calls[-4:]] == [
        "reset_prepare",
        "reset_prepare",
        "reset_done",
        "reset_done",
    ]


def test_flr_via_pcie_devctl(bound) -> None:
    fn, drv = bound
    fn.iomap(0).write32(0x10, 5)
    devctl = fn.find_capability(CapId.PCIE) + 8
    fn.config.write(devctl, 2, fn.config.read(devctl, 2) | PCIE.DEVCTL_BCR_FLR)
    assert fn.device_model.resets == [ResetKind.FLR]
    assert not fn.config.read(devctl, 2) & PCIE.DEVCTL_BCR_FLR
    assert fn.config.read(0x04, 2) == 0  # raw FLR: nothing restores host state
    assert "reset_prepare" not in [c for c, _ in drv.calls]


def test_flr_unsupported_is_eopnotsupp(bus: PciBus) -> None:
    class NoFlr(SimDevice):
        flr = False

    fn = bus.hot_add(NoFlr())
    with pytest.raises(NotSupported, match="function-level reset"):
        bus.reset(fn, ResetKind.FLR)


def test_sysfs_reset_attribute_does_flr(bound) -> None:
    fn, drv = bound
    fn.sysfs.write("reset", "1")
    assert ("reset_done", "0000:00:03.0") in drv.calls
