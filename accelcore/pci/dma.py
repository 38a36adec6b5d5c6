"""DMA: the device reaches host memory only through an IOMMU-like address space.

The driver maps host buffers to I/O virtual addresses (IOVAs) with
:meth:`DmaSpace.map`; the device model reads and writes IOVAs with
:meth:`DmaSpace.read` / :meth:`DmaSpace.write`. Every device access is checked —
function present, bus mastering enabled, inside the DMA mask, entirely inside one
mapping, in a direction the mapping allows — and a failed check is a recorded
:class:`DmaFault` plus a :class:`DmaError` the device model catches. Nothing is
transferred on a fault: no silent success, no stray write.

Mappings are page-aligned with an unmapped guard page after each, so an
off-by-one overrun faults instead of touching the neighbouring buffer.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BadAddress, InvalidArgument, NoEntry, NoSpace
from ..memory import PAGE_SIZE, SharedMemory, page_align

__all__ = [
    "DmaBuffer",
    "DmaDirection",
    "DmaError",
    "DmaFault",
    "DmaFaultReason",
    "DmaMapping",
    "DmaSpace",
]

#: What the driver may map: shared memory, or any buffer (a writable one unless TO_DEVICE).
DmaBuffer = SharedMemory | memoryview | bytearray | bytes


class DmaDirection(enum.Enum):
    """Which way data may flow for a mapping (``enum dma_data_direction``)."""

    BIDIRECTIONAL = "bidirectional"
    TO_DEVICE = "to_device"  # the device only reads
    FROM_DEVICE = "from_device"  # the device only writes


class DmaFaultReason(enum.Enum):
    """Why a device DMA access was refused."""

    NO_BUS_MASTER = "bus mastering disabled"
    ABOVE_MASK = "address above the DMA mask"
    UNMAPPED = "address not mapped"
    DIRECTION = "mapping does not allow this direction"
    REMOVED = "function removed"


@dataclass(frozen=True, slots=True)
class DmaFault:
    """One refused device access (IOMMU fault record)."""

    address: int
    size: int
    write: bool
    reason: DmaFaultReason
    time: int


class DmaError(BadAddress):
    """A device DMA access faulted; the device model catches it and reports an error.

    Attributes:
        fault: The recorded fault.
    """

    def __init__(self, fault: DmaFault) -> None:
        verb = "write" if fault.write else "read"
        super().__init__(
            f"DMA {verb} of {fault.size} bytes at {fault.address:#x}: {fault.reason.value}"
        )
        self.fault = fault


@dataclass(slots=True)
class DmaMapping:
    """A mapped host buffer."""

    iova: int
    length: int
    view: memoryview
    direction: DmaDirection

    @property
    def end(self) -> int:
        """The first IOVA after the mapping."""
        return self.iova + self.length


class DmaSpace:
    """One function's DMA address space.

    Args:
        master_enabled: Reads the bus-master bit of the command register.
        present: Whether the function is still on the bus.
        now: The device clock, to timestamp faults.
    """

    #: First IOVA handed out; IOVA 0 is never valid, so a zeroed descriptor faults.
    BASE = 0x10_0000

    def __init__(
        self,
        master_enabled: Callable[[], bool],
        present: Callable[[], bool],
        now: Callable[[], int],
    ) -> None:
        self._master_enabled = master_enabled
        self._present = present
        self._now = now
        self._maps: list[DmaMapping] = []  # sorted by iova
        self.mask_bits = 32  # the Linux default until the driver sets one
        #: Faulted accesses, oldest first.
        self.faults: list[DmaFault] = []

    @property
    def mask(self) -> int:
        """The DMA mask as an address (``DMA_BIT_MASK(mask_bits)``)."""
        return (1 << self.mask_bits) - 1

    def set_mask(self, bits: int) -> None:
        """Set the DMA mask (``dma_set_mask``).

        Raises:
            InvalidArgument: ``bits`` is outside 12..64, or existing mappings lie above it.
        """
        if isinstance(bits, bool) or not isinstance(bits, int) or not 12 <= bits <= 64:
            raise InvalidArgument(f"DMA mask of {bits!r} bits is outside 12..64")
        limit = (1 << bits) - 1
        high = next((m for m in self._maps if m.end - 1 > limit), None)
        if high is not None:
            raise InvalidArgument(f"DMA mask of {bits} bits is below mapped IOVA {high.iova:#x}")
        self.mask_bits = bits

    def mappings(self) -> list[DmaMapping]:
        """The live mappings, by IOVA."""
        return list(self._maps)

    # -- driver side -------------------------------------------------------------
    def map(
        self,
        buffer: DmaBuffer,
        offset: int = 0,
        length: int | None = None,
        direction: DmaDirection = DmaDirection.BIDIRECTIONAL,
    ) -> int:
        """Map ``buffer[offset:offset+length]`` for the device; returns its IOVA.

        Args:
            buffer: Host memory: a :class:`SharedMemory`, or a contiguous buffer
                (it must be writable unless ``direction`` is ``TO_DEVICE``).
            offset: Start inside ``buffer``.
            length: Bytes to map (default: the rest of the buffer).
            direction: Which way the device may move data.

        Returns:
            The IOVA the device uses for the first byte.

        Raises:
            InvalidArgument: empty or out-of-range slice, non-contiguous buffer, or a
                read-only buffer mapped for device writes.
            NoSpace: no IOVA range of that size below the DMA mask.
        """
        view = _as_bytes_view(buffer)
        if length is None:
            length = len(view) - offset
        if offset < 0 or length <= 0 or offset + length > len(view):
            raise InvalidArgument(
                f"DMA map range offset {offset} length {length} is outside {len(view)} bytes"
            )
        if view.readonly and direction is not DmaDirection.TO_DEVICE:
            raise InvalidArgument(f"read-only buffer cannot be mapped {direction.value}")
        iova = self._find_free(length)
        mapping = DmaMapping(iova, length, view[offset : offset + length], direction)
        bisect.insort(self._maps, mapping, key=lambda m: m.iova)
        return iova

    def _find_free(self, length: int) -> int:
        need = page_align(length) + PAGE_SIZE  # plus a guard page
        candidate = self.BASE
        for m in self._maps:
            if candidate + need <= m.iova:
                break
            candidate = max(candidate, page_align(m.end) + PAGE_SIZE)
        if candidate + length - 1 > self.mask:
            raise NoSpace(f"no IOVA range of {length:#x} bytes below DMA mask {self.mask:#x}")
        return candidate

    def unmap(self, iova: int) -> None:
        """Remove the mapping that starts at ``iova``.

        Raises:
            NoEntry: no mapping starts there.
        """
        for i, m in enumerate(self._maps):
            if m.iova == iova:
                del self._maps[i]
                m.view.release()
                return
        raise NoEntry(f"no DMA mapping at IOVA {iova:#x}")

    def unmap_all(self) -> int:
        """Drop every mapping (driver unbind); returns how many there were."""
        count = len(self._maps)
        for m in self._maps:
            m.view.release()
        self._maps.clear()
        return count

    # -- device side ---------------------------------------------------------------
    def _translate(self, iova: int, size: int, write: bool) -> memoryview:
        if size <= 0:
            raise InvalidArgument(f"DMA access size {size} must be positive")
        reason: DmaFaultReason | None = None
        mapping: DmaMapping | None = None
        if not self._present():
            reason = DmaFaultReason.REMOVED
        elif not self._master_enabled():
            reason = DmaFaultReason.NO_BUS_MASTER
        elif iova < 0 or iova + size - 1 > self.mask:
            reason = DmaFaultReason.ABOVE_MASK
        else:
            i = bisect.bisect_right(self._maps, iova, key=lambda m: m.iova) - 1
            mapping = self._maps[i] if i >= 0 else None
            if mapping is None or iova + size > mapping.end:
                reason = DmaFaultReason.UNMAPPED
            elif mapping.direction is (
                DmaDirection.TO_DEVICE if write else DmaDirection.FROM_DEVICE
            ):
                reason = DmaFaultReason.DIRECTION
        if reason is not None:
            fault = DmaFault(iova, size, write, reason, self._now())
            self.faults.append(fault)
            raise DmaError(fault)
        assert mapping is not None
        start = iova - mapping.iova
        return mapping.view[start : start + size]

    def read(self, iova: int, size: int) -> bytes:
        """Device reads ``size`` bytes of host memory at ``iova``.

        Raises:
            DmaError: the access faulted (also recorded in :attr:`faults`).
        """
        return bytes(self._translate(iova, size, False))

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        """Device writes ``data`` to host memory at ``iova``.

        Raises:
            DmaError: the access faulted (also recorded in :attr:`faults`).
        """
        self._translate(iova, len(data), True)[:] = data


def _as_bytes_view(buffer: DmaBuffer) -> memoryview:
    if isinstance(buffer, SharedMemory):
        return buffer.view()
    view = memoryview(buffer)
    if not view.c_contiguous:
        raise InvalidArgument("DMA buffer is not contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view
