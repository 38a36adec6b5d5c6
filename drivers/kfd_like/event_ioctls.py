"""User-mode queues and events: CREATE/DESTROY_QUEUE and the EVENT ioctls.

Queues are AQL-like: ``CREATE_QUEUE`` pins the ring and read/write pointers
(user memory, ``EFAULT`` otherwise), gives the queue a doorbell slot in the
process's doorbell page of the GPU, and hands the queue to the GPU's command
processor (:mod:`.queues`); from then on user space submits work without
ioctls. The mmap offset of the doorbell comes back in ``doorbell_offset``
(``/dev/kfd`` type DOORBELL, the gpu_id, and the slot's byte offset in the page).

Events: signal events are set by ``SET_EVENT`` or by a packet's completion;
MEMORY events by a GPU VM fault of a queue of the process. ``WAIT_EVENTS`` is an
interruptible wait; on an interrupt the remaining timeout is written back so a
restart (by the kernel or by the thunk's retry loop) waits only for what is left.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from accelcore import (
    InvalidArgument,
    NoDevice,
    NoMemory,
    NotSupported,
    RestartSyscall,
    error_for_errno,
    ioctl,
)

from .abi import KFD_UAPI, mmap_offset
from .base import KfdBase, kfd_only
from .process import GpuNode, KfdEvent, KfdProcess, KfdQueue
from .queues import HwQueue

if TYPE_CHECKING:
    from .chardev import KfdCall
    from .gpu import GpuVmFault

__all__ = ["EventQueueIoctls"]

U = KFD_UAPI
#: Queues per process: one 8-byte doorbell each in a 4 KiB doorbell page.
MAX_QUEUES_PER_PROCESS = 512
_EVENT_TYPES = {U.KFD_IOC_EVENT_SIGNAL, U.KFD_IOC_EVENT_HW_EXCEPTION, U.KFD_IOC_EVENT_MEMORY}
_UNMODELLED_QUEUES = {
    U.KFD_IOC_QUEUE_TYPE_COMPUTE,
    U.KFD_IOC_QUEUE_TYPE_SDMA,
    U.KFD_IOC_QUEUE_TYPE_SDMA_XGMI,
}


class EventQueueIoctls(KfdBase):
    """Queue and event ioctls of ``/dev/kfd``, and the GPU's interrupts."""

    # -- queues -------------------------------------------------------------------------
    @ioctl("DRM_IOCTL_KFD_CREATE_QUEUE")
    @kfd_only
    def create_queue(self, call: KfdCall) -> None:
        a = call.args
        pdd = self.pdd_of(call.process, a.gpu_id)
        if a.queue_type != U.KFD_IOC_QUEUE_TYPE_COMPUTE_AQL:
            what = "is not modelled" if a.queue_type in _UNMODELLED_QUEUES else "is unknown"
            raise NotSupported(f"queue type {a.queue_type} {what} (use COMPUTE_AQL)")
        if a.queue_percentage & 0xFF > U.KFD_MAX_QUEUE_PERCENTAGE:
            raise InvalidArgument(f"queue percentage {a.queue_percentage & 0xFF} > 100")
        if a.queue_priority > U.KFD_MAX_QUEUE_PRIORITY:
            raise InvalidArgument(f"queue priority {a.queue_priority} > 15")
        if a.ring_size & (a.ring_size - 1):
            raise InvalidArgument(f"ring size {a.ring_size:#x} is not a power of two")
        ring_size = max(int(a.ring_size), U.KFD_MIN_QUEUE_RING_SIZE)
        ring = call.user_view(a.ring_base_address, ring_size, write=True)
        rptr = call.user_view(a.read_pointer_address, 8, write=True)
        call.user_view(a.write_pointer_address, 8, write=True)
        for addr, size in (
            (a.eop_buffer_address, a.eop_buffer_size),
            (a.ctx_save_restore_address, a.ctx_save_restore_size),
        ):
            if addr:
                call.task.mm.check(addr, size, write=True)
        try:
            vm = pdd.require_vm()
        except NoDevice as exc:
            raise error_for_errno(
                errno.ESRCH, f"cannot bind to gpu {a.gpu_id}: {exc.strerror}"
            ) from None
        qid = next((i for i in range(MAX_QUEUES_PER_PROCESS) if i not in call.process.queues), None)
        if qid is None:
            raise NoMemory(f"process has {MAX_QUEUES_PER_PROCESS} queues (the limit)")
        assert pdd.doorbell_index is not None
        slot = qid * 8
        doorbell = pdd.node.gpu.doorbell_page(pdd.doorbell_index)[slot : slot + 8]
        doorbell[:] = bytes(8)
        rptr[:] = bytes(8)
        hw = HwQueue(qid, vm, ring, rptr, doorbell)
        call.process.queues[qid] = KfdQueue(qid, pdd.node, hw)
        pdd.node.cp.add(hw)
        a.queue_id = qid
        a.doorbell_offset = mmap_offset(U.KFD_MMAP_TYPE_DOORBELL, pdd.node.gpu_id, slot)

    @ioctl("DRM_IOCTL_KFD_DESTROY_QUEUE")
    @kfd_only
    def destroy_queue(self, call: KfdCall) -> None:
        q = call.process.queues.pop(call.args.queue_id, None)
        if q is None:
            raise InvalidArgument(f"no queue {call.args.queue_id} in this process")
        q.node.cp.remove(q.hw)

    # -- events -------------------------------------------------------------------------
    @ioctl("DRM_IOCTL_KFD_CREATE_EVENT")
    @kfd_only
    def create_event(self, call: KfdCall) -> None:
        a = call.args
        p = call.process
        if a.event_type not in _EVENT_TYPES:
            raise InvalidArgument(f"event type {a.event_type} is not supported")
        if a.event_type == U.KFD_IOC_EVENT_SIGNAL:
            signal_events = sum(e.event_type == U.KFD_IOC_EVENT_SIGNAL for e in p.events.values())
            if signal_events >= U.KFD_SIGNAL_EVENT_LIMIT - 1:
                raise error_for_errno(errno.ENOSPC, "signal event limit reached")
            eid = p.next_signal_event
            while eid in p.events or eid == 0:
                eid = eid % (U.KFD_SIGNAL_EVENT_LIMIT - 1) + 1
            p.next_signal_event = eid % (U.KFD_SIGNAL_EVENT_LIMIT - 1) + 1
            a.event_trigger_data = eid
            a.event_slot_index = eid
        else:
            eid = p.next_other_event
            p.next_other_event += 1
        p.events[eid] = KfdEvent(eid, int(a.event_type), bool(a.auto_reset))
        a.event_id = eid
        a.event_page_offset = 0

    def _event(self, p: KfdProcess, event_id: int) -> KfdEvent:
        ev = p.events.get(event_id)
        if ev is None:
            raise InvalidArgument(f"no event {event_id} in this process")
        return ev

    @ioctl("DRM_IOCTL_KFD_DESTROY_EVENT")
    @kfd_only
    def destroy_event(self, call: KfdCall) -> None:
        self._event(call.process, call.args.event_id)
        del call.process.events[call.args.event_id]

    @ioctl("DRM_IOCTL_KFD_SET_EVENT")
    @kfd_only
    def set_event(self, call: KfdCall) -> None:
        ev = self._event(call.process, call.args.event_id)
        if ev.event_type != U.KFD_IOC_EVENT_SIGNAL:
            raise InvalidArgument(f"event {ev.event_id} cannot be signalled by the CPU")
        self.signal_event(ev)

    @ioctl("DRM_IOCTL_KFD_RESET_EVENT")
    @kfd_only
    def reset_event(self, call: KfdCall) -> None:
        self._event(call.process, call.args.event_id).signaled = False

    def signal_event(self, ev: KfdEvent) -> None:
        ev.signaled = True
        ev.age += 1
        self.subsystem.clock.notify()

    @ioctl("DRM_IOCTL_KFD_WAIT_EVENTS", waits=True)
    @kfd_only
    def wait_events(self, call: KfdCall) -> None:
        a = call.args
        if a.num_events == 0:
            raise InvalidArgument("num_events is 0")
        size = U.sizeof("struct kfd_event_data")
        raw = call.copy_from_user(a.events_ptr, a.num_events * size)
        data = [
            U.from_bytes("struct kfd_event_data", raw[i * size : (i + 1) * size])
            for i in range(a.num_events)
        ]
        events = [self._event(call.process, d.event_id) for d in data]

        def ready() -> bool:
            hits = (e.signaled for e in events)
            return all(hits) if a.wait_for_all else any(hits)

        infinite = a.timeout == U.KFD_EVENT_TIMEOUT_INFINITE
        timeout_ns = None if infinite else int(a.timeout) * 1_000_000
        start = call.clock.now()
        try:
            done = ready() if timeout_ns == 0 else call.wait(ready, timeout_ns)
        except RestartSyscall:
            if not infinite:
                spent_ms = (call.clock.now() - start) // 1_000_000
                a.timeout = max(0, int(a.timeout) - spent_ms)
            raise
        if not done:
            a.wait_result = U.KFD_IOC_WAIT_RESULT_TIMEOUT
            a.timeout = 0
            return
        for d, ev in zip(data, events, strict=True):
            if ev.signaled and ev.fault is not None:
                m = d.memory_exception_data
                m.va = ev.fault.va
                m.gpu_id = ev.fault_gpu
                m.failure.NotPresent = int(ev.fault.not_present)
                m.failure.ReadOnly = int(not ev.fault.not_present)
            if ev.signaled and ev.auto_reset:
                ev.signaled = False
        call.copy_to_user(a.events_ptr, b"".join(U.to_bytes(d) for d in data))
        a.wait_result = U.KFD_IOC_WAIT_RESULT_COMPLETE

    # -- interrupts from the GPUs ---------------------------------------------------------
    def _owner(self, q: HwQueue) -> KfdProcess | None:
        for p in self.processes.values():
            if any(kq.hw is q for kq in p.queues.values()):
                return p
        return None

    def gpu_interrupt(self, q: HwQueue, event_id: int) -> None:
        """A packet asked for ``event_id``: set it (``kfd_signal_event_interrupt``)."""
        p = self._owner(q)
        ev = p.events.get(event_id) if p is not None else None
        if ev is not None and ev.event_type == U.KFD_IOC_EVENT_SIGNAL:
            self.signal_event(ev)

    def gpu_fault(self, node: GpuNode, q: HwQueue, fault: GpuVmFault | None, message: str) -> None:
        """A queue stopped: report a VM fault to the process's MEMORY events."""
        p = self._owner(q)
        if p is None:
            return
        for ev in p.events.values():
            if ev.event_type == U.KFD_IOC_EVENT_MEMORY and fault is not None:
                ev.fault, ev.fault_gpu = fault, node.gpu_id
                self.signal_event(ev)
            elif ev.event_type == U.KFD_IOC_EVENT_HW_EXCEPTION and fault is None:
                self.signal_event(ev)
