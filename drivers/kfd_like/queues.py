"""User-mode queues and the command processor that runs them, without ioctls.

A user-mode queue is a ring of 64-byte dispatch packets in the process's memory,
a read index the GPU writes back, and a **doorbell**: a 64-bit slot in the
process's doorbell page (a page of the GPU's doorbell BAR, BAR2, that the
process maps through ``/dev/kfd``). User space writes packets, then stores the
new write index (packets written so far) into the doorbell; no system call.

A store to a mapped page cannot trap in this simulation, so the command
processor **polls** the doorbells of its queues on a device-time timer (every
``poll_ns``, backing off to 64 times that while nothing changes, and stopping when the
GPU has no queues). Tests in virtual time therefore wait with a timeout, or
advance the clock; a wait without a deadline never reports a deadlock while a
queue exists, because the poll timer is always pending.

Packets run one at a time per queue, in order: the kernel runs at the end of its
device time, then the packet's header becomes ``INVALID``, the read index
advances (and is written back), the completion signal (an ``__s64`` at a GPU VA)
is decremented, and the completion event is raised as an interrupt the driver
turns into a KFD event. A GPU VM fault stops the queue and is reported too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from accelcore import Timer

from .abi import KFD_UAPI
from .gpu import GpuVmFault, KfdGpu, PageTable
from .kernels import KERNELS, run_time_ns

__all__ = ["CommandProcessor", "HwQueue"]

PACKET_SIZE = KFD_UAPI.sizeof("struct kfd_like_dispatch_packet")
#: Poll interval ceiling, as a multiple of ``poll_ns``.
BACKOFF_LIMIT = 64


class _QueueGone(Exception):
    """A kernel's queue was removed while the kernel let others in."""


@dataclass(eq=False)
class HwQueue:
    """A queue as the GPU sees it (an MQD: ring, pointers, doorbell, VM)."""

    queue_id: int
    vm: PageTable
    ring: memoryview
    read_pointer: memoryview
    doorbell: memoryview
    read_index: int = 0
    busy: bool = False
    error: str | None = None
    active: bool = True
    completed: int = 0
    timers: list[Timer] = field(default_factory=list)

    @property
    def slots(self) -> int:
        return len(self.ring) // PACKET_SIZE

    def doorbell_value(self) -> int:
        return int.from_bytes(self.doorbell[:8], "little")


InterruptFn = Callable[[HwQueue, int], None]
FaultFn = Callable[[HwQueue, GpuVmFault | None, str], None]


class CommandProcessor:
    """Runs the user-mode queues of one GPU.

    Args:
        gpu: The device model (its clock and :meth:`~KfdGpu.schedule`).
        interrupt: Called with ``(queue, event_id)`` when a packet asks for an event.
        fault: Called with ``(queue, fault, message)`` when a queue stops on an error.
    """

    def __init__(self, gpu: KfdGpu, interrupt: InterruptFn, fault: FaultFn) -> None:
        self.gpu = gpu
        self.queues: list[HwQueue] = []
        self.dispatched = 0
        #: Packets that ran to completion, and the device time they ran (INFO engines).
        self.completed = 0
        self.busy_ns = 0
        #: Times a kernel let other threads in between two of its chunks.
        self.resched_calls = 0
        self._interrupt = interrupt
        self._fault = fault
        self._poll_timer: Timer | None = None
        self._interval = gpu.poll_ns

    def add(self, queue: HwQueue) -> None:
        """Start polling ``queue``'s doorbell."""
        self.queues.append(queue)
        self._interval = self.gpu.poll_ns
        if self._poll_timer is None:
            self._arm()

    def remove(self, queue: HwQueue) -> None:
        """Stop ``queue`` (preempt and unmap it): its packet in flight is dropped."""
        queue.active = False
        for t in queue.timers:
            t.cancel()
        queue.timers.clear()
        if queue in self.queues:
            self.queues.remove(queue)
        if not self.queues and self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None

    def clear(self) -> None:
        """Stop every queue (reset, removal)."""
        for q in list(self.queues):
            self.remove(q)

    # -- polling -------------------------------------------------------------------
    def _arm(self) -> None:
        self._poll_timer = self.gpu.schedule(self._interval, self._poll)

    def _poll(self) -> None:
        self._poll_timer = None
        if not self.queues:
            return
        progressed = False
        for q in list(self.queues):
            progressed |= self._kick(q)
        self._interval = (
            self.gpu.poll_ns
            if progressed
            else min(self._interval * 2, self.gpu.poll_ns * BACKOFF_LIMIT)
        )
        self._arm()

    def _kick(self, q: HwQueue) -> bool:
        """Start the next packet of ``q`` if the doorbell says there is one."""
        if q.busy or q.error is not None or not q.active:
            return False
        if q.doorbell_value() <= q.read_index:
            return False
        off = (q.read_index % q.slots) * PACKET_SIZE
        pkt = KFD_UAPI.from_bytes(
            "struct kfd_like_dispatch_packet", q.ring[off : off + PACKET_SIZE]
        )
        if pkt.header == KFD_UAPI.KFD_LIKE_PACKET_INVALID:
            return False  # rung before the packet was written: look again later
        kernel = KERNELS.get(pkt.kernel)
        if pkt.header != KFD_UAPI.KFD_LIKE_PACKET_KERNEL_DISPATCH or kernel is None:
            self._stop(
                q,
                None,
                f"bad packet at index {q.read_index}: header {pkt.header}, kernel {pkt.kernel}",
            )
            return True
        args = [int(pkt.args[i]) for i in range(5)]
        signal, event = int(pkt.completion_signal), int(pkt.completion_event)
        q.busy = True
        self.dispatched += 1
        run_ns = run_time_ns(kernel, args)

        def resched() -> None:
            # Other threads may take the engine lock here. The packet stays in
            # flight (q.busy, so nothing starts it twice); a removal (destroy,
            # teardown, reset) in the gap is seen here and stops the kernel.
            self.gpu.clock.cond_resched()
            self.resched_calls += 1
            if not q.active or q not in self.queues:
                raise _QueueGone

        def complete() -> None:
            if not q.active:
                q.busy = False
                return
            self.busy_ns += run_ns
            try:
                try:
                    kernel.run(lambda va, n, w: q.vm.translate(va, n, write=w), args, resched)
                finally:
                    q.busy = False
                if signal:
                    view = q.vm.translate(signal, 8, write=True)
                    value = int.from_bytes(view, "little", signed=True) - 1
                    view[:] = value.to_bytes(8, "little", signed=True)
            except _QueueGone:
                return  # dropped with its queue, as a packet whose timer was cancelled
            except GpuVmFault as fault:
                self._stop(q, fault, str(fault))
                return
            q.ring[off : off + 2] = KFD_UAPI.KFD_LIKE_PACKET_INVALID.to_bytes(2, "little")
            q.read_index += 1
            q.completed += 1
            self.completed += 1
            q.read_pointer[:8] = q.read_index.to_bytes(8, "little")
            if event:
                self._interrupt(q, event)
            self._kick(q)

        q.timers = [self.gpu.schedule(run_ns, complete)]
        return True

    def _stop(self, q: HwQueue, fault: GpuVmFault | None, message: str) -> None:
        q.error = message
        self._fault(q, fault, message)
