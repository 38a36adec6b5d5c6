"""A minimal user-space thunk for kfd_like (what libhsakmt does), for tests and demos.

:class:`Kfd` is a program's view of ``/dev/kfd``: acquire a VM on every GPU,
allocate and map memory, create user-mode queues and events, and submit
dispatch packets by writing the ring and ringing the doorbell (no ioctl).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping as MappingOf
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from accelcore import Interrupted, Machine, Mapping, Process, UserBuffer

from .abi import KFD_UAPI
from .driver import KfdLikeDriver

U = KFD_UAPI
RW = U.KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE
VRAM = U.KFD_IOC_ALLOC_MEM_FLAGS_VRAM | RW
GTT = U.KFD_IOC_ALLOC_MEM_FLAGS_GTT | RW
PAGE = 4096


def make_machine(*pt_update_ns: int) -> Machine:
    """A virtual-time machine with one kfd_like GPU per ``pt_update_ns`` value."""
    pci = [{"model": "kfd_like", "options": {"pt_update_ns": ns}} for ns in pt_update_ns]
    return Machine.from_description({"machine": {"drivers": ["kfd_like"]}, "pci": pci})


def driver_of(m: Machine) -> KfdLikeDriver:
    """The machine's kfd_like driver."""
    drv = m.subsystem.drivers["kfd_like"]
    assert isinstance(drv, KfdLikeDriver)
    return drv


@dataclass
class Queue:
    """A user-mode queue as the program sees it."""

    queue_id: int
    ring: UserBuffer
    rptr: UserBuffer
    wptr: UserBuffer
    doorbell: Mapping
    slot: int
    write_index: int = 0

    def submit(self, kernel: int, args: Sequence[int], event: int = 0, signal: int = 0) -> None:
        """Write a dispatch packet and ring the doorbell (no ioctl)."""
        pkt = U.new(
            "struct kfd_like_dispatch_packet",
            header=U.KFD_LIKE_PACKET_KERNEL_DISPATCH,
            kernel=kernel,
            completion_event=event,
            args=list(args),
            completion_signal=signal,
        )
        slots = len(self.ring) // 64
        off = (self.write_index % slots) * 64
        self.ring.view[off : off + 64] = U.to_bytes(pkt)
        self.write_index += 1
        self.wptr.view[:8] = self.write_index.to_bytes(8, "little")
        self.doorbell.view[self.slot : self.slot + 8] = self.write_index.to_bytes(8, "little")

    @property
    def read_index(self) -> int:
        return int.from_bytes(self.rptr.view[:8], "little")


