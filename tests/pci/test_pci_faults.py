"""Fault injection: hang, AER-like errors, surprise removal, slow DMA."""

from __future__ import annotations

import pytest

from accelcore.errors import InvalidArgument
from accelcore.pci import ErrorSeverity, FaultKind, PciBus, ResetKind
from accelcore.pci.caps import AER, PCIE
from accelcore.pci.config import STATUS, CapId


def test_hang_stops_scheduled_completions(bus: PciBus, scratch, clock) -> None:
    done: list[int] = []
    bus.inject_fault(scratch, FaultKind.HANG)
    scratch.device_model.schedule(10, lambda: done.append(1))
    clock.advance(100)
    assert scratch.device_model.hung and done == []


def test_hang_cleared_by_reset(bus: PciBus, scratch) -> None:
    bus.inject_fault(scratch, FaultKind.HANG)
    bus.reset(scratch, ResetKind.FLR)
    assert not scratch.device_model.hung


def test_hang_can_be_lifted(bus: PciBus, scratch) -> None:
    bus.inject_fault(scratch, FaultKind.HANG)
    bus.inject_fault(scratch, FaultKind.HANG, hung=False)
    assert not scratch.device_model.hung


def test_error_calls_error_detected(bus: PciBus, scratch, driver_cls) -> None:
    drv = driver_cls()
    bus.register_driver(drv)
    bus.inject_fault(scratch, FaultKind.ERROR, severity=ErrorSeverity.FATAL)
    assert drv.errors == [ErrorSeverity.FATAL]


def test_error_sets_status_bits(bus: PciBus, scratch) -> None:
    bus.inject_fault(scratch, FaultKind.ERROR)
    devsta = scratch.find_capability(CapId.PCIE) + 0x0A
    assert scratch.config.read(devsta, 2) & PCIE.DEVSTA_NFED
    assert scratch.config.read(0x104, 4) & AER.UNCOR_INTERNAL  # AER uncorrectable status
    assert scratch.config.read(0x06, 2) & STATUS.SIG_SYSTEM_ERROR


def test_correctable_error_is_only_logged(bus: PciBus, scratch, driver_cls) -> None:
    drv = driver_cls()
    bus.register_driver(drv)
    bus.inject_fault(scratch, FaultKind.ERROR, severity=ErrorSeverity.CORRECTABLE)
    assert drv.errors == []
    assert scratch.config.read(0x110, 4) & AER.COR_INTERNAL


def test_error_status_cleared_by_driver_w1c(bus: PciBus, scratch) -> None:
    bus.inject_fault(scratch, FaultKind.ERROR)
    scratch.config.write(0x104, 4, AER.UNCOR_INTERNAL)
    assert scratch.config.read(0x104, 4) == 0


def test_error_without_driver_is_harmless(bus: PciBus, scratch) -> None:
    bus.inject_fault(scratch, FaultKind.ERROR)
    assert bus.injected[-1].kind is FaultKind.ERROR


def test_surprise_removal_fault(bus: PciBus, scratch, tree, driver_cls) -> None:
    drv = driver_cls()
    bus.register_driver(drv)
    node = scratch.sysfs
    bus.inject_fault(scratch, FaultKind.SURPRISE_REMOVAL)
    assert not scratch.present
    assert drv.calls[-1] == ("remove", "0000:00:03.0")
    assert node not in tree
    assert scratch.iomap(0).read32(0) == 0xFFFF_FFFF


def test_slow_dma_sets_factor(bus: PciBus, scratch) -> None:
    bus.inject_fault(scratch, FaultKind.SLOW_DMA, factor=4)
    assert scratch.device_model.dma_delay(1000) == 4000


def test_unknown_fault_parameter_rejected(bus: PciBus, scratch) -> None:
    with pytest.raises(InvalidArgument, match="'factor' for fault hang"):
        bus.inject_fault(scratch, FaultKind.HANG, factor=2)
    assert bus.injected == []


def test_bad_slow_dma_factor_rejected(bus: PciBus, scratch) -> None:
    with pytest.raises(InvalidArgument, match="factor=0"):
        bus.inject_fault(scratch, FaultKind.SLOW_DMA, factor=0)


def test_bad_error_severity_rejected(bus: PciBus, scratch) -> None:
    with pytest.raises(InvalidArgument, match="severity='fatal'"):
        bus.inject_fault(scratch, FaultKind.ERROR, severity="fatal")


def test_injected_faults_are_recorded(bus: PciBus, scratch, clock) -> None:
    clock.advance(50)
    bus.inject_fault(scratch, FaultKind.SLOW_DMA, factor=2.5)
    (record,) = bus.injected
    assert (record.time, str(record.address), record.params) == (
        50,
        "0000:00:03.0",
        {"factor": 2.5},
    )
