"""A PCI function: config space, BARs, interrupts and DMA, with a Linux-shaped driver API.

The bus creates one :class:`PciFunction` per enumerated function and realizes its
:class:`~accelcore.pci.device.SimDevice` on it. Drivers use the ``pci_*``-like
methods (``enable_device``, ``set_master``, ``iomap``, ``alloc_irq_vectors``,
``request_irq``, ``dma_map``…); device models use :attr:`irq`, :attr:`dma` and the
:class:`~accelcore.pci.bar.Bar` objects.

State the *host* programmed (decode and bus-master enables, BAR addresses, MSI-X
enable and the table entries of requested vectors) is remembered here, so that
after a reset the bus can restore it as ``pci_restore_state`` does; everything
else in config space returns to its power-on default.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..errors import Busy, InvalidArgument, NoDevice, NoEntry, NoSpace
from ..memory import page_align
from ..sysfs import SysfsNode
from .address import PciAddress
from .bar import Bar, BarKind, BarSpec, MmioFault, bar_fields, check_bar_layout
from .caps import MSIX, PCIE, aer_capability, msix_capability, pcie_capability, pm_capability
from .config import COMMAND, ConfigSpace, ExtCapId
from .device import SimDevice
from .dma import DmaBuffer, DmaDirection, DmaFault, DmaSpace
from .ids import DeviceIdentity
from .irq import MSI_ADDRESS, InterruptController, IrqHandler, IrqMode, IrqType, pba_size
from .kinds import ResetKind

if TYPE_CHECKING:
    from .bus import PciBus
    from .driver import PciDriver

__all__ = ["PciFunction"]


#: What each identity attribute of a model may hold (pin: INTA..INTD or none).
_IDENTITY_LIMITS = (
    ("vendor_id", 0xFFFF),
    ("device_id", 0xFFFF),
    ("subsystem_vendor_id", 0xFFFF),
    ("subsystem_id", 0xFFFF),
    ("class_code", 0xFF_FFFF),
    ("revision", 0xFF),
    ("interrupt_pin", 4),
)


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class PciFunction:
    """One PCI function on a :class:`~accelcore.pci.bus.PciBus`.

    Args:
        bus: The bus it sits on.
        address: Its address.
        device: The device model behind it.
        irq_number: The legacy interrupt number the platform routes INTx to.

    Raises:
        InvalidArgument: the model's layout is impossible (overlapping BARs, an
            MSI-X table outside its BAR…).
    """

    def __init__(
        self, bus: PciBus, address: PciAddress, device: SimDevice, irq_number: int
    ) -> None:
        self._bus = bus
        self._address = address
        self._device = device
        self._present = True
        self._irq_number = irq_number
        self.config = ConfigSpace(extended=device.pcie)
        #: Refused MMIO accesses, oldest first.
        self.mmio_faults: list[MmioFault] = []
        self.driver: PciDriver | None = None
        self.driver_override: str | None = None
        self.sysfs: SysfsNode | None = None
        # Host-programmed state, restored after a reset.
        self._enabled = False
        self._master = False
        self._bar_addresses: dict[int, int] = {}
        self._irq_vectors = 0
        self._irq_alloc_mode = IrqMode.NONE
        self._set_identity(device)
        self._bars: dict[int, Bar] = {}
        try:
            self._make_bars(device)
            self._add_capabilities(device)
            self.irq = InterruptController(self.config, device.msix_vectors, device.interrupt_pin)
            if device.msix_vectors:
                bar = self._bars[self._msix_bar]
                bar.add_region(self.irq.table_region(self._msix_table))
                bar.add_region(self.irq.pba_region(self._msix_pba))
        except BaseException:
            for made in self._bars.values():
                made.close()  # no memfd outlives a device that failed to appear
            raise
        self.dma = DmaSpace(self._master_enabled, lambda: self._present, bus.clock.now)

    # -- construction ---------------------------------------------------------------
    def _set_identity(self, d: SimDevice) -> None:
        for name, limit in _IDENTITY_LIMITS:
            value = getattr(d, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
                raise InvalidArgument(
                    f"device model {d.model!r} {name} {value!r} exceeds {limit:#x}"
                )
        cs = self.config
        for name, value in (
            ("vendor_id", d.vendor_id),
            ("device_id", d.device_id),
            ("revision", d.revision),
            ("prog_if", d.class_code),
            ("subclass", d.class_code >> 8),
            ("base_class", d.class_code >> 16),
            ("subsystem_vendor_id", d.subsystem_vendor_id),
            ("subsystem_id", d.subsystem_id),
            ("interrupt_pin", d.interrupt_pin),
            ("interrupt_line", self._irq_number if d.interrupt_pin else 0),
        ):
            cs.set(name, value, default=True)

    def _make_bars(self, d: SimDevice) -> None:
        specs = list(d.bars)
        self._msix_bar, self._msix_table, self._msix_pba = -1, 0, 0
        if d.msix_vectors:
            if not 1 <= d.msix_vectors <= 2048:
                raise InvalidArgument(f"MSI-X table size {d.msix_vectors} is outside 1..2048")
            table_bytes = d.msix_vectors * MSIX.ENTRY_SIZE
            if d.msix_bar is None:
                used = {slot for s in specs for slot in s.slots}
                free = next((i for i in range(6) if i not in used), None)
                if free is None:
                    raise InvalidArgument(f"no free BAR for the MSI-X table of {d.model!r}")
                pba = page_align(table_bytes)
                specs.append(BarSpec(free, _next_pow2(pba + pba_size(d.msix_vectors))))
                self._msix_bar, self._msix_table, self._msix_pba = free, 0, pba
            else:
                self._msix_bar = d.msix_bar
                self._msix_table, self._msix_pba = d.msix_table_offset, d.msix_pba_offset
                if d.msix_table_offset % 8 or d.msix_pba_offset % 8:
                    raise InvalidArgument(f"MSI-X table/PBA offsets of {d.model!r} not 8-aligned")
        layout = check_bar_layout(specs)
        if d.msix_vectors and (
            self._msix_bar not in layout or not layout[self._msix_bar].kind.is_memory
        ):
            raise InvalidArgument(f"MSI-X BAR{self._msix_bar} of {d.model!r} is no memory BAR")
        for index, spec in sorted(layout.items()):
            for field in bar_fields(spec):
                self.config.define(field)
            self._bars[index] = Bar(spec, self, f"pci-{self._address}-bar{index}")

    def _add_capabilities(self, d: SimDevice) -> None:
        cs = self.config
        pm = pm_capability()
        cs.add_capability(0x01, pm.size, pm.fields, "pm")
        if d.pcie:
            pcie = pcie_capability(flr=d.flr)
            cs.add_capability(0x10, pcie.size, pcie.fields, "pcie")
            cs.on_write(cs.field("pcie.devctl").offset, 2, lambda _o, _s: self._devctl_written())
        if d.msix_vectors:
            msix = msix_capability(d.msix_vectors, self._msix_bar, self._msix_table, self._msix_pba)
            cs.add_capability(0x11, msix.size, msix.fields, "msix")
        if d.pcie and d.aer:
            aer = aer_capability()
            cs.add_ext_capability(ExtCapId.AER, 2, aer.size, aer.fields, "aer")

    # -- identity -------------------------------------------------------------------
    @property
    def bus(self) -> PciBus:
        """The bus it sits on (``fn.bus.clock`` is device time)."""
        return self._bus

    @property
    def address(self) -> PciAddress:
        """Its address (``0000:00:04.0``)."""
        return self._address

    @property
    def device_model(self) -> SimDevice:
        """The simulated hardware behind it."""
        return self._device

    @property
    def present(self) -> bool:
        """False once the function has been removed (orderly or surprise)."""
        return self._present

    @property
    def identity(self) -> DeviceIdentity:
        """The ids id tables are matched against."""
        return self._device.identity()

    @property
    def vendor(self) -> int:
        """Vendor id."""
        return self._device.vendor_id

    @property
    def device(self) -> int:
        """Device id."""
        return self._device.device_id

    @property
    def subsystem_vendor(self) -> int:
        """Subsystem vendor id."""
        return self._device.subsystem_vendor_id

    @property
    def subsystem_device(self) -> int:
        """Subsystem device id."""
        return self._device.subsystem_id

    @property
    def class_code(self) -> int:
        """24-bit class code."""
        return self._device.class_code

    @property
    def revision(self) -> int:
        """Revision id."""
        return self._device.revision

    @property
    def irq_number(self) -> int:
        """The legacy (INTx) interrupt number, 0 without a pin (sysfs ``irq``)."""
        return self._irq_number if self._device.interrupt_pin else 0

    @property
    def bars(self) -> Mapping[int, Bar]:
        """Implemented BARs by index."""
        return dict(self._bars)

    @property
    def dma_faults(self) -> list[DmaFault]:
        """Device DMA accesses the address space refused."""
        return self.dma.faults

    # -- what Bar needs --------------------------------------------------------------
    def decodes(self, kind: BarKind) -> bool:
        """Whether the command register enables decoding for ``kind``."""
        bit = COMMAND.MEMORY if kind.is_memory else COMMAND.IO
        return bool(self.config.get("command") & bit)

    def bar_address(self, index: int) -> int:
        """The bus address programmed into BAR ``index``."""
        spec = self._bars[index].spec
        low = self.config.get(f"bar{index}")
        if spec.kind is BarKind.IO:
            return low & ~0x3
        high = self.config.get(f"bar{index + 1}") if spec.kind is BarKind.MEM64 else 0
        return (high << 32) | (low & ~0xF)

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """The engine lock (``bus.clock.lock``)."""
        return self._bus.clock.lock

    def record_mmio_fault(self, fault: MmioFault) -> None:
        """Append a faulted MMIO access to :attr:`mmio_faults`."""
        self.mmio_faults.append(fault)

    def now(self) -> int:
        """Device time in nanoseconds."""
        return self._bus.clock.now()

    def _master_enabled(self) -> bool:
        return bool(self.config.get("command") & COMMAND.MASTER)

    # -- driver API: enable, master, config ---------------------------------------------
    def _require_present(self) -> None:
        if not self._present:
            raise NoDevice(f"PCI function {self._address} has been removed")

    @property
    def is_enabled(self) -> bool:
        """Whether the driver enabled the device (``pci_is_enabled``)."""
        return self._enabled

    def enable_device(self) -> None:
        """Turn on decoding of the BAR kinds it has (``pci_enable_device``).

        Raises:
            NoDevice: the function was removed.
        """
        with self._bus.clock.lock:
            self._require_present()
            self._enabled = True
            self._write_command()

    def disable_device(self) -> None:
        """Stop bus mastering and mark the device disabled (``pci_disable_device``).

        Safe after removal (a ``remove`` callback calls it on a vanished card).
        """
        with self._bus.clock.lock:
            self._enabled = self._master = False
            if self._present:
                self._write_command()

    def set_master(self) -> None:
        """Allow the device to DMA (``pci_set_master``)."""
        with self._bus.clock.lock:
            self._require_present()
            self._master = True
            self._write_command()

    def clear_master(self) -> None:
        """Forbid DMA (``pci_clear_master``); safe after removal."""
        with self._bus.clock.lock:
            self._master = False
            if self._present:
                self._write_command()

    def _write_command(self) -> None:
        cmd = self.config.get("command") & ~(COMMAND.IO | COMMAND.MEMORY | COMMAND.MASTER)
        if self._enabled:
            kinds = {bar.kind.is_memory for bar in self._bars.values()}
            cmd |= (COMMAND.MEMORY if True in kinds else 0) | (COMMAND.IO if False in kinds else 0)
        if self._master:
            cmd |= COMMAND.MASTER
        self.config.write(0x04, 2, cmd)

    def set_dma_mask(self, bits: int) -> None:
        """Set the DMA mask (``dma_set_mask``).

        Raises:
            NoDevice: the function was removed.
            InvalidArgument: ``bits`` is outside 12..64.
        """
        with self._bus.clock.lock:
            self._require_present()
            self.dma.set_mask(bits)

    def config_read(self, offset: int, size: int) -> int:
        """``pci_read_config_*``: all-ones once the function is gone.

        Raises:
            InvalidArgument: bad size, alignment or offset.
        """
        with self._bus.clock.lock:
            value = self.config.read(offset, size)
            return value if self._present else (1 << (8 * size)) - 1

    def config_write(self, offset: int, size: int, value: int) -> None:
        """``pci_write_config_*``: dropped once the function is gone.

        Raises:
            InvalidArgument: bad size, alignment or offset.
        """
        with self._bus.clock.lock:
            if self._present:
                self.config.write(offset, size, value)
            else:
                self.config.read(offset, size)  # still validate the access

    def find_capability(self, cap_id: int) -> int | None:
        """Offset of capability ``cap_id`` in config space, or ``None``."""
        return self.config.find_capability(cap_id)

    # -- driver API: BARs -----------------------------------------------------------------
    def bar(self, index: int) -> Bar:
        """BAR ``index``, to read and write registers (``pci_iomap``).

        Raises:
            InvalidArgument: the function implements no such BAR.
        """
        bar = self._bars.get(index)
        if bar is None:
            raise InvalidArgument(f"BAR{index} is not implemented by {self._address}")
        return bar

    iomap = bar

    # -- driver API: interrupts -------------------------------------------------------------
    @property
    def irq_mode(self) -> IrqMode:
        """The mechanism allocated (NONE until ``alloc_irq_vectors``)."""
        return self._irq_alloc_mode

    @property
    def irq_vectors(self) -> int:
        """How many vectors are allocated."""
        return self._irq_vectors

    def alloc_irq_vectors(self, min_vecs: int, max_vecs: int, types: IrqType = IrqType.ALL) -> int:
        """Allocate interrupt vectors, MSI-X first, else INTx (``pci_alloc_irq_vectors``).

        Args:
            min_vecs: Fewest vectors acceptable.
            max_vecs: Most vectors wanted.
            types: Which mechanisms may be used.

        Returns:
            The number of vectors allocated (``min_vecs`` .. ``max_vecs``).

        Raises:
            InvalidArgument: ``min_vecs`` < 1 or > ``max_vecs``.
            Busy: vectors are already allocated.
            NoSpace: the function cannot provide ``min_vecs`` vectors.
            NoDevice: the function was removed.
        """
        with self._bus.clock.lock:
            self._require_present()
            if not 1 <= min_vecs <= max_vecs:
                raise InvalidArgument(f"IRQ vector range {min_vecs}..{max_vecs} is invalid")
            if self._irq_vectors:
                raise Busy(f"{self._irq_vectors} IRQ vectors already allocated on {self._address}")
            d = self._device
            if types & IrqType.MSIX and d.msix_vectors >= min_vecs:
                self._irq_vectors = min(max_vecs, d.msix_vectors)
                self._irq_alloc_mode = IrqMode.MSIX
                self._write_msix_control(enable=True)
            elif types & IrqType.INTX and d.interrupt_pin and min_vecs == 1:
                self._irq_vectors = 1
                self._irq_alloc_mode = IrqMode.INTX
                self._write_msix_control(enable=False)
                cmd = self.config.get("command") & ~COMMAND.INTX_DISABLE
                self.config.write(0x04, 2, cmd)
            else:
                raise NoSpace(f"{self._address} cannot provide {min_vecs} IRQ vectors")
            return self._irq_vectors

    def free_irq_vectors(self) -> None:
        """Release all vectors and their handlers (``pci_free_irq_vectors``)."""
        with self._bus.clock.lock:
            for vector in list(self.irq.handlers):
                self.free_irq(vector)
            self._irq_vectors = 0
            self._irq_alloc_mode = IrqMode.NONE
            if self._present:
                self._write_msix_control(enable=False)

    def _write_msix_control(self, *, enable: bool) -> None:
        if self._device.msix_vectors:
            offset = self.config.field("msix.control").offset
            self.config.write(offset, 2, MSIX.ENABLE if enable else 0)

    def request_irq(self, vector: int, handler: IrqHandler) -> None:
        """Route ``vector`` to ``handler(vector)`` and unmask it (``request_irq``).

        Raises:
            InvalidArgument: ``vector`` is not allocated.
            Busy: ``vector`` already has a handler.
            NoDevice: the function was removed.
        """
        with self._bus.clock.lock:
            self._require_present()
            if not 0 <= vector < self._irq_vectors:
                raise InvalidArgument(
                    f"IRQ vector {vector} is not allocated on {self._address} "
                    f"({self._irq_vectors} allocated)"
                )
            if vector in self.irq.handlers:
                raise Busy(f"IRQ vector {vector} of {self._address} already has a handler")
            self.irq.handlers[vector] = handler
            self._program_vector(vector)

    def _program_vector(self, vector: int) -> None:
        if self.irq.mode is IrqMode.MSIX:
            entry = self.irq.entries[vector]
            entry.address, entry.data = MSI_ADDRESS, vector
            self.irq.set_entry_mask(vector, False)
        else:
            self.irq.set_level(self.irq.line)  # a line already asserted fires now

    def free_irq(self, vector: int) -> None:
        """Remove the handler of ``vector`` and mask it (``free_irq``).

        Raises:
            NoEntry: ``vector`` has no handler.
        """
        with self._bus.clock.lock:
            if self.irq.handlers.pop(vector, None) is None:
                raise NoEntry(f"IRQ vector {vector} of {self._address} has no handler")
            if self._present and self.irq.mode is IrqMode.MSIX:
                self.irq.set_entry_mask(vector, True)

    def mask_irq(self, vector: int) -> None:
        """Mask MSI-X ``vector``; messages set its pending bit meanwhile."""
        with self._bus.clock.lock:
            self.irq.set_entry_mask(vector, True)

    def unmask_irq(self, vector: int) -> None:
        """Unmask MSI-X ``vector``; a pending message is delivered now."""
        with self._bus.clock.lock:
            self.irq.set_entry_mask(vector, False)

    def irq_pending(self, vector: int) -> bool:
        """Whether MSI-X ``vector`` has a message waiting for unmask."""
        self.irq.masked(vector)  # validates the vector
        return self.irq.pending[vector]

    # -- driver API: DMA ---------------------------------------------------------------
    def dma_map(
        self,
        buffer: DmaBuffer,
        offset: int = 0,
        length: int | None = None,
        direction: DmaDirection = DmaDirection.BIDIRECTIONAL,
    ) -> int:
        """Map host memory for the device; returns the IOVA (``dma_map_single``).

        Raises:
            NoDevice: the function was removed.
            InvalidArgument: bad range or buffer (see :meth:`DmaSpace.map`).
            NoSpace: no IOVA space below the DMA mask.
        """
        with self._bus.clock.lock:
            self._require_present()
            return self.dma.map(buffer, offset, length, direction)

    def dma_unmap(self, iova: int) -> None:
        """Unmap the mapping at ``iova`` (allowed after removal, for cleanup).

        Raises:
            NoEntry: nothing is mapped at ``iova``.
        """
        with self._bus.clock.lock:
            self.dma.unmap(iova)

    # -- bus side -------------------------------------------------------------------------
    def _assign_bar(self, index: int, address: int) -> None:
        self._bar_addresses[index] = address
        self._write_bar(index, address)

    def _write_bar(self, index: int, address: int) -> None:
        self.config.write(0x10 + 4 * index, 4, address & 0xFFFF_FFFF)
        if self._bars[index].kind is BarKind.MEM64:
            self.config.write(0x14 + 4 * index, 4, address >> 32)

    def _devctl_written(self) -> None:
        # Writing "initiate FLR" resets the function at once; the bit reads as zero.
        if self._device.flr and self.config.get("pcie.devctl") & PCIE.DEVCTL_BCR_FLR:
            self._hardware_reset(ResetKind.FLR)

    def _hardware_reset(self, kind: ResetKind) -> None:
        """What the silicon does: config defaults, MSI-X masked, engines stopped."""
        self.config.reset()
        self.irq.reset()
        self._device.cancel_timers()
        self._device.hung = False
        self._device.reset(kind)

    def _restore_host_state(self) -> None:
        """Re-apply what the host programmed (``pci_restore_state``)."""
        for index, address in self._bar_addresses.items():
            self._write_bar(index, address)
        self._write_command()
        if self._irq_alloc_mode is IrqMode.MSIX:
            self._write_msix_control(enable=True)
        for vector in self.irq.handlers:
            self._program_vector(vector)

    def _mark_removed(self) -> None:
        self._present = False
        self._device.cancel_timers()

    def _release(self) -> None:
        self.dma.unmap_all()
        for bar in self._bars.values():
            bar.clear_regions()
            bar.close()

    def __repr__(self) -> str:
        state = "" if self._present else ", removed"
        return f"PciFunction({self._address}, {self._device.model!r}{state})"
