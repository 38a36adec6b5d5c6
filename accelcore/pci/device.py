"""The base class of simulated hardware: what a device model declares and may call.

A device model subclasses :class:`SimDevice`, sets its identity and layout as
class attributes (or per instance in ``__init__``), and overrides the hooks::

    class MyAsic(SimDevice):
        model = "myasic"
        vendor_id, device_id, class_code = 0x1DA3, 0x1000, 0x120000
        bars = (BarSpec(0, 1 << 20), BarSpec(2, 1 << 28, BarKind.MEM64, prefetchable=True))
        msix_vectors = 8

        def realize(self, fn):          # the function exists: add register windows
            fn.bar(0).add_region(MmioRegion(0, 0x1000, self.read_reg, self.write_reg))

        def reset(self, kind):          # FLR / hot reset: registers to power-on values
            ...

The lifecycle mirrors libvfio-user and QEMU: describe → ``realize(fn)`` when the
bus enumerates the function → run (MMIO callbacks, timers on :attr:`clock`) →
``reset(kind)`` → ``unrealize()`` on removal. A model never sleeps: work that
takes time is a callback scheduled with :meth:`schedule`, which honours
:attr:`hung` so fault injection can stop the engines without the model's help.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..clock import Clock, Timer
from ..errors import NoDevice
from .bar import BarSpec
from .ids import DeviceIdentity
from .kinds import ResetKind

if TYPE_CHECKING:
    from .function import PciFunction

__all__ = ["SimDevice"]


class SimDevice:
    """A simulated PCI device (one function).

    Subclasses declare the identity and resources below; ``hung`` and
    ``dma_slowdown`` are runtime state set by fault injection.

    Attributes:
        model: Name used in machine descriptions and logs.
        vendor_id: Vendor id.
        device_id: Device id.
        subsystem_vendor_id: Subsystem vendor id.
        subsystem_id: Subsystem id.
        class_code: 24-bit class code (base class, subclass, prog-if).
        revision: Revision id.
        bars: The BARs it implements.
        msix_vectors: MSI-X table size (0: INTx only).
        msix_bar: BAR holding the MSI-X table and PBA; ``None`` gives the table a
            dedicated 32-bit BAR at the first free index.
        msix_table_offset: Offset of the table in ``msix_bar``.
        msix_pba_offset: Offset of the pending-bit array in ``msix_bar``.
        interrupt_pin: INTx pin, 1 (INTA) … 4 (INTD), or 0 for none.
        pcie: PCI Express (4 KiB config space, PCIe capability) or plain PCI.
        flr: Whether it advertises function-level reset.
        aer: Whether it has the AER extended capability (PCIe only).
        hung: Set by fault injection; models must honour it: the engines are
            stuck and :meth:`schedule` drops completions.
        dma_slowdown: Set by fault injection; models must honour it: the factor
            applied to DMA durations (:meth:`dma_delay`).
    """

    model: str = "sim"
    vendor_id: int = 0
    device_id: int = 0
    subsystem_vendor_id: int = 0
    subsystem_id: int = 0
    class_code: int = 0xFF0000
    revision: int = 0
    bars: tuple[BarSpec, ...] = ()
    msix_vectors: int = 0
    msix_bar: int | None = None
    msix_table_offset: int = 0
    msix_pba_offset: int = 0
    interrupt_pin: int = 1
    pcie: bool = True
    flr: bool = True
    aer: bool = True

    def __init__(self) -> None:
        self.hung = False
        self.dma_slowdown = 1.0
        self._fn: PciFunction | None = None
        self._timers: list[Timer] = []

    # -- hooks to override ------------------------------------------------------------
    def realize(self, fn: PciFunction) -> None:
        """The function exists (BARs, config space): add MMIO regions, initial state."""

    def unrealize(self) -> None:
        """The function is going away: release model resources. Timers are cancelled."""

    def reset(self, kind: ResetKind) -> None:
        """Return the model's registers and engines to their power-on state."""

    # -- identity -------------------------------------------------------------------
    def identity(self) -> DeviceIdentity:
        """The ids an id table is matched against."""
        return DeviceIdentity(
            self.vendor_id,
            self.device_id,
            self.subsystem_vendor_id,
            self.subsystem_id,
            self.class_code,
            self.revision,
        )

    # -- helpers for models -------------------------------------------------------------
    @property
    def fn(self) -> PciFunction:
        """The function this model is realized as.

        Raises:
            NoDevice: the model is not (or no longer) on a bus.
        """
        if self._fn is None:
            raise NoDevice(f"device model {self.model!r} is not realized on a bus")
        return self._fn

    @property
    def clock(self) -> Clock:
        """The device clock (the bus's)."""
        return self.fn.bus.clock

    @property
    def present(self) -> bool:
        """Whether the function is on the bus (false after any removal)."""
        return self._fn is not None and self._fn.present

    def schedule(self, delay: int, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` after ``delay`` ns of device time, unless the device hangs.

        The callback is dropped if, when it falls due, the device is hung or gone;
        a reset or removal cancels everything scheduled.
        """

        def fire() -> None:
            if timer in self._timers:
                self._timers.remove(timer)
            if not self.hung and self.present:
                callback()

        timer = self.clock.call_later(delay, fire)
        self._timers.append(timer)
        return timer

    def cancel_timers(self) -> None:
        """Cancel everything :meth:`schedule` queued (reset, removal)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def dma_delay(self, ns: int) -> int:
        """``ns`` scaled by the injected DMA slowdown."""
        return int(ns * self.dma_slowdown)

    def raise_irq(self, vector: int = 0) -> None:
        """Signal ``vector``: an MSI-X message, or assert INTx (level) in INTx mode."""
        if self.present:
            self.fn.irq.trigger(vector)

    def lower_irq(self, vector: int = 0) -> None:
        """Deassert INTx (no-op under MSI-X)."""
        if self.present:
            self.fn.irq.lower(vector)

    def dma_read(self, iova: int, size: int) -> bytes:
        """Read host memory through the function's DMA space.

        Raises:
            DmaError: the access faulted (recorded in ``fn.dma_faults``).
        """
        return self.fn.dma.read(iova, size)

    def dma_write(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        """Write host memory through the function's DMA space.

        Raises:
            DmaError: the access faulted (recorded in ``fn.dma_faults``).
        """
        self.fn.dma.write(iova, data)

    # -- bus side ------------------------------------------------------------------
    def _attach(self, fn: PciFunction) -> None:
        self._fn = fn
        self.hung = False
        self.dma_slowdown = 1.0

    def _detach(self) -> None:
        self.cancel_timers()
        self._fn = None

    def __repr__(self) -> str:
        where = str(self._fn.address) if self._fn is not None else "unrealized"
        return f"{type(self).__name__}({where})"