class Kfd:
    """A user program using /dev/kfd (what libhsakmt does, minimally).

    Args:
        m: The machine, when the program runs in its interpreter: the GPUs are
            the driver's. ``None`` for a program in another process (a client of
            the devfs server), which names its GPUs with ``gpus``.
        proc: The process (default: a new in-process :class:`~accelcore.Process`);
            a :class:`~accelcore.server.client.ClientProcess` works the same.
        gpus: ``gpu_id`` → the GPU's accel node, instead of asking the driver.
    """

    def __init__(
        self, m: Machine | None, proc: Any = None, gpus: MappingOf[int, str] | None = None
    ) -> None:
        self.m = m
        if m is not None:
            self.drv = driver_of(m)
        if gpus is None:
            if m is None:
                raise ValueError("Kfd needs the machine or the GPUs' nodes")
            gpus = {gid: gpu.dev.node_path for gid, gpu in self.drv.gpus.items()}
        if proc is None:
            if m is None:
                raise ValueError("Kfd needs a process when it has no machine")
            proc = Process(m.subsystem)
        self.p: Process = proc
        self.fd = self._open_kfd()
        self.nodes: dict[int, str] = dict(gpus)
        self.gpu_ids = list(self.nodes)
        self.accel_fds: dict[int, int] = {}
        self.mappings: list[Mapping] = []
        self.buffers: list[UserBuffer] = []
        self.queues: list[Queue] = []

    def _open_kfd(self) -> int:
        # hsaKmtOpenKFD: an open interrupted by a signal is simply tried again.
        while True:
            try:
                return self.p.open("/dev/kfd")
            except Interrupted:
                continue

    def ioctl(self, name: str, **fields: Any) -> Any:
        arg_type = U.ioctls[name].arg_type
        assert arg_type is not None
        args = U.new(arg_type, **fields)
        self.p.ioctl(self.fd, getattr(U, name), args)
        return args

    def acquire_all(self) -> None:
        for gid in self.gpu_ids:
            afd = self.p.open(self.nodes[gid])
            self.accel_fds[gid] = afd
            self.ioctl("DRM_IOCTL_KFD_ACQUIRE_VM", drm_fd=afd, gpu_id=gid)

    def alloc_user(self, size: int) -> UserBuffer:
        buf = self.p.alloc(size)
        self.buffers.append(buf)
        return buf

    def alloc(self, gid: int, size: int, va: int, flags: int = VRAM, mmap_offset: int = 0) -> Any:
        return self.ioctl(
            "DRM_IOCTL_KFD_ALLOC_MEMORY_OF_GPU",
            gpu_id=gid,
            size=size,
            va_addr=va,
            flags=flags,
            mmap_offset=mmap_offset,
        )

    def cpu_map(self, gid: int, alloc_args: Any, size: int) -> memoryview:
        m = self.p.mmap(self.accel_fds[gid], size, alloc_args.mmap_offset)
        self.mappings.append(m)
        return m.view

    def id_array(self, ids: Sequence[int]) -> UserBuffer:
        buf = self.alloc_user(max(4, 4 * len(ids)))
        buf.view[: 4 * len(ids)] = struct.pack(f"<{len(ids)}I", *ids)
        return buf

    def map_args(
        self, handle: int, ids: Sequence[int], n_success: int = 0, unmap: bool = False
    ) -> Any:
        arr = self.id_array(ids)
        name = (
            "struct kfd_ioctl_unmap_memory_from_gpu_args"
            if unmap
            else "struct kfd_ioctl_map_memory_to_gpu_args"
        )
        return U.new(
            name,
            handle=handle,
            device_ids_array_ptr=arr.addr,
            n_devices=len(ids),
            n_success=n_success,
        )

    def map(self, args: Any, unmap: bool = False) -> Any:
        cmd = U.DRM_IOCTL_KFD_UNMAP_MEMORY_FROM_GPU if unmap else U.DRM_IOCTL_KFD_MAP_MEMORY_TO_GPU
        self.p.ioctl(self.fd, cmd, args)
        return args

    def create_queue(self, gid: int, ring_size: int = 1024) -> Queue:
        ring = self.alloc_user(ring_size)
        ring.view[:] = b"\x01\x00" * (ring_size // 2)  # headers INVALID
        rptr, wptr = self.alloc_user(8), self.alloc_user(8)
        a = self.ioctl(
            "DRM_IOCTL_KFD_CREATE_QUEUE",
            gpu_id=gid,
            ring_base_address=ring.addr,
            ring_size=ring_size,
            read_pointer_address=rptr.addr,
            write_pointer_address=wptr.addr,
            queue_type=U.KFD_IOC_QUEUE_TYPE_COMPUTE_AQL,
            queue_percentage=100,
        )
        page = a.doorbell_offset & ~(PAGE - 1)
        db = self.p.mmap(self.fd, PAGE, page)
        self.mappings.append(db)
        q = Queue(a.queue_id, ring, rptr, wptr, db, a.doorbell_offset & (PAGE - 1))
        self.queues.append(q)
        return q

    def create_event(self, event_type: int = 0, auto_reset: int = 1) -> int:
        a = self.ioctl("DRM_IOCTL_KFD_CREATE_EVENT", event_type=event_type, auto_reset=auto_reset)
        return int(a.event_id)

    def wait_args(self, event_ids: Sequence[int], timeout_ms: int, wait_all: int = 1) -> Any:
        size = U.sizeof("struct kfd_event_data")
        arr = self.alloc_user(size * len(event_ids))
        for i, eid in enumerate(event_ids):
            arr.view[i * size : (i + 1) * size] = U.to_bytes(
                U.new("struct kfd_event_data", event_id=eid)
            )
        return U.new(
            "struct kfd_ioctl_wait_events_args",
            events_ptr=arr.addr,
            num_events=len(event_ids),
            wait_for_all=wait_all,
            timeout=timeout_ms,
        )

    def wait(self, event_ids: Sequence[int], timeout_ms: int = 1000, wait_all: int = 1) -> int:
        a = self.wait_args(event_ids, timeout_ms, wait_all)
        self.p.ioctl(self.fd, U.DRM_IOCTL_KFD_WAIT_EVENTS, a)
        return int(a.wait_result)

    def close(self) -> None:
        """Unmap, close and exit: the process goes away entirely."""
        for m in self.mappings:
            self.p.munmap(m)
        self.mappings.clear()
        self.p.exit()  # closes every fd and frees the process's memory
        self.buffers.clear()
