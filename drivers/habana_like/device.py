"""The simulated habana_like ASIC: device memory, queues, DMA and compute engines.

Hardware view (what the driver programs):

* **BAR0** — 64 KiB of registers: ``0x0`` id, ``0x4`` busy-engine mask, and the
  sync-object (SOB) window at ``HLK_SOB_BASE`` (``HLK_SOB_COUNT`` u32s).
* **BAR4** — the whole device memory (DRAM), 64-bit prefetchable: a window on
  :attr:`HabanaLikeDevice.dram`, a :class:`accelcore.memory.DeviceMemory` whose
  every allocation is a memfd of its own (nothing is spent on DRAM nobody
  allocated, and sharing one allocation shares nothing else).
* **MSI-X** — one vector per queue; a job's completion posts ``(tag, error)`` to
  the queue's completion queue and raises the vector.
* **Queues** — ``HLK_QUEUE_ID_DMA_0/1`` feed two DMA engines (LIN_DMA between
  host memory and DRAM), ``HLK_QUEUE_ID_COMPUTE_0`` the compute engine (KERNEL).
  Each engine runs its jobs in order; a job takes device time (bytes / bandwidth,
  flops / throughput) and its effects land when it completes.

Engines execute *patched* command buffers: every address is already physical —
DRAM at ``DRAM_PHYS_BASE + offset``, host memory as an IOVA of the function's
DMA space (so bus-master enable and the IOMMU are honoured). The CS parser is
what keeps user addresses out; the engines still bounds-check DRAM (an access
must lie inside one allocation) and record a HW event instead of crashing if
something slips through.
"""

from __future__ import annotations

import errno
import struct
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from accelcore import FILL_CHUNK, PAGE_SIZE, BadAddress, DeviceMemory, InvalidArgument
from accelcore.pci import BarKind, BarSpec, DmaError, MmioRegion, ResetKind, SimDevice

from .kernels import KERNELS, as_f32
from .packets import Packet, PacketError, iter_packets
from .uapi import HLK

if TYPE_CHECKING:
    from accelcore.pci import PciFunction

__all__ = ["CQ_ADDR_BASE", "DRAM_PHYS_BASE", "Engine", "HabanaLikeDevice"]

#: Engine-physical address of DRAM byte 0 (patched packets only; never a user VA).
DRAM_PHYS_BASE = 1 << 52
#: MSG_PROT to ``CQ_ADDR_BASE + queue`` posts a completion on that queue's CQ.
CQ_ADDR_BASE = 0xFFFF_0000_0000
REGS_BAR = 0
DRAM_BAR = 4
REG_ID = 0x0
REG_BUSY = 0x4
ID_VALUE = 0x1DA3_1000
_SOB_END = HLK.HLK_SOB_BASE + 4 * HLK.HLK_SOB_COUNT
#: Device-time model: fixed cost per job and per packet, DMA bytes/ns, flops/ns.
JOB_NS = 1_000
PACKET_NS = 10
DMA_BYTES_PER_NS = 10
FLOPS_PER_NS = 1_000


@dataclass
class Engine:
    """One engine and its queue: in-order execution, busy accounting."""

    name: str
    queue: int
    kind: str  # "dma" or "compute"
    free_at: int = 0
    busy_ns: int = 0
    submitted: int = 0
    completed: int = 0
    stalled: bool = False

    @property
    def busy(self) -> bool:
        return self.submitted > self.completed


@dataclass
class _Job:
    tag: int
    cb: bytes
    error: int = 0
    cancelled: bool = False


class _JobAborted(Exception):
    """A LIN_DMA found, after letting other threads in, that its job was cancelled
    (context teardown) or the device was reset meanwhile: the job stops there."""


