"""The edu device end to end, driven by a small third-party-style driver.

``EduDriver`` uses only the public toolkit: it binds by id table, enables the
device, sets bus mastering and a 28-bit DMA mask, takes one MSI-X (or INTx)
vector, computes factorials through the interrupt, and moves data
RAM → edu → RAM with the DMA engine.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from accelcore.clock import NSEC_PER_MSEC, VirtualClock, WaitResult
from accelcore.errors import NoDevice, TimedOut
from accelcore.pci import (
    Bar,
    DmaDirection,
    DmaFaultReason,
    EduDevice,
    FaultKind,
    IrqMode,
    MmioFaultReason,
    PciAddress,
    PciBus,
    PciDeviceId,
    PciFunction,
    ResetKind,
)
from accelcore.pci.edu import EduReg


class EduCard:
    """Per-device state of the driver."""

    def __init__(self, fn: PciFunction, regs: Bar) -> None:
        self.fn = fn
        self.regs = regs
        self.irqs: list[int] = []

    def interrupt(self, vector: int) -> None:
        status = self.regs.read32(EduReg.IRQ_STATUS)
        self.regs.write32(EduReg.IRQ_ACK, status)
        self.irqs.append(status)

    def _wait_irq(self, bit: int, since: int, timeout: int) -> None:
        clock = self.fn.bus.clock
        result = clock.wait_until(
            lambda: any(s & bit for s in self.irqs[since:]), clock.now() + timeout
        )
        if result is not WaitResult.DONE:
            raise TimedOut(f"edu {self.fn.address}: no interrupt {bit:#x}")

    def factorial(self, n: int, timeout: int = NSEC_PER_MSEC) -> int:
        since = len(self.irqs)
        self.regs.write32(EduReg.STATUS, EduReg.STATUS_IRQFACT)
        self.regs.write32(EduReg.FACTORIAL, n)
        self._wait_irq(EduReg.FACT_IRQ, since, timeout)
        return self.regs.read32(EduReg.FACTORIAL)

    def dma(self, src: int, dst: int, count: int, to_ram: bool, timeout: int) -> None:
        since = len(self.irqs)
        self.regs.write64(EduReg.DMA_SRC, src)
        self.regs.write64(EduReg.DMA_DST, dst)
        self.regs.write64(EduReg.DMA_COUNT, count)
        cmd = EduReg.CMD_START | EduReg.CMD_IRQ | (EduReg.CMD_TO_RAM if to_ram else 0)
        self.regs.write64(EduReg.DMA_CMD, cmd)
        self._wait_irq(EduReg.DMA_IRQ, since, timeout)

    def roundtrip(self, data: bytes, timeout: int = 1000 * NSEC_PER_MSEC) -> bytes:
        out = bytearray(len(data))
        src = self.fn.dma_map(data, direction=DmaDirection.TO_DEVICE)
        dst = self.fn.dma_map(out, direction=DmaDirection.FROM_DEVICE)
        try:
            self.dma(src, EduReg.BUFFER_ADDR, len(data), to_ram=False, timeout=timeout)
            self.dma(EduReg.BUFFER_ADDR, dst, len(data), to_ram=True, timeout=timeout)
        finally:
            self.fn.dma_unmap(src)
            self.fn.dma_unmap(dst)
        return bytes(out)


class EduDriver:
    name = "edu"
    id_table = (PciDeviceId(0x1234, 0x11E8),)

    def __init__(self) -> None:
        self.cards: dict[PciAddress, EduCard] = {}
        self.removed: list[PciAddress] = []

    def probe(self, fn: PciFunction) -> None:
        fn.enable_device()
        regs = fn.iomap(0)
        if regs.read32(EduReg.ID) & 0xFF != 0xED:
            raise NoDevice(f"{fn.address}: not an edu device")
        fn.set_master()
        fn.set_dma_mask(28)
        fn.alloc_irq_vectors(1, 1)
        card = EduCard(fn, regs)
        fn.request_irq(0, card.interrupt)
        self.cards[fn.address] = card

    def remove(self, fn: PciFunction) -> None:
        self.cards.pop(fn.address)
        fn.free_irq(0)
        fn.free_irq_vectors()
        fn.clear_master()
        fn.disable_device()
        self.removed.append(fn.address)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def bus(clock: VirtualClock) -> Iterator[PciBus]:
    bus = PciBus(clock)
    bus.register_driver(EduDriver())
    yield bus
    bus.close()


@pytest.fixture
def driver(bus: PciBus) -> EduDriver:
    drv = bus.drivers()[0]
    assert isinstance(drv, EduDriver)
    return drv


@pytest.fixture
def card(bus: PciBus, driver: EduDriver) -> EduCard:
    fn = bus.hot_add("edu", "0000:00:04.0")
    return driver.cards[fn.address]


def test_driver_binds_by_id_table(card: EduCard) -> None:
    assert card.fn.driver is not None and card.fn.driver.name == "edu"
    assert card.fn.irq_mode is IrqMode.MSIX
    assert card.fn.revision == 0x10


def test_identification_register(card: EduCard) -> None:
    assert card.regs.read32(EduReg.ID) == 0x010000ED


def test_liveness_reads_bitwise_not(card: EduCard) -> None:
    card.regs.write32(EduReg.LIVENESS, 0x12345678)
    assert card.regs.read32(EduReg.LIVENESS) == 0xEDCBA987


def test_factorial_through_msix_interrupt(card: EduCard, clock: VirtualClock) -> None:
    assert card.factorial(5) == 120
    assert card.irqs == [EduReg.FACT_IRQ]
    assert clock.now() == 10_000  # the device's fact_ns
    assert card.regs.read32(EduReg.IRQ_STATUS) == 0  # the handler acknowledged it


def test_factorial_wraps_at_32_bits(card: EduCard) -> None:
    assert card.factorial(13) == 6227020800 & 0xFFFF_FFFF


def test_status_shows_computing_until_done(card: EduCard, clock: VirtualClock) -> None:
    card.regs.write32(EduReg.FACTORIAL, 4)
    assert card.regs.read32(EduReg.STATUS) & EduReg.STATUS_COMPUTING
    clock.advance(10_000)
    assert not card.regs.read32(EduReg.STATUS) & EduReg.STATUS_COMPUTING
    assert card.regs.read32(EduReg.FACTORIAL) == 24


def test_factorial_operand_ignored_while_computing(card: EduCard, clock: VirtualClock) -> None:
    card.regs.write32(EduReg.FACTORIAL, 3)
    card.regs.write32(EduReg.FACTORIAL, 10)
    clock.advance(10_000)
    assert card.regs.read32(EduReg.FACTORIAL) == 6


def test_factorial_through_intx(bus: PciBus, driver: EduDriver) -> None:
    fn = bus.hot_add("edu", options={"msix": False})
    card = driver.cards[fn.address]
    assert fn.irq_mode is IrqMode.INTX
    assert card.factorial(6) == 720
    assert not fn.irq.line  # acknowledged: the level dropped


def test_raise_register_interrupts_driver(card: EduCard) -> None:
    card.regs.write32(EduReg.IRQ_RAISE, 0x40)
    assert card.irqs == [0x40]


def test_dma_round_trip(card: EduCard, clock: VirtualClock) -> None:
    data = bytes(range(256)) * 4
    assert card.roundtrip(data) == data
    assert card.fn.device_model.buffer[: len(data)] == data
    assert clock.now() == 200 * NSEC_PER_MSEC  # two transfers of 100 ms
    assert card.fn.dma_faults == []


def test_slow_dma_stretches_transfers(bus: PciBus, card: EduCard, clock: VirtualClock) -> None:
    bus.inject_fault(card.fn, FaultKind.SLOW_DMA, factor=3)
    card.roundtrip(b"slow", timeout=1000 * NSEC_PER_MSEC)
    assert clock.now() == 600 * NSEC_PER_MSEC


def test_hang_times_out_and_reset_recovers(bus: PciBus, card: EduCard) -> None:
    bus.inject_fault(card.fn, FaultKind.HANG)
    with pytest.raises(TimedOut):
        card.factorial(3)
    bus.reset(card.fn, ResetKind.FLR)
    assert card.factorial(3) == 6


def test_reset_returns_registers_to_power_on(bus: PciBus, card: EduCard) -> None:
    card.regs.write32(EduReg.LIVENESS, 0)
    bus.reset(card.fn, ResetKind.FLR)
    assert card.regs.read32(EduReg.LIVENESS) == 0


def test_dma_registers_read_only_while_running(card: EduCard) -> None:
    card.regs.write64(EduReg.DMA_CMD, EduReg.CMD_START)
    card.regs.write64(EduReg.DMA_SRC, 0x1234)
    assert card.regs.read64(EduReg.DMA_SRC) == 0


def test_dma_without_bus_master_faults(card: EduCard) -> None:
    card.fn.clear_master()
    out = bytearray(16)
    iova = card.fn.dma_map(out)
    card.dma(EduReg.BUFFER_ADDR, iova, 16, to_ram=True, timeout=1000 * NSEC_PER_MSEC)
    assert card.fn.dma_faults[-1].reason is DmaFaultReason.NO_BUS_MASTER
    assert "bus mastering disabled" in card.fn.device_model.guest_errors[-1]


def test_dma_outside_device_buffer_is_a_guest_error(card: EduCard) -> None:
    iova = card.fn.dma_map(bytearray(16))
    card.dma(iova, EduReg.BUFFER_ADDR + 4090, 16, to_ram=False, timeout=1000 * NSEC_PER_MSEC)
    assert "outside the edu buffer" in card.fn.device_model.guest_errors[-1]


def test_dma_address_above_device_mask_is_a_guest_error(card: EduCard) -> None:
    card.dma(1 << 30, EduReg.BUFFER_ADDR, 16, to_ram=False, timeout=1000 * NSEC_PER_MSEC)
    assert "dma_mask" in card.fn.device_model.guest_errors[-1]
    assert card.fn.dma_faults == []


def test_eight_byte_access_below_0x80_is_refused(card: EduCard) -> None:
    assert card.regs.read64(EduReg.ID) == 0xFFFF_FFFF_FFFF_FFFF
    assert card.fn.mmio_faults[-1].reason is MmioFaultReason.REJECTED


def test_two_byte_access_is_refused(card: EduCard) -> None:
    card.regs.write16(EduReg.LIVENESS, 1)
    assert card.fn.mmio_faults[-1].reason is MmioFaultReason.SIZE
    assert card.regs.read32(EduReg.LIVENESS) == 0


def test_unknown_register_reads_all_ones(card: EduCard) -> None:
    assert card.regs.read32(0x40) == 0xFFFF_FFFF
    assert card.fn.mmio_faults == []


def test_surprise_removal_runs_driver_remove(bus: PciBus, driver: EduDriver, card: EduCard) -> None:
    bus.inject_fault(card.fn, FaultKind.SURPRISE_REMOVAL)
    assert driver.removed == [PciAddress.parse("0000:00:04.0")]
    assert card.regs.read32(EduReg.ID) == 0xFFFF_FFFF


def test_dma_mask_option_reflected(bus: PciBus) -> None:
    fn = bus.hot_add(EduDevice(dma_mask=40))
    assert fn.device_model.dma_mask == (1 << 40) - 1
