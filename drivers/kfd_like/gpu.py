"""The simulated KFD-like GPU: VRAM, doorbells, per-VM page tables and an SDMA engine.

The device model is the hardware half of the driver; it knows nothing of files,
processes or ioctls:

* **BAR0** is VRAM (``vram_mb``, large-BAR: the whole of it is host visible), a
  :class:`accelcore.memory.DeviceMemory`: every allocation is a
  :class:`~accelcore.memory.MemoryBlock` with its own memfd, so a CPU mapping
  of one allocation, in this process or passed to another, reaches nothing
  else. Reads of BAR0 where nothing is allocated return zeros.
* **BAR2** is the doorbell aperture: one 4 KiB page per process and GPU (a
  block of its own, likewise), one 64-bit doorbell per queue in it (see
  :mod:`drivers.kfd_like.queues`).
* **Page tables**: one :class:`PageTable` per GPU VM (per process and GPU). A
  process maps a buffer at the same virtual address on every GPU (HSA's shared
  virtual memory), so each GPU's table holds the same ranges.
* **SDMA**: page-table updates are jobs on a serial engine that take device time
  (``pt_update_ns`` each). :meth:`KfdGpu.submit_pt_update` returns a fence the
  driver waits on. :meth:`KfdGpu.inject_pt_failure` makes the next update fail
  at submission, for seed 004's partial-failure tests.
"""

from __future__ import annotations

import bisect
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from accelcore import (
    PAGE_SIZE,
    DeviceMemory,
    Fence,
    FenceContext,
    InvalidArgument,
    MemoryBlock,
    NoMemory,
    error_for_errno,
)
from accelcore.pci import BarKind, BarSpec, MmioRegion, ResetKind, SimDevice

if TYPE_CHECKING:
    from accelcore.pci import PciFunction

__all__ = [
    "DOORBELL_BAR_SIZE",
    "Backing",
    "GpuVmFault",
    "KfdGpu",
    "PageTable",
    "Pte",
]

#: Size of the doorbell BAR: 256 process doorbell pages.
DOORBELL_BAR_SIZE = 1 << 20