class HabanaLikeDevice(SimDevice):
    """The device model ``habana_like``.

    Args:
        dram_mb: Device memory in MiB; a power of two (it is a BAR), 1..65536.
        cs_timeout_ms: Device-time limit of a command submission before the
            driver declares the device hung and hard-resets it (0 disables).
        serial: Board serial number (sysfs ``serial``).

    Raises:
        InvalidArgument: an option is out of range.
    """

    model = "habana_like"
    vendor_id = 0x1DA3
    device_id = 0x1000
    subsystem_vendor_id = 0x1DA3
    subsystem_id = 0x1000
    class_code = 0x120000  # processing accelerator
    revision = 1
    msix_vectors = HLK.HLK_QUEUE_ID_SIZE

    def __init__(
        self, dram_mb: int = 64, cs_timeout_ms: int = 1000, serial: str = "HLK0000001"
    ) -> None:
        super().__init__()
        if isinstance(dram_mb, bool) or not 1 <= dram_mb <= 65536 or dram_mb & (dram_mb - 1):
            raise InvalidArgument(
                f"habana_like dram_mb {dram_mb} is not a power of two in 1..65536"
            )
        if cs_timeout_ms < 0:
            raise InvalidArgument(f"habana_like cs_timeout_ms {cs_timeout_ms} is negative")
        self.dram_size = dram_mb << 20
        #: The device memory: one memfd per allocation.
        self.dram = DeviceMemory(self.dram_size, PAGE_SIZE, "DRAM")
        self.cs_timeout_ms = cs_timeout_ms
        self.serial = serial
        self.bars = (
            BarSpec(REGS_BAR, 1 << 16),
            BarSpec(DRAM_BAR, self.dram_size, BarKind.MEM64, prefetchable=True),
        )
        self.engines = [
            Engine("dma0", HLK.HLK_QUEUE_ID_DMA_0, "dma"),
            Engine("dma1", HLK.HLK_QUEUE_ID_DMA_1, "dma"),
            Engine("compute0", HLK.HLK_QUEUE_ID_COMPUTE_0, "compute"),
        ]
        self.completions: list[deque[tuple[int, int]]] = [
            deque() for _ in range(HLK.HLK_QUEUE_ID_SIZE)
        ]
        self.sobs = [0] * HLK.HLK_SOB_COUNT
        #: HW event counters since the last hard reset (``HLK_EVENT_*``).
        self.events = [0] * HLK.HLK_NUM_EVENTS
        self.errors: list[str] = []
        self._jobs: dict[int, _Job] = {}
        #: Bumped by every power-on (reset): a job that started before it is void.
        self.epoch = 0
        #: LIN_DMA chunks done (each one at most :data:`FILL_CHUNK` bytes).
        self.dma_chunks = 0

    # -- lifecycle ---------------------------------------------------------------
    def realize(self, fn: PciFunction) -> None:
        dram = self.dram

        def read(offset: int, size: int) -> int:
            return int.from_bytes(dram.peek(offset, size), "little")

        def write(offset: int, size: int, value: int) -> None:
            dram.poke(offset, value.to_bytes(size, "little"))

        # The CPU's window on DRAM: zeros where nothing is allocated.
        fn.bar(DRAM_BAR).add_region(
            MmioRegion(0, self.dram_size, read, write, name="dram-window", unaligned=True)
        )
        fn.bar(REGS_BAR).add_region(
            MmioRegion(0, 0x4000, self._read, self._write, name="hlk-regs", min_size=4, max_size=4)
        )

    def reset(self, kind: ResetKind) -> None:
        """PCI reset (FLR/hot): engines idle, SOBs and completion queues cleared."""
        self._power_on()

    def hard_reset(self) -> None:
        """The driver's hard reset: stop everything in flight and power on again."""
        self.cancel_timers()
        self.hung = False
        self._power_on()
        self.events = [0] * HLK.HLK_NUM_EVENTS

    def _power_on(self) -> None:
        self.epoch += 1
        for e in self.engines:
            e.free_at = 0
            e.stalled = False
            e.completed = e.submitted
        for cq in self.completions:
            cq.clear()
        self._jobs.clear()
        self.sobs = [0] * HLK.HLK_SOB_COUNT

    def is_idle(self) -> bool:
        """``is_device_idle``: no engine has a queued, running or stalled job."""
        return not any(e.busy or e.stalled for e in self.engines)

    # -- registers -----------------------------------------------------------------
    def busy_mask(self) -> int:
        return sum(1 << i for i, e in enumerate(self.engines) if e.busy)

    def _read(self, offset: int, size: int) -> int:
        if offset == REG_ID:
            return ID_VALUE
        if offset == REG_BUSY:
            return self.busy_mask()
        if HLK.HLK_SOB_BASE <= offset < _SOB_END:
            return self.sobs[(offset - HLK.HLK_SOB_BASE) // 4]
        return 0

    def _write(self, offset: int, size: int, value: int) -> None:
        self.write_reg(offset, value)

    def write_reg(self, offset: int, value: int) -> bool:
        """A register write from the host or a WREG32 packet; ``False`` if ignored."""
        if HLK.HLK_SOB_BASE <= offset < _SOB_END and offset % 4 == 0:
            self.sobs[(offset - HLK.HLK_SOB_BASE) // 4] = value & 0x7FFF
            return True
        return False

    # -- queues ------------------------------------------------------------------------
    def submit(self, queue: int, cb: bytes, tag: int) -> None:
        """Ring queue ``queue``'s doorbell with a patched CB; ``tag`` comes back on
        its completion queue when the job is done.

        Raises:
            InvalidArgument: no such queue.
        """
        if not 0 <= queue < len(self.engines):
            raise InvalidArgument(f"habana_like has no queue {queue}")
        engine = self.engines[queue]
        now = self.clock.now()
        duration = self.job_duration(engine, cb)
        start = max(now, engine.free_at)
        engine.free_at = start + duration
        engine.submitted += 1
        job = _Job(tag, cb)
        self._jobs[tag] = job

        def run() -> None:
            self._run(engine, job, duration)

        self.schedule(engine.free_at - now, run)

    def job_duration(self, engine: Engine, cb: bytes) -> int:
        """Device time a job takes on ``engine`` (the timing model)."""
        ns = JOB_NS
        for p in iter_packets(cb):
            ns += PACKET_NS
            if p.opcode == HLK.HLK_PACKET_LIN_DMA:
                ns += self.dma_delay(p.value // DMA_BYTES_PER_NS)
            elif p.opcode == HLK.HLK_PACKET_KERNEL and p.value in KERNELS:
                m, n, k, _ = p.dims
                ns += KERNELS[p.value].flops(m, n, k) // FLOPS_PER_NS
        return ns

    def cancel(self, tags: set[int]) -> None:
        """Drop queued jobs (their context is gone): they complete without effect
        and without a completion entry, so freed memory is never touched."""
        for tag in tags:
            job = self._jobs.get(tag)
            if job is not None:
                job.cancelled = True

    def _run(self, engine: Engine, job: _Job, duration: int) -> None:
        if engine.stalled:
            return
        self._jobs.pop(job.tag, None)
        if job.cancelled:
            engine.completed += 1
            return
        try:
            packets = list(iter_packets(job.cb))
        except PacketError as exc:  # the driver patched garbage: a HW error, not a crash
            self._engine_error(job, f"{engine.name}: {exc}")
            packets = []
        epoch = self.epoch
        for p in packets:
            if p.opcode == HLK.HLK_PACKET_MSG_PROT:
                self._complete(engine, job, p, duration)
                continue
            if job.error:
                continue  # after an error only the completion packets run
            if p.opcode == HLK.HLK_PACKET_FENCE and not self._fence(p):
                engine.stalled = True  # waits forever: the CS timeout will notice
                self.errors.append(f"{engine.name}: FENCE on SOB {p.value >> 30} stalled")
                return
            try:
                self._execute(p, job, epoch)
            except _JobAborted:
                # Ended while it let others in. Cancelled: it completes without
                # effect or completion entry (as a cancelled job that never
                # started). Reset: the power-on already idled the engine.
                if self.epoch == epoch:
                    engine.completed += 1
                return
            except DmaError as exc:
                self.events[HLK.HLK_EVENT_DMA_FAULT] += 1
                job.error = -errno.EFAULT
                self.errors.append(f"{engine.name}: {exc.strerror}")
            except (InvalidArgument, PacketError) as exc:
                self._engine_error(job, f"{engine.name}: {exc}")

    def _engine_error(self, job: _Job, message: str) -> None:
        self.events[HLK.HLK_EVENT_ENGINE_ERROR] += 1
        job.error = -errno.EIO
        self.errors.append(message)

    def _complete(self, engine: Engine, job: _Job, p: Packet, duration: int) -> None:
        queue = p.words[0] - CQ_ADDR_BASE
        if not 0 <= queue < len(self.completions):
            self._engine_error(job, f"{engine.name}: MSG_PROT to {p.words[0]:#x}")
            return
        engine.completed += 1
        engine.busy_ns += duration
        self.completions[queue].append((job.tag, job.error))
        self.raise_irq(queue)

    def _fence(self, p: Packet) -> bool:
        dec, target, sob = p.value & 0xF, (p.value >> 16) & 0xFF, p.value >> 30
        if self.sobs[sob] < target:
            return False
        self.sobs[sob] = max(0, self.sobs[sob] - dec)
        return True

    # -- packet execution ---------------------------------------------------------------
    def _execute(self, p: Packet, job: _Job, epoch: int) -> None:
        op = p.opcode
        if op == HLK.HLK_PACKET_WREG_32:
            self.write_reg(p.ctl & HLK.HLK_WREG32_REG_MASK, p.value)
        elif op == HLK.HLK_PACKET_MSG_LONG:
            self._write_phys(p.words[0], struct.pack("<I", p.value))
        elif op == HLK.HLK_PACKET_LIN_DMA:
            self._lin_dma(p, job, epoch)
        elif op == HLK.HLK_PACKET_KERNEL:
            self._kernel(p)
        elif op != HLK.HLK_PACKET_NOP:
            raise InvalidArgument(f"packet {op:#x} is not executable by an engine")

    def _lin_dma(self, p: Packet, job: _Job, epoch: int) -> None:
        """A LIN_DMA (memset or copy) in chunks of :data:`FILL_CHUNK` bytes, letting
        other threads into the engine between them (``Clock.cond_resched``), so a
        512 MiB fill does not stall every other device's ioctls.

        Releasing the lock between chunks is safe because nothing is carried
        across it but the packet's *physical addresses*: every chunk translates
        them again (DRAM allocation bounds, IOMMU mapping), and first checks that
        the job is still live. The engine stays busy meanwhile (``submitted >
        completed``), so ``is_idle`` is false and the owner's release resets the
        device. A context teardown (``cancel``) or a reset (``epoch``) that ran
        in between is seen by the next chunk, which stops the job
        (:class:`_JobAborted`); memory unmapped in between faults the chunk
        (``EFAULT``/``EIO`` job error), it is never written after release.
        """
        src, dst = p.words
        size = p.value
        memset = bool(p.ctl & HLK.HLK_LIN_DMA_CTL_MEMSET)
        pattern = bytes([src & 0xFF]) * min(size, FILL_CHUNK) if memset else b""
        for start in range(0, size, FILL_CHUNK):
            if start:
                self.clock.cond_resched()
                if job.cancelled or self.epoch != epoch or not self.present:
                    raise _JobAborted
            n = min(FILL_CHUNK, size - start)
            if memset:
                self._write_phys(dst + start, pattern[:n])
            else:
                self._write_phys(dst + start, self._read_phys(src + start, n))
            self.dma_chunks += 1

    def _dram_view(self, addr: int, size: int) -> memoryview:
        """The DRAM bytes at engine-physical ``addr``; they must lie in one allocation."""
        off = addr - DRAM_PHYS_BASE
        if off < 0 or size < 0 or off + size > self.dram_size:
            raise InvalidArgument(f"engine access [{addr:#x}, +{size:#x}) outside DRAM")
        try:
            return self.dram.view(off, size)
        except BadAddress as exc:
            raise InvalidArgument(
                f"engine access [{addr:#x}, +{size:#x}): {exc.strerror}"
            ) from None

    def _read_phys(self, addr: int, size: int) -> bytes:
        if addr >= DRAM_PHYS_BASE:
            return bytes(self._dram_view(addr, size))
        return self.dma_read(addr, size)

    def _write_phys(self, addr: int, data: bytes) -> None:
        if addr >= DRAM_PHYS_BASE:
            self._dram_view(addr, len(data))[:] = data
        else:
            self.dma_write(addr, data)

    def _kernel(self, p: Packet) -> None:
        spec = KERNELS.get(p.value)
        if spec is None:
            raise InvalidArgument(f"unknown kernel {p.value}")
        m, n, k, imm = p.dims
        views: list[memoryview | None] = []
        for addr, elems in zip(p.words, spec.sizes(m, n, k), strict=True):
            if elems == 0:
                views.append(None)
            else:
                views.append(self._dram_view(addr, elems * 4))
        a, b, c = (as_f32(v) for v in views)
        spec.run(m, n, k, imm, a, b, c)
