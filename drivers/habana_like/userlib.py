"""A tiny user-space runtime for habana_like (what hl-thunk is to habanalabs).

Wraps the ioctls of one open habana_like file in an :class:`accelcore.Process`
so tests, demos and docs read like a user program::

    hl = HlkClient(proc, proc.open("/dev/accel/accel0"))
    handle = hl.mem_alloc(1 << 20)
    va = hl.map_device(handle)
    seq = hl.submit([(hl.cb_with(packets), HLK.HLK_QUEUE_ID_DMA_0)])
    hl.wait(seq)

Every method raises the ioctl's :class:`~accelcore.AccelError` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from accelcore import CORE, Mapping, Process, UserBuffer

from .uapi import HLK

__all__ = ["CbInfo", "HlkClient"]


@dataclass(frozen=True, slots=True)
class CbInfo:
    """A created command buffer: its handle, mmap offset and size."""

    handle: int
    mmap_offset: int
    size: int


class HlkClient:
    """The habana_like ioctls on descriptor ``fd`` of process ``proc``."""

    def __init__(self, proc: Process, fd: int) -> None:
        self.proc = proc
        self.fd = fd
        self._maps: list[Mapping] = []
        self._scratch: UserBuffer | None = None

    def _scratch_of(self, size: int) -> UserBuffer:
        """User memory for chunk arrays and INFO answers, reused across calls (a
        memfd, mapping and address-space entry per call cost more than the ioctl)."""
        if self._scratch is None or len(self._scratch) < size:
            if self._scratch is not None:
                self.proc.free(self._scratch)
            self._scratch = self.proc.alloc(max(size, 4096))
        return self._scratch

    # -- INFO ---------------------------------------------------------------------
    def info(self, op: int, ctype: str | None = None, size: int = 0) -> Any:
        """Ask INFO query ``op``; a ``ctype`` answer is decoded, else raw bytes."""
        size = HLK.sizeof(ctype) if ctype is not None else size
        buf = self._scratch_of(size)
        args = CORE.new("struct accel_info", op=op, return_pointer=buf.addr, return_size=size)
        self.proc.ioctl(self.fd, CORE.ACCEL_IOCTL_INFO, args)
        data = bytes(buf.view[:size])
        return HLK.from_bytes(ctype, data) if ctype is not None else data

    # -- CB -----------------------------------------------------------------------
    def cb_create(self, size: int) -> CbInfo:
        a = HLK.new("union hlk_cb_args")
        a.input.op, a.input.cb_size = HLK.HLK_CB_OP_CREATE, size
        self.proc.ioctl(self.fd, HLK.DRM_IOCTL_HLK_CB, a)
        return CbInfo(a.output.cb_handle, a.output.mmap_offset, a.output.size)

    def cb_destroy(self, handle: int) -> None:
        a = HLK.new("union hlk_cb_args")
        a.input.op, a.input.cb_handle = HLK.HLK_CB_OP_DESTROY, handle
        self.proc.ioctl(self.fd, HLK.DRM_IOCTL_HLK_CB, a)

    def cb_write(self, cb: CbInfo, data: bytes) -> None:
        """Fill a CB through a CPU mapping (mmap, write, munmap)."""
        m = self.proc.mmap(self.fd, cb.size, cb.mmap_offset)
        try:
            m.view[: len(data)] = data
        finally:
            self.proc.munmap(m)

    def cb_with(self, data: bytes) -> tuple[CbInfo, int]:
        """A new CB holding ``data``; returns it with the size to execute."""
        cb = self.cb_create(max(len(data), 8))
        self.cb_write(cb, data)
        return cb, len(data)

    # -- CS -----------------------------------------------------------------------
    def submit(
        self, chunks: Sequence[tuple[tuple[CbInfo, int], int]], flags: int = 0, timeout_ms: int = 0
    ) -> int:
        """Submit ``((cb, size), queue)`` chunks; returns the sequence number."""
        raw = b"".join(
            HLK.to_bytes(
                HLK.new("struct hlk_cs_chunk", cb_handle=cb.handle, queue_index=queue, cb_size=size)
            )
            for (cb, size), queue in chunks
        )
        arr = self._scratch_of(len(raw))
        arr.view[: len(raw)] = raw
        a = HLK.new("union hlk_cs_args")
        a.input.chunks_execute, a.input.num_chunks_execute = arr.addr, len(chunks)
        a.input.cs_flags, a.input.timeout_ms = flags, timeout_ms
        self.proc.ioctl(self.fd, HLK.DRM_IOCTL_HLK_CS, a)
        return int(a.output.seq)

    def wait(self, seq: int, timeout_us: int = 10_000_000) -> int:
        """WAIT_CS; returns the status (raises on ABORTED/TIMEDOUT)."""
        return int(self.wait_args(seq, timeout_us).output.status)

    def wait_args(self, seq: int, timeout_us: int = 10_000_000) -> Any:
        """WAIT_CS returning the whole argument union."""
        a = HLK.new("union hlk_wait_cs_args")
        a.input.seq, a.input.timeout_us = seq, timeout_us
        self.proc.ioctl(self.fd, HLK.DRM_IOCTL_HLK_WAIT_CS, a)
        return a

    # -- MEMORY -------------------------------------------------------------------
    def memory(self, op: int, flags: int = 0, **fields: Any) -> Any:
        """One MEMORY op; ``fields`` go into the op's member (``alloc`` …)."""
        a = HLK.new("union hlk_mem_args")
        a.input.op, a.input.flags = op, flags
        member = {
            HLK.HLK_MEM_OP_ALLOC: "alloc",
            HLK.HLK_MEM_OP_FREE: "free",
            HLK.HLK_MEM_OP_UNMAP: "unmap",
            HLK.HLK_MEM_OP_EXPORT_DMABUF_FD: "export_dmabuf_fd",
        }.get(op)
        if op == HLK.HLK_MEM_OP_MAP:
            member = "map_host" if flags & HLK.HLK_MEM_USERPTR else "map_device"
        target = getattr(a.input.args, member) if member else None
        for key, value in fields.items():
            setattr(target, key, value)
        self.proc.ioctl(self.fd, HLK.DRM_IOCTL_HLK_MEMORY, a)
        return a.output

    def mem_alloc(self, size: int) -> int:
        return int(self.memory(HLK.HLK_MEM_OP_ALLOC, mem_size=size).handle)

    def mem_free(self, handle: int) -> None:
        self.memory(HLK.HLK_MEM_OP_FREE, handle=handle)

    def map_device(self, handle: int, hint: int = 0) -> int:
        return int(self.memory(HLK.HLK_MEM_OP_MAP, handle=handle, hint_addr=hint).device_virt_addr)

    def map_host(self, addr: int, size: int) -> int:
        return int(
            self.memory(
                HLK.HLK_MEM_OP_MAP, HLK.HLK_MEM_USERPTR, host_virt_addr=addr, mem_size=size
            ).device_virt_addr
        )

    def unmap(self, va: int) -> None:
        self.memory(HLK.HLK_MEM_OP_UNMAP, device_virt_addr=va)

    def export(
        self, va: int, size: int, offset: int = 0, flags: int = CORE.DRM_CLOEXEC | CORE.DRM_RDWR
    ) -> int:
        return int(
            self.memory(
                HLK.HLK_MEM_OP_EXPORT_DMABUF_FD, flags, addr=va, mem_size=size, offset=offset
            ).fd
        )