def _host_ram() -> int:
    """Bytes of RAM of the host (``totalram_pages``)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _window(memory: DeviceMemory, name: str) -> MmioRegion:
    """A BAR-sized MMIO window onto ``memory`` (CPU loads and stores through the BAR)."""

    def read(offset: int, size: int) -> int:
        return int.from_bytes(memory.peek(offset, size), "little")

    def write(offset: int, size: int, value: int) -> None:
        memory.poke(offset, value.to_bytes(size, "little"))

    return MmioRegion(0, memory.size, read, write, name=name, unaligned=True)


class Backing(Protocol):
    """What a page-table entry points at: memory with a label."""

    @property
    def label(self) -> str: ...

    def view(self) -> memoryview: ...


class GpuVmFault(Exception):
    """A GPU access to an address its VM does not map (or maps read-only)."""

    def __init__(self, va: int, length: int, write: bool, reason: str) -> None:
        super().__init__(
            f"GPU VM fault at {va:#x} (+{length:#x}, {'write' if write else 'read'}): {reason}"
        )
        self.va = va
        self.write = write
        self.not_present = reason != "read-only"


@dataclass(frozen=True, slots=True)
class Pte:
    """One mapped range of a GPU VM."""

    va: int
    size: int
    backing: Backing
    writable: bool

    @property
    def end(self) -> int:
        return self.va + self.size


class PageTable:
    """A GPU VM's page table: non-overlapping ranges by start address."""

    def __init__(self, pasid: int) -> None:
        self.pasid = pasid
        self._starts: list[int] = []
        self._ptes: dict[int, Pte] = {}
        self.dead = False

    def map(self, pte: Pte) -> None:
        """Enter ``pte``; an identical entry already there is left alone.

        Raises:
            InvalidArgument: the range overlaps a different mapping.
        """
        old = self._ptes.get(pte.va)
        if old is not None and old.backing is pte.backing:
            return
        i = bisect.bisect_right(self._starts, pte.va)
        if (i and self._ptes[self._starts[i - 1]].end > pte.va) or (
            i < len(self._starts) and self._starts[i] < pte.end
        ):
            raise InvalidArgument(
                f"VA range [{pte.va:#x}, {pte.end:#x}) overlaps a mapping in VM {self.pasid}"
            )
        self._starts.insert(i, pte.va)
        self._ptes[pte.va] = pte

    def unmap(self, va: int, backing: Backing | None = None) -> None:
        """Remove the range at ``va`` (only if it maps ``backing``, when given)."""
        pte = self._ptes.get(va)
        if pte is None or (backing is not None and pte.backing is not backing):
            return
        del self._ptes[va]
        self._starts.remove(va)

    def translate(self, va: int, length: int, *, write: bool) -> memoryview:
        """The bytes behind ``[va, va+length)``, which must lie in one range.

        Raises:
            GpuVmFault: not mapped, crossing a range's end, or a write to read-only.
        """
        i = bisect.bisect_right(self._starts, va) - 1
        if i < 0 or length < 0:
            raise GpuVmFault(va, length, write, "not mapped")
        pte = self._ptes[self._starts[i]]
        if va + length > pte.end:
            raise GpuVmFault(va, length, write, "not mapped")
        if write and not pte.writable:
            raise GpuVmFault(va, length, write, "read-only")
        off = va - pte.va
        return pte.backing.view()[off : off + length]

    def snapshot(self) -> tuple[tuple[int, int, str, bool], ...]:
        """``(va, size, backing label, writable)`` per range, in VA order."""
        return tuple(
            (p.va, p.size, p.backing.label, p.writable)
            for p in (self._ptes[s] for s in self._starts)
        )

    def clear(self) -> None:
        self._starts.clear()
        self._ptes.clear()

    def __len__(self) -> int:
        return len(self._starts)


