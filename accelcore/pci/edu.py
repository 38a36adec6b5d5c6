"""QEMU's ``edu`` teaching device, register for register (``hw/misc/edu.c``).

BAR0 is 1 MiB of MMIO. Registers below 0x80 take 4-byte accesses only; the
64-bit DMA registers from 0x80 take 4 or 8 bytes; anything else is refused (a
recorded MMIO fault, reads all-ones)::

    0x00 RO  identification 0x010000ed     0x24 RO  interrupt status
    0x04 RW  liveness: reads ~last write   0x60 WO  raise interrupt (OR into 0x24)
    0x08 RW  factorial: write n, read n!   0x64 WO  acknowledge (clear from 0x24)
    0x20 RW  status: 0x01 computing (RO),  0x80 RW  DMA source address
             0x80 raise IRQ 0x01 when done 0x88 RW  DMA destination address
                                           0x90 RW  DMA byte count
                                           0x98 RW  DMA command: 0x01 start,
                                                    0x02 EDU→RAM, 0x04 IRQ 0x100

The DMA engine moves data between host memory (through the function's DMA
space) and a 4 KiB device buffer at device address 0x40000. As in QEMU the
factorial takes device time and the DMA completes 100 ms after start; unlike
QEMU (which aborts the VM on a bad transfer), a bad transfer is recorded in
:attr:`EduDevice.guest_errors` and completes without moving data. Here the
device also has one MSI-X vector (table in BAR0 at 0x80000) instead of MSI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InvalidArgument
from .bar import BarSpec, MmioRegion
from .device import SimDevice
from .dma import DmaError
from .kinds import ResetKind

if TYPE_CHECKING:
    from .function import PciFunction

__all__ = ["EduDevice", "EduReg"]

_MASK32 = 0xFFFF_FFFF
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF


class EduReg:
    """Register offsets and bits of BAR0."""

    ID = 0x00
    LIVENESS = 0x04
    FACTORIAL = 0x08
    STATUS = 0x20
    IRQ_STATUS = 0x24
    IRQ_RAISE = 0x60
    IRQ_ACK = 0x64
    DMA_SRC = 0x80
    DMA_DST = 0x88
    DMA_COUNT = 0x90
    DMA_CMD = 0x98

    STATUS_COMPUTING = 0x01
    STATUS_IRQFACT = 0x80
    FACT_IRQ = 0x001
    DMA_IRQ = 0x100
    CMD_START = 0x01
    CMD_TO_RAM = 0x02
    CMD_IRQ = 0x04

    ID_VALUE = 0x010000ED
    BUFFER_ADDR = 0x40000
    BUFFER_SIZE = 4096


def _accepts(offset: int, size: int, _write: bool) -> bool:
    return size == 4 if offset < 0x80 else size in (4, 8)


def _factorial32(n: int) -> int:
    result = 1
    for k in range(2, n + 1):
        result = (result * k) & _MASK32
    return result


class EduDevice(SimDevice):
    """The edu device model.

    Args:
        dma_mask: Address bits the DMA engine drives (QEMU's ``dma_mask``, 28).
        fact_ns: Device time a factorial takes.
        dma_ns: Device time from DMA start to completion (before slowdown).
        msix: Offer one MSI-X vector; without it the device is INTx-only.

    Raises:
        InvalidArgument: an option is out of range.
    """

    model = "edu"
    vendor_id = 0x1234
    device_id = 0x11E8
    subsystem_vendor_id = 0x1AF4
    subsystem_id = 0x1100
    class_code = 0x00FF00
    revision = 0x10
    bars = (BarSpec(0, 1 << 20),)
    msix_bar = 0
    msix_table_offset = 0x80000
    msix_pba_offset = 0x81000

    def __init__(
        self,
        dma_mask: int = 28,
        fact_ns: int = 10_000,
        dma_ns: int = 100_000_000,
        msix: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= dma_mask <= 64:
            raise InvalidArgument(f"edu dma_mask {dma_mask} is outside 1..64 bits")
        for name, value in (("fact_ns", fact_ns), ("dma_ns", dma_ns)):
            if value < 0:
                raise InvalidArgument(f"edu {name} {value} is negative")
        self.dma_mask = (1 << dma_mask) - 1
        self.fact_ns = fact_ns
        self.dma_ns = dma_ns
        self.msix_vectors = 1 if msix else 0
        self.buffer = bytearray(EduReg.BUFFER_SIZE)
        self.guest_errors: list[str] = []
        self._power_on()

    def _power_on(self) -> None:
        self.liveness = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.dma_src = self.dma_dst = self.dma_count = self.dma_cmd = 0
        self.buffer[:] = bytes(EduReg.BUFFER_SIZE)

    # -- lifecycle --------------------------------------------------------------------
    def realize(self, fn: PciFunction) -> None:
        """Map the register window over BAR0 and power on."""
        self._power_on()
        fn.bar(0).add_region(
            MmioRegion(
                0,
                0x80000,
                self._read,
                self._write,
                name="edu",
                min_size=4,
                max_size=8,
                accepts=_accepts,
            )
        )

    def reset(self, kind: ResetKind) -> None:
        """Any reset returns every register and the buffer to power-on values."""
        self._power_on()

    # -- registers ----------------------------------------------------------------------
    def _read(self, offset: int, size: int) -> int:
        regs = {
            EduReg.ID: EduReg.ID_VALUE,
            EduReg.LIVENESS: self.liveness,
            EduReg.FACTORIAL: self.fact,
            EduReg.STATUS: self.status,
            EduReg.IRQ_STATUS: self.irq_status,
            EduReg.DMA_SRC: self.dma_src,
            EduReg.DMA_DST: self.dma_dst,
            EduReg.DMA_COUNT: self.dma_count,
            EduReg.DMA_CMD: self.dma_cmd,
        }
        return regs.get(offset, _MASK64)

    def _write(self, offset: int, size: int, value: int) -> None:
        handler = self._WRITES.get(offset)
        if handler is not None:
            handler(self, value)

    def _w_liveness(self, value: int) -> None:
        self.liveness = ~value & _MASK32

    def _w_factorial(self, value: int) -> None:
        if self.status & EduReg.STATUS_COMPUTING:
            return  # QEMU ignores a new operand while computing
        self.fact = value & _MASK32
        self.status |= EduReg.STATUS_COMPUTING
        self.schedule(self.fact_ns, self._factorial_done)

    def _factorial_done(self) -> None:
        self.fact = _factorial32(self.fact)
        self.status &= ~EduReg.STATUS_COMPUTING
        if self.status & EduReg.STATUS_IRQFACT:
            self._raise(EduReg.FACT_IRQ)

    def _w_status(self, value: int) -> None:
        self.status = (self.status & EduReg.STATUS_COMPUTING) | (value & EduReg.STATUS_IRQFACT)

    def _raise(self, value: int) -> None:
        self.irq_status |= value & _MASK32
        if self.irq_status:
            self.raise_irq(0)

    def _ack(self, value: int) -> None:
        self.irq_status &= ~value & _MASK32
        if not self.irq_status:
            self.lower_irq(0)

    def _dma_busy(self) -> bool:
        return bool(self.dma_cmd & EduReg.CMD_START)

    def _w_src(self, value: int) -> None:
        if not self._dma_busy():
            self.dma_src = value

    def _w_dst(self, value: int) -> None:
        if not self._dma_busy():
            self.dma_dst = value

    def _w_count(self, value: int) -> None:
        if not self._dma_busy():
            self.dma_count = value

    def _w_cmd(self, value: int) -> None:
        if self._dma_busy():
            return
        self.dma_cmd = value
        if value & EduReg.CMD_START:
            self.schedule(self.dma_delay(self.dma_ns), self._dma_done)

    _WRITES = {
        EduReg.LIVENESS: _w_liveness,
        EduReg.FACTORIAL: _w_factorial,
        EduReg.STATUS: _w_status,
        EduReg.IRQ_RAISE: _raise,
        EduReg.IRQ_ACK: _ack,
        EduReg.DMA_SRC: _w_src,
        EduReg.DMA_DST: _w_dst,
        EduReg.DMA_COUNT: _w_count,
        EduReg.DMA_CMD: _w_cmd,
    }

    # -- DMA engine -----------------------------------------------------------------------
    def _buffer_slice(self, addr: int, count: int) -> slice | None:
        start = addr - EduReg.BUFFER_ADDR
        if start < 0 or count > EduReg.BUFFER_SIZE or start + count > EduReg.BUFFER_SIZE:
            self.guest_errors.append(
                f"DMA range [{addr:#x}, {addr + count:#x}) outside the edu buffer"
            )
            return None
        return slice(start, start + count)

    def _dma_done(self) -> None:
        to_ram = bool(self.dma_cmd & EduReg.CMD_TO_RAM)
        ram, dev = (self.dma_dst, self.dma_src) if to_ram else (self.dma_src, self.dma_dst)
        count = self.dma_count
        window = self._buffer_slice(dev, count)
        if window is not None and ram & ~self.dma_mask:
            self.guest_errors.append(f"DMA address {ram:#x} exceeds the edu dma_mask")
        elif window is not None:
            try:
                if to_ram:
                    self.dma_write(ram, self.buffer[window])
                else:
                    self.buffer[window] = self.dma_read(ram, count)
            except DmaError as exc:
                self.guest_errors.append(str(exc.strerror))
        self.dma_cmd &= ~EduReg.CMD_START
        if self.dma_cmd & EduReg.CMD_IRQ:
            self._raise(EduReg.DMA_IRQ)
