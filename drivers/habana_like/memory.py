"""Device memory and device virtual addresses: the DRAM allocator and VA spaces.

:class:`accelcore.memory.DeviceMemory` hands out page-granular ranges of the DRAM,
first fit, each a :class:`~accelcore.memory.MemoryBlock` with a memfd of its own.
A :class:`DramBlock` is one allocation as a handle names it, with a reference
count: the owning context's handle, each device mapping of it and each exported
dma-buf hold one, so exported memory outlives the context (pinned for life, as
habanalabs' exporter) and returns to the allocator only at the last reference.

A :class:`VaSpace` is one context's device MMU: mappings of DRAM blocks and of
pinned host memory at device virtual addresses, each range followed by a guard
page. :meth:`VaSpace.translate` is what the CS parser uses to turn a user address
into an engine-physical one — and to refuse everything that is not inside one of
the context's own mappings.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from accelcore import BadAddress, Busy, InvalidArgument, MemoryBlock, NoSpace, ReservationObject

from .uapi import HLK

__all__ = ["DramBlock", "MapKind", "VaMapping", "VaSpace"]

U64_MAX = (1 << 64) - 1


@dataclass(eq=False)
class DramBlock:
    """One device-memory allocation, reference counted; the last reference
    returns its :class:`~accelcore.memory.MemoryBlock` to the DRAM."""

    handle: int
    mem: MemoryBlock
    refs: int = 1
    mapped: int = 0
    #: The fences of the CSs using the block, shared with its dma-bufs.
    resv: ReservationObject = field(default_factory=ReservationObject)

    @property
    def offset(self) -> int:
        """Offset in DRAM (the engine-physical address less ``DRAM_PHYS_BASE``)."""
        return self.mem.addr

    @property
    def size(self) -> int:
        return self.mem.size

    def get(self) -> DramBlock:
        self.refs += 1
        return self

    def put(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self.mem.put()


class MapKind(enum.Enum):
    """What a device VA range maps."""

    DRAM = "dram"
    HOST = "host"


@dataclass(eq=False)
class VaMapping:
    """A device VA range of one context.

    Attributes:
        va: First device virtual address.
        size: Bytes (page multiple).
        kind: Device memory or pinned host memory.
        phys: Engine-physical address of ``va`` (DRAM base + offset, or IOVA).
        block: The DRAM block (device memory mappings).
        release: Undoes the mapping (unpins host pages, unmaps the IOVA).
        exported: dma-bufs exported from it (unmap is refused meanwhile).
        inflight: Jobs using it (unmap is refused meanwhile).
    """

    va: int
    size: int
    kind: MapKind
    phys: int
    block: DramBlock | None = None
    release: Callable[[], None] | None = None
    exported: int = 0
    inflight: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.va + self.size


class VaSpace:
    """One context's device virtual address space (two ranges: DRAM and host)."""

    def __init__(self, page: int) -> None:
        self.page = page
        self._maps: list[VaMapping] = []  # sorted by va
        self._next = {MapKind.DRAM: HLK.HLK_DRAM_VA_BASE, MapKind.HOST: HLK.HLK_HOST_VA_BASE}

    def mappings(self) -> list[VaMapping]:
        return list(self._maps)

    def _range(self, kind: MapKind) -> tuple[int, int]:
        base = HLK.HLK_DRAM_VA_BASE if kind is MapKind.DRAM else HLK.HLK_HOST_VA_BASE
        return base, base + HLK.HLK_VA_RANGE_SIZE

    def _free_at(self, va: int, size: int, kind: MapKind) -> bool:
        lo, hi = self._range(kind)
        if va % self.page or not lo <= va or va + size > hi:
            return False
        i = bisect.bisect_right([m.va for m in self._maps], va)
        before = self._maps[i - 1] if i else None
        after = self._maps[i] if i < len(self._maps) else None
        return (before is None or before.end + self.page <= va) and (
            after is None or va + size + self.page <= after.va
        )

    def reserve(self, size: int, kind: MapKind, hint: int = 0, *, force: bool = False) -> int:
        """A free VA range of ``size`` bytes: at ``hint`` if it is usable.

        Raises:
            InvalidArgument: ``force`` and the hint cannot be honoured.
            NoSpace: the range is exhausted.
        """
        if hint and self._free_at(hint, size, kind):
            return hint
        if force:
            raise InvalidArgument(
                f"hint address {hint:#x} for {size:#x} bytes cannot be "
                "mapped (unaligned, outside the range, or in use)"
            )
        va = self._next[kind]
        while not self._free_at(va, size, kind):
            va += self.page
            if va + size > self._range(kind)[1]:
                raise NoSpace(f"device {kind.value} VA range is exhausted")
        self._next[kind] = va + size + self.page
        return va

    def insert(self, mapping: VaMapping) -> None:
        bisect.insort(self._maps, mapping, key=lambda m: m.va)

    def find(self, va: int) -> VaMapping:
        """The mapping that starts at ``va``.

        Raises:
            InvalidArgument: nothing is mapped at ``va``.
        """
        for m in self._maps:
            if m.va == va:
                return m
        raise InvalidArgument(f"no mapping starts at device VA {va:#x}")

    def remove(self, va: int) -> VaMapping:
        """Unmap the range starting at ``va`` (the caller releases it).

        Raises:
            InvalidArgument: nothing is mapped there, or it is exported.
            Busy: a submitted job still uses it.
        """
        m = self.find(va)
        if m.exported:
            raise InvalidArgument(f"failed to unmap {va:#x}, memory is exported")
        if m.inflight:
            raise Busy(f"failed to unmap {va:#x}: {m.inflight} job(s) in flight use it")
        self._maps.remove(m)
        return m

    def translate(self, va: int, size: int, kinds: tuple[MapKind, ...]) -> tuple[int, VaMapping]:
        """The engine-physical address of ``[va, va+size)`` and its mapping.

        Raises:
            InvalidArgument: ``size`` is 0 or the range wraps past 2**64.
            BadAddress: the range is not inside one mapping of an allowed kind.
        """
        if size <= 0:
            raise InvalidArgument(
                f"transfer of size {size} at {va:#x} (size 0 might reset the device)"
            )
        if va + size - 1 > U64_MAX:
            raise InvalidArgument(f"range {va:#x} + {size:#x} overflows 64 bits")
        i = bisect.bisect_right([m.va for m in self._maps], va) - 1
        m = self._maps[i] if i >= 0 else None
        if m is None or va + size > m.end:
            raise BadAddress(
                f"device address range [{va:#x}, {va + size:#x}) is not mapped in this context"
            )
        if m.kind not in kinds:
            raise BadAddress(
                f"device address {va:#x} is {m.kind.value} memory; this packet "
                f"needs {'/'.join(k.value for k in kinds)}"
            )
        return m.phys + (va - m.va), m

    def remove_any(self, mapping: VaMapping) -> None:
        """Tear a mapping down unconditionally (its context is being destroyed)."""
        if mapping in self._maps:
            self._maps.remove(mapping)
        if mapping.release is not None:
            release, mapping.release = mapping.release, None
            release()
