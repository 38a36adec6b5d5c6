"""Per-device, per-file and per-context state of the habana_like driver.

* :class:`DeviceState` — one per device (``dev.private``): the model, its DRAM
  (the allocator), the hardware fence timeline, the CS scheduler, the jobs on
  the engines by tag.
* :class:`FileState` — one per open file (``file.driver_priv``): the sequence
  counter and the outcomes of submissions of earlier contexts, so that sequence
  numbers stay unique per file across a reset and old ones still answer.
* :class:`Context` — the compute context (``file.context``): command buffers,
  device memory, the VA space, submissions.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from accelcore import (
    AccelDevice,
    DeviceMemory,
    Fence,
    FenceContext,
    IdTable,
    SchedEntity,
    Scheduler,
    SharedMemory,
)

from .memory import DramBlock, VaMapping, VaSpace
from .uapi import HLK

if TYPE_CHECKING:
    from accelcore.pci import PciFunction

    from .device import HabanaLikeDevice

__all__ = ["CommandBuffer", "CommandSubmission", "Context", "DeviceState", "FileState"]

#: Outcomes of finished submissions remembered per file (habanalabs' outcome store).
OUTCOMES_KEPT = 1024


@dataclass
class DeviceState:
    """The driver's per-device state."""

    dev: AccelDevice
    fn: PciFunction
    model: HabanaLikeDevice
    allocator: DeviceMemory
    fences: FenceContext
    sched: Scheduler
    jobs: dict[int, tuple[CommandSubmission, int]] = field(default_factory=dict)
    tags: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    asids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    next_cb_offset: int = 0x1000_0000
    last_open_ns: int = 0
    clk_max_mhz: int = 1600
    max_power_mw: int = 350_000
    exported: int = 0
    cs_timeouts: int = 0
    #: Resets because a context was closed with the device not idle.
    release_resets: int = 0


@dataclass
class FileState:
    """The driver's per-file state; survives the file's contexts."""

    next_seq: int = 1
    outcomes: OrderedDict[int, int] = field(default_factory=OrderedDict)

    def remember(self, seq: int, status: int) -> None:
        """Record how submission ``seq`` ended (``HLK_WAIT_CS_STATUS_*``)."""
        self.outcomes[seq] = status
        while len(self.outcomes) > OUTCOMES_KEPT:
            self.outcomes.popitem(last=False)


@dataclass(eq=False)
class CommandBuffer:
    """A kernel-allocated command buffer the user fills through mmap."""

    handle: int
    memory: SharedMemory
    size: int
    mmap_offset: int
    refs: int = 1
    usage: int = 0

    def get(self) -> CommandBuffer:
        self.refs += 1
        return self

    def put(self) -> None:
        self.refs -= 1
        if self.refs == 0:
            self.memory.close()


@dataclass(eq=False)
class CommandSubmission:
    """One CS: a job of the device's scheduler. ``fence`` is the job's finished
    fence (what WAIT_CS waits on); ``hw`` the fence the engines' completion
    interrupts signal; ``parsed`` the validated jobs, queued on the engines when
    the scheduler runs the CS."""

    seq: int
    fence: Fence
    context: Context
    parsed: list[tuple[int, bytes]] = field(default_factory=list)
    tags: set[int] = field(default_factory=set)
    mappings: list[VaMapping] = field(default_factory=list)
    error: int = 0
    hw: Fence | None = None
    timed_out: bool = False
    skip_reset: bool = False
    limit_ms: int = 0

    def release_mappings(self) -> None:
        for m in self.mappings:
            m.inflight -= 1
        self.mappings.clear()


@dataclass(eq=False)
class Context:
    """A compute context: what one owner has on the device."""

    asid: int
    file_state: FileState
    space: VaSpace
    #: The context's queue on the device's CS scheduler.
    entity: SchedEntity
    #: Command buffers and device-memory allocations by handle: managed ID
    #: tables of the context (:mod:`accelcore.resources`), so a context torn
    #: down with entries left is reported as a leak naming the table.
    cbs: IdTable[CommandBuffer]
    allocs: IdTable[DramBlock]
    submissions: OrderedDict[int, CommandSubmission] = field(default_factory=OrderedDict)
    #: Sequence numbers of CSs whose fence has not signalled (kept by a fence callback,
    #: so the in-flight limit costs O(1) per submission, not a scan of the history).
    inflight: set[int] = field(default_factory=set)

    @property
    def dram_bytes(self) -> int:
        """Device memory allocated by this context (handles still open)."""
        return sum(b.size for b in self.allocs.values())

    @property
    def pending(self) -> int:
        return len(self.inflight)

    def cb_at(self, offset: int) -> CommandBuffer | None:
        """The CB whose mmap offset is ``offset``."""
        return next((cb for cb in self.cbs.values() if cb.mmap_offset == offset), None)

    def forget_finished(self) -> None:
        """Move finished submissions beyond the newest OUTCOMES_KEPT to the file's store."""
        while len(self.submissions) > OUTCOMES_KEPT:
            seq, cs = next(iter(self.submissions.items()))
            if not cs.fence.signalled:
                break
            del self.submissions[seq]
            self.file_state.remember(seq, outcome(cs))


def outcome(cs: CommandSubmission) -> int:
    """The WAIT_CS status of a finished submission."""
    if not cs.fence.signalled:
        return int(HLK.HLK_WAIT_CS_STATUS_BUSY)
    if cs.timed_out:
        return int(HLK.HLK_WAIT_CS_STATUS_TIMEDOUT)
    if cs.fence.error:
        return int(HLK.HLK_WAIT_CS_STATUS_ABORTED)
    return int(HLK.HLK_WAIT_CS_STATUS_COMPLETED)
