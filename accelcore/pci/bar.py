"""Base address registers: BAR specs, their config fields, MMIO regions and accessors.

A memory BAR is backed by a :class:`~accelcore.memory.SharedMemory` (so another
process can map it, like ``/sys/bus/pci/devices/*/resourceN``); a device model
overlays register windows on it as :class:`MmioRegion`\\ s with read/write
callbacks and access rules (QEMU's ``MemoryRegionOps.valid``). An access a
region refuses, or one the function cannot decode, is a recorded
:class:`MmioFault` and reads return all-ones — what a CPU sees on a master abort —
never an exception the driver has to survive.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import InvalidArgument
from ..memory import SharedMemory
from .config import ConfigField

__all__ = [
    "Bar",
    "BarKind",
    "BarOwner",
    "BarSpec",
    "MmioFault",
    "MmioFaultReason",
    "MmioRegion",
    "bar_fields",
    "check_bar_layout",
]

NUM_BARS = 6
_ACCESS_SIZES = (1, 2, 4, 8)


class BarKind(enum.Enum):
    """What a BAR decodes."""

    MEM32 = "mem32"
    MEM64 = "mem64"
    IO = "io"

    @property
    def is_memory(self) -> bool:
        """Whether it decodes memory (not I/O) space."""
        return self is not BarKind.IO


@dataclass(frozen=True, slots=True)
class BarSpec:
    """A BAR a device model declares.

    Args:
        index: BAR number 0..5 (a 64-bit BAR also occupies ``index + 1``).
        size: Bytes; a power of two, at least 16 (memory) or 4..256 (I/O).
        kind: 32-bit memory, 64-bit memory or I/O.
        prefetchable: Memory without read side effects (device RAM).

    Raises:
        InvalidArgument: an impossible BAR (names the bad value).
    """

    index: int
    size: int
    kind: BarKind = BarKind.MEM32
    prefetchable: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.index < NUM_BARS:
            raise InvalidArgument(f"BAR index {self.index} is outside 0..5")
        if self.size <= 0 or self.size & (self.size - 1):
            raise InvalidArgument(f"BAR{self.index} size {self.size:#x} is not a power of two")
        if self.kind is BarKind.IO:
            if not 4 <= self.size <= 256:
                raise InvalidArgument(f"I/O BAR{self.index} size {self.size} is outside 4..256")
            if self.prefetchable:
                raise InvalidArgument(f"I/O BAR{self.index} cannot be prefetchable")
        elif self.size < 16:
            raise InvalidArgument(f"memory BAR{self.index} size {self.size} is below 16")
        if self.kind is BarKind.MEM32 and self.size > 1 << 31:
            raise InvalidArgument(f"32-bit BAR{self.index} size {self.size:#x} exceeds 2 GiB")
        if self.kind is BarKind.MEM64 and self.index == NUM_BARS - 1:
            raise InvalidArgument("64-bit BAR5 has no BAR6 for its upper half")

    @property
    def slots(self) -> tuple[int, ...]:
        """The BAR registers it occupies."""
        return (self.index, self.index + 1) if self.kind is BarKind.MEM64 else (self.index,)

    @property
    def flags(self) -> int:
        """The read-only low bits of the BAR register."""
        if self.kind is BarKind.IO:
            return 0x1
        return (0x4 if self.kind is BarKind.MEM64 else 0x0) | (0x8 if self.prefetchable else 0)


def check_bar_layout(specs: Iterable[BarSpec]) -> dict[int, BarSpec]:
    """Validate that BARs do not share registers; returns them by index.

    Raises:
        InvalidArgument: two BARs overlap (e.g. BAR1 inside 64-bit BAR0).
    """
    owner: dict[int, int] = {}
    by_index: dict[int, BarSpec] = {}
    for spec in specs:
        for slot in spec.slots:
            if slot in owner:
                raise InvalidArgument(
                    f"BAR{spec.index} overlaps BAR{owner[slot]} at register BAR{slot}"
                )
            owner[slot] = spec.index
        by_index[spec.index] = spec
    return by_index


def bar_fields(spec: BarSpec) -> tuple[ConfigField, ...]:
    """The config fields of ``spec``: writable address bits above the size, RO flags.

    Writing all-ones and reading back therefore yields ``~(size - 1) | flags``,
    which is how software sizes a BAR.
    """
    offset = 0x10 + 4 * spec.index
    if spec.kind is BarKind.IO:
        return (
            ConfigField(
                f"bar{spec.index}", offset, 4, rw=~(spec.size - 1) & 0xFFFF_FFFC, default=spec.flags
            ),
        )
    low = ConfigField(
        f"bar{spec.index}", offset, 4, rw=~(spec.size - 1) & 0xFFFF_FFF0, default=spec.flags
    )
    if spec.kind is BarKind.MEM32:
        return (low,)
    high_mask = (~(spec.size - 1) >> 32) & 0xFFFF_FFFF
    return (low, ConfigField(f"bar{spec.index + 1}", offset + 4, 4, rw=high_mask))


class MmioFaultReason(enum.Enum):
    """Why an MMIO access faulted."""

    SIZE = "access size not allowed"
    ALIGNMENT = "misaligned access"
    REJECTED = "device refused the access"
    OUT_OF_RANGE = "outside the BAR or across a region end"
    UNASSIGNED = "no register at this offset"
    DECODE_DISABLED = "decoding disabled in the command register"
    REMOVED = "function removed"


@dataclass(frozen=True, slots=True)
class MmioFault:
    """One faulted MMIO access."""

    bar: int
    offset: int
    size: int
    write: bool
    reason: MmioFaultReason
    time: int


ReadFn = Callable[[int, int], int]
WriteFn = Callable[[int, int, int], None]
AcceptFn = Callable[[int, int, bool], bool]


@dataclass(frozen=True, slots=True)
class MmioRegion:
    """A register window inside a BAR.

    Args:
        offset: Start in the BAR.
        size: Length in bytes.
        read: ``read(offset, size) -> value``; offset relative to the region.
        write: ``write(offset, size, value)``.
        name: For fault reports and dumps.
        min_size: Smallest access allowed (bytes).
        max_size: Largest access allowed (bytes).
        unaligned: Whether accesses need not be naturally aligned.
        accepts: Extra rule ``accepts(offset, size, is_write) -> bool`` (QEMU's
            ``valid.accepts``), e.g. "only 4-byte accesses below 0x80".
    """

    offset: int
    size: int
    read: ReadFn
    write: WriteFn
    name: str = "mmio"
    min_size: int = 1
    max_size: int = 8
    unaligned: bool = False
    accepts: AcceptFn | None = None

    def __post_init__(self) -> None:
        if self.offset < 0 or self.size <= 0:
            raise InvalidArgument(
                f"MMIO region {self.name!r} offset/size {self.offset}/{self.size}"
            )
        if self.min_size not in _ACCESS_SIZES or self.max_size not in _ACCESS_SIZES:
            raise InvalidArgument(f"MMIO region {self.name!r} access sizes must be 1, 2, 4 or 8")
        if self.min_size > self.max_size:
            raise InvalidArgument(f"MMIO region {self.name!r} min_size exceeds max_size")

    @property
    def end(self) -> int:
        """The first offset after the region."""
        return self.offset + self.size

    def check(self, rel: int, size: int, write: bool) -> MmioFaultReason | None:
        """Why this region refuses the access at ``rel``, or ``None`` if it takes it."""
        if rel + size > self.size:
            return MmioFaultReason.OUT_OF_RANGE
        if not self.min_size <= size <= self.max_size:
            return MmioFaultReason.SIZE
        if not self.unaligned and rel % size:
            return MmioFaultReason.ALIGNMENT
        if self.accepts is not None and not self.accepts(rel, size, write):
            return MmioFaultReason.REJECTED
        return None


class BarOwner(Protocol):
    """What a :class:`Bar` needs from its function."""

    @property
    def present(self) -> bool: ...

    @property
    def lock(self) -> AbstractContextManager[Any]: ...

    def decodes(self, kind: BarKind) -> bool: ...

    def bar_address(self, index: int) -> int: ...

    def record_mmio_fault(self, fault: MmioFault) -> None: ...

    def now(self) -> int: ...


class Bar:
    """An implemented BAR of a function: backing memory, register regions, accessors.

    Both the device model (``add_region``) and the driver (``read32``…) use it;
    the driver obtains it through :meth:`PciFunction.iomap`.

    Args:
        spec: The BAR's declaration.
        owner: The function it belongs to.
        name: Name of the backing memfd.
    """

    def __init__(self, spec: BarSpec, owner: BarOwner, name: str) -> None:
        self.spec = spec
        self._owner = owner
        self._regions: list[MmioRegion] = []
        self._name = name
        self._memory: SharedMemory | None = None
        self._closed = False

    @property
    def memory(self) -> SharedMemory | None:
        """The backing memfd of a memory BAR (``None`` for I/O).

        Created on first use, so register-only BARs cost no file descriptor.
        """
        if self._memory is None and self.spec.kind.is_memory and not self._closed:
            self._memory = SharedMemory(self.spec.size, self._name)
        return self._memory

    @property
    def index(self) -> int:
        """The BAR number."""
        return self.spec.index

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self.spec.size

    @property
    def kind(self) -> BarKind:
        """32-bit memory, 64-bit memory or I/O."""
        return self.spec.kind

    @property
    def address(self) -> int:
        """The bus address software assigned (0 until enumeration assigns one)."""
        return self._owner.bar_address(self.spec.index)

    @property
    def regions(self) -> tuple[MmioRegion, ...]:
        """The register windows, in the order added."""
        return tuple(self._regions)

    def add_region(self, region: MmioRegion) -> None:
        """Overlay a register window (device-model side).

        Raises:
            InvalidArgument: it leaves the BAR or overlaps another region.
        """
        if region.end > self.size:
            raise InvalidArgument(
                f"MMIO region {region.name!r} [{region.offset:#x}, {region.end:#x}) "
                f"leaves BAR{self.index} of {self.size:#x} bytes"
            )
        for other in self._regions:
            if region.offset < other.end and other.offset < region.end:
                raise InvalidArgument(
                    f"MMIO region {region.name!r} at {region.offset:#x} overlaps {other.name!r}"
                )
        self._regions.append(region)

    def clear_regions(self) -> None:
        """Drop every region (when the device model is unrealized)."""
        self._regions.clear()

    def close(self) -> None:
        """Release the backing memory."""
        self._closed = True
        if self._memory is not None:
            self._memory.close()

    # -- access ----------------------------------------------------------------
    def _fault(self, offset: int, size: int, write: bool, reason: MmioFaultReason) -> None:
        self._owner.record_mmio_fault(
            MmioFault(self.index, offset, size, write, reason, self._owner.now())
        )

    def _route(self, offset: int, size: int, write: bool) -> MmioRegion | MmioFaultReason | None:
        """The region taking the access, ``None`` for backing memory, or a fault reason."""
        if size not in _ACCESS_SIZES:
            raise InvalidArgument(f"MMIO access size {size} is not 1, 2, 4 or 8")
        if not self._owner.present:
            return MmioFaultReason.REMOVED
        if not self._owner.decodes(self.kind):
            return MmioFaultReason.DECODE_DISABLED
        if offset < 0 or offset + size > self.size:
            return MmioFaultReason.OUT_OF_RANGE
        for region in self._regions:
            if region.offset <= offset < region.end:
                return region.check(offset - region.offset, size, write) or region
        if not self.kind.is_memory:
            return MmioFaultReason.UNASSIGNED
        return None

    def read(self, offset: int, size: int) -> int:
        """Read ``size`` bytes (1, 2, 4 or 8) at ``offset``; all-ones on a fault.

        Raises:
            InvalidArgument: ``size`` is not a CPU access size.
        """
        with self._owner.lock:
            target = self._route(offset, size, False)
            if isinstance(target, MmioFaultReason):
                self._fault(offset, size, False, target)
                return (1 << (8 * size)) - 1
            if target is None:
                memory = self.memory
                assert memory is not None
                return int.from_bytes(memory.read(offset, size), "little")
            return target.read(offset - target.offset, size) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        """Write ``value`` as ``size`` bytes at ``offset``; dropped (and recorded) on a fault.

        Raises:
            InvalidArgument: ``size`` is not a CPU access size.
        """
        value &= (1 << (8 * size)) - 1
        with self._owner.lock:
            target = self._route(offset, size, True)
            if isinstance(target, MmioFaultReason):
                self._fault(offset, size, True, target)
            elif target is None:
                memory = self.memory
                assert memory is not None
                memory.write(offset, value.to_bytes(size, "little"))
            else:
                target.write(offset - target.offset, size, value)

    def read8(self, offset: int) -> int:
        """Read one byte (``ioread8``)."""
        return self.read(offset, 1)

    def read16(self, offset: int) -> int:
        """Read 16 bits, little-endian (``ioread16``)."""
        return self.read(offset, 2)

    def read32(self, offset: int) -> int:
        """Read 32 bits, little-endian (``ioread32``)."""
        return self.read(offset, 4)

    def read64(self, offset: int) -> int:
        """Read 64 bits, little-endian (``readq``)."""
        return self.read(offset, 8)

    def write8(self, offset: int, value: int) -> None:
        """Write one byte (``iowrite8``)."""
        self.write(offset, 1, value)

    def write16(self, offset: int, value: int) -> None:
        """Write 16 bits, little-endian (``iowrite16``)."""
        self.write(offset, 2, value)

    def write32(self, offset: int, value: int) -> None:
        """Write 32 bits, little-endian (``iowrite32``)."""
        self.write(offset, 4, value)

    def write64(self, offset: int, value: int) -> None:
        """Write 64 bits, little-endian (``writeq``)."""
        self.write(offset, 8, value)

    def __repr__(self) -> str:
        return f"Bar({self.index}, {self.kind.value}, size={self.size:#x})"
