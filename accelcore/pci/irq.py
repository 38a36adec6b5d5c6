"""Interrupts: MSI-X vectors with masking and pending bits, and level-triggered INTx.

The device side calls :meth:`InterruptController.trigger` / :meth:`lower`; what
happens depends on how the host programmed the function, exactly as on hardware:

* MSI-X enabled (message control bit 15): the vector's message is sent — the
  driver's handler runs — unless the vector or the whole function is masked, in
  which case its pending bit is set and the message goes out on unmask.
* otherwise INTx: the line is a level. The handler runs when the line becomes
  effectively asserted (asserted, and not disabled by command bit 10); while it
  stays asserted nothing more is delivered, so a handler must make the device
  deassert it (edu: write the ack register). Clearing the disable bit while the
  line is still asserted delivers it, as unmasking a level interrupt does.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidArgument
from .bar import MmioRegion
from .caps import MSIX
from .config import COMMAND, STATUS, ConfigSpace

__all__ = [
    "MSI_ADDRESS",
    "InterruptController",
    "IrqHandler",
    "IrqMode",
    "IrqType",
    "MsixEntry",
    "pba_size",
]

#: The x86 MSI address window a host programs into table entries.
MSI_ADDRESS = 0xFEE0_0000

#: ``handler(vector)``: runs in device time with the engine lock held.
IrqHandler = Callable[[int], object]


class IrqMode(enum.Enum):
    """Which interrupt mechanism the host enabled."""

    NONE = "none"
    INTX = "intx"
    MSIX = "msix"


class IrqType(enum.IntFlag):
    """Which mechanisms ``alloc_irq_vectors`` may use (``PCI_IRQ_*``)."""

    INTX = 0x1
    MSIX = 0x4
    ALL = INTX | MSIX


@dataclass(slots=True)
class MsixEntry:
    """One MSI-X table entry; masked after reset, as the spec requires."""

    address: int = 0
    data: int = 0
    control: int = MSIX.VECTOR_CTRL_MASKBIT


class InterruptController:
    """A function's interrupt logic.

    Args:
        config: The function's config space (command, status, MSI-X control).
        vectors: MSI-X table size (0: no MSI-X).
        pin: INTx pin (1 = INTA … 4 = INTD; 0: none).
    """

    def __init__(self, config: ConfigSpace, vectors: int, pin: int) -> None:
        self._config = config
        self.vectors = vectors
        self.pin = pin
        self.entries = [MsixEntry() for _ in range(vectors)]
        self.pending = [False] * vectors
        self.handlers: dict[int, IrqHandler] = {}
        #: Messages delivered to a handler, per vector (INTx counts as vector 0).
        self.delivered = [0] * max(1, vectors)
        #: Interrupts that reached the host with no handler registered.
        self.unhandled = 0
        #: Device interrupts dropped because the host enabled no mechanism.
        self.lost = 0
        self.line = False
        self._intx_delivered = False
        config.on_write(0x04, 2, lambda _o, _s: self._evaluate_intx())
        if vectors:
            control = config.field("msix.control")
            config.on_write(control.offset, 2, lambda _o, _s: self._control_written())

    # -- state -------------------------------------------------------------------
    @property
    def mode(self) -> IrqMode:
        """The mechanism in use, from the host's programming of config space."""
        if self.vectors and self._config.get("msix.control") & MSIX.ENABLE:
            return IrqMode.MSIX
        return IrqMode.INTX if self.pin else IrqMode.NONE

    @property
    def function_masked(self) -> bool:
        """Whether the MSI-X function mask bit is set."""
        return bool(self.vectors and self._config.get("msix.control") & MSIX.FUNCTION_MASK)

    def masked(self, vector: int) -> bool:
        """Whether ``vector`` is masked by its entry or by the function mask."""
        self._check_vector(vector)
        return self.function_masked or bool(self.entries[vector].control & MSIX.VECTOR_CTRL_MASKBIT)

    def _check_vector(self, vector: int) -> None:
        if not 0 <= vector < self.vectors:
            raise InvalidArgument(f"MSI-X vector {vector} is outside 0..{self.vectors - 1}")

    def reset(self) -> None:
        """Hardware reset: all entries masked, nothing pending, line deasserted."""
        self.entries = [MsixEntry() for _ in range(self.vectors)]
        self.pending = [False] * self.vectors
        self.line = False
        self._intx_delivered = False

    # -- device side ---------------------------------------------------------------
    def trigger(self, vector: int = 0) -> None:
        """The device signals ``vector`` (an MSI-X message, or asserts INTx).

        Raises:
            InvalidArgument: ``vector`` is not in the MSI-X table (a model bug).
        """
        mode = self.mode
        if mode is IrqMode.MSIX:
            self._check_vector(vector)
            if self.masked(vector):
                self.pending[vector] = True
            else:
                self._deliver(vector)
        elif mode is IrqMode.INTX:
            self.set_level(True)
        else:
            self.lost += 1

    def lower(self, vector: int = 0) -> None:
        """The device withdraws an interrupt: deasserts INTx (no-op for MSI-X)."""
        if self.mode is IrqMode.INTX:
            self.set_level(False)

    def set_level(self, asserted: bool) -> None:
        """Drive the INTx line; status bit 3 follows it."""
        self.line = asserted
        self._config.update_bits("status", STATUS.INTERRUPT, asserted)
        self._evaluate_intx()

    def _evaluate_intx(self) -> None:
        disabled = self._config.get("command") & COMMAND.INTX_DISABLE
        effective = self.line and not disabled and self.mode is IrqMode.INTX
        if not effective:
            self._intx_delivered = False
        elif not self._intx_delivered:
            self._intx_delivered = True
            self._deliver(0)

    def _deliver(self, vector: int) -> None:
        handler = self.handlers.get(vector)
        if handler is None:
            self.unhandled += 1
            return
        self.delivered[vector] += 1
        handler(vector)

    def _control_written(self) -> None:
        self._evaluate_intx()  # enabling MSI-X silences INTx and vice versa
        self.flush_pending()

    def flush_pending(self) -> None:
        """Send every pending message whose vector is now unmasked."""
        if self.mode is not IrqMode.MSIX:
            return
        for vector in range(self.vectors):
            if self.pending[vector] and not self.masked(vector):
                self.pending[vector] = False
                self._deliver(vector)

    # -- host side: the MSI-X table and PBA as MMIO ----------------------------------
    def set_entry_mask(self, vector: int, masked: bool) -> None:
        """Set or clear an entry's mask bit (as a table write would)."""
        self._check_vector(vector)
        entry = self.entries[vector]
        bit = MSIX.VECTOR_CTRL_MASKBIT
        entry.control = entry.control | bit if masked else entry.control & ~bit
        self.flush_pending()

    def _dword(self, index: int) -> int:
        entry = self.entries[index // 4]
        field = index % 4
        if field == 0:
            return entry.address & 0xFFFF_FFFF
        if field == 1:
            return entry.address >> 32
        return entry.data if field == 2 else entry.control

    def _set_dword(self, index: int, value: int) -> None:
        entry = self.entries[index // 4]
        field = index % 4
        if field == 0:
            entry.address = (entry.address & ~0xFFFF_FFFF) | value
        elif field == 1:
            entry.address = (entry.address & 0xFFFF_FFFF) | (value << 32)
        elif field == 2:
            entry.data = value
        else:
            entry.control = value & MSIX.VECTOR_CTRL_MASKBIT
            self.flush_pending()

    def _table_read(self, offset: int, size: int) -> int:
        low = self._dword(offset // 4)
        return low if size == 4 else low | (self._dword(offset // 4 + 1) << 32)

    def _table_write(self, offset: int, size: int, value: int) -> None:
        self._set_dword(offset // 4, value & 0xFFFF_FFFF)
        if size == 8:
            self._set_dword(offset // 4 + 1, value >> 32)

    def _pba_read(self, offset: int, size: int) -> int:
        bits = sum(1 << v for v, p in enumerate(self.pending) if p)
        return (bits >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def table_region(self, offset: int) -> MmioRegion:
        """The MSI-X table as a BAR region at ``offset`` (4- or 8-byte accesses)."""
        return MmioRegion(
            offset,
            self.vectors * MSIX.ENTRY_SIZE,
            self._table_read,
            self._table_write,
            name="msix-table",
            min_size=4,
            max_size=8,
        )

    def pba_region(self, offset: int) -> MmioRegion:
        """The pending-bit array as a read-only BAR region at ``offset``."""
        return MmioRegion(
            offset,
            pba_size(self.vectors),
            self._pba_read,
            lambda _o, _s, _v: None,
            name="msix-pba",
            min_size=4,
            max_size=8,
        )


def pba_size(vectors: int) -> int:
    """Bytes of the pending-bit array for ``vectors`` entries (whole qwords)."""
    return 8 * ((vectors + 63) // 64)