class KfdGpu(SimDevice):
    """A KFD-like GPU (PCI 1002:74a1).

    Args:
        vram_mb: VRAM size in MiB (a power of two, 1..4096): BAR0's size.
        pt_update_ns: Device time one page-table update takes on the SDMA engine.
        poll_ns: Shortest interval at which the command processor polls doorbells.

    Raises:
        InvalidArgument: an option out of range (names the value).
    """

    model = "kfd_like"
    vendor_id = 0x1002
    device_id = 0x74A1
    subsystem_vendor_id = 0x1002
    subsystem_id = 0x0C34
    class_code = 0x038000
    revision = 0x02

    def __init__(self, vram_mb: int = 64, pt_update_ns: int = 5_000, poll_ns: int = 1_000) -> None:
        super().__init__()
        if not 1 <= vram_mb <= 4096 or vram_mb & (vram_mb - 1):
            raise InvalidArgument(f"kfd_like vram_mb {vram_mb} is not a power of two in 1..4096")
        if pt_update_ns < 0 or poll_ns <= 0:
            raise InvalidArgument(
                f"kfd_like pt_update_ns {pt_update_ns} / poll_ns {poll_ns} out of range"
            )
        self.vram_size = vram_mb << 20
        self.pt_update_ns = pt_update_ns
        self.poll_ns = poll_ns
        self.bars = (
            BarSpec(0, self.vram_size, BarKind.MEM64, prefetchable=True),
            BarSpec(2, DOORBELL_BAR_SIZE, BarKind.MEM64),
        )
        #: VRAM: one memfd per allocation (see the module docstring).
        self.vram = DeviceMemory(self.vram_size, name="VRAM")
        #: System memory (GTT) this GPU's allocations may use, as amdgpu's
        #: ``max_system_mem_limit``: 15/16 of the host's RAM.
        self.gtt_limit = _host_ram() * 15 // 16
        self.gtt_used = 0
        #: The doorbell aperture: one memfd per process page.
        self.doorbells = DeviceMemory(DOORBELL_BAR_SIZE, name="doorbells")
        self.page_tables: dict[int, PageTable] = {}
        self.pt_updates = 0
        #: Page-table updates queued on SDMA (``pt_updates`` of them have completed).
        self.pt_submitted = 0
        self._sdma_busy_until = 0
        self._fail_next: int | None = None
        self._fences: FenceContext | None = None
        self._doorbell_pages: dict[int, MemoryBlock] = {}

    # -- lifecycle ---------------------------------------------------------------
    def realize(self, fn: PciFunction) -> None:
        self._fences = FenceContext(fn.bus.clock, "kfd_like", f"sdma@{fn.address}")
        # The CPU's window on VRAM and on the doorbells: BAR accesses land in
        # the allocation at that address (all zeros where there is none).
        for index, memory in ((0, self.vram), (2, self.doorbells)):
            fn.bar(index).add_region(_window(memory, f"{memory.name}-window"))

    def reset(self, kind: ResetKind) -> None:
        # A reset loses the VM contexts; the driver recreates what it needs.
        for pt in self.page_tables.values():
            pt.clear()
        self._sdma_busy_until = 0

    @property
    def sdma_busy(self) -> bool:
        """Whether SDMA has page-table updates in flight now."""
        return self._sdma_busy_until > self.clock.now()

    # -- memory --------------------------------------------------------------------
    def alloc_doorbell_page(self) -> int:
        """Index of a free process doorbell page (zeroed, a memfd of its own).

        Raises:
            NoSpace: every page is in use (also while a freed page is still
                mapped by its old process).
        """
        try:
            block = self.doorbells.alloc(PAGE_SIZE, f"doorbells-{self.fn.address}")
        except NoMemory:
            raise error_for_errno(
                errno.ENOSPC, f"all doorbell pages of {self} are in use"
            ) from None
        index = block.addr // PAGE_SIZE
        self._doorbell_pages[index] = block
        return index

    def free_doorbell_page(self, index: int) -> None:
        """Drop the driver's reference on page ``index``; a CPU mapping of it keeps
        the page (and its slot) until unmapped."""
        block = self._doorbell_pages.pop(index, None)
        if block is not None:
            block.put()

    def doorbell_block(self, index: int) -> MemoryBlock:
        """The block of doorbell page ``index`` (what a CPU mapping of it holds)."""
        return self._doorbell_pages[index]

    def doorbell_page(self, index: int) -> memoryview:
        """The 4 KiB doorbell page ``index``."""
        return self._doorbell_pages[index].view()

    # -- VMs and the SDMA engine ---------------------------------------------------
    def create_vm(self, pasid: int) -> PageTable:
        """A new, empty VM context for ``pasid``."""
        pt = PageTable(pasid)
        self.page_tables[pasid] = pt
        return pt

    def destroy_vm(self, pt: PageTable) -> None:
        """Drop a VM context: its ranges are gone at once."""
        pt.clear()
        pt.dead = True
        self.page_tables.pop(pt.pasid, None)

    def inject_pt_failure(self, error: int = errno.ENOMEM) -> None:
        """Fault injection: the next page-table update fails with ``error`` at submission."""
        self._fail_next = error

    def submit_pt_update(self, update: Callable[[], None]) -> Fence:
        """Queue a page-table update on the SDMA engine.

        Args:
            update: Applies the change to a :class:`PageTable`, run when the job
                completes (in device time, after the jobs before it).

        Returns:
            The job's fence.

        Raises:
            AccelError: an injected failure (``ENOMEM`` by default).
        """
        if self._fail_next is not None:
            err, self._fail_next = self._fail_next, None
            raise error_for_errno(err, f"page-table update on {self} failed (injected)")
        assert self._fences is not None
        fence = self._fences.create()
        self.pt_submitted += 1
        now = self.clock.now()
        self._sdma_busy_until = max(now, self._sdma_busy_until) + self.pt_update_ns

        def done() -> None:
            update()
            self.pt_updates += 1
            fence.signal()

        self.schedule(self._sdma_busy_until - now, done)
        return fence
