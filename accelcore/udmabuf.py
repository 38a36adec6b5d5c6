"""udmabuf: a dma-buf made from a user's memfd (seed 003).

Jerome Glisse's answer to WarpDrive (seed 003): wrap process memory in a dma-buf
so any device can use it, with the file's lifetime rules doing the cleanup. The
``/dev/udmabuf`` node takes ``UDMABUF_CREATE`` with a memfd, an offset and a size,
and returns a dma-buf fd over those very pages (shared, not copied).

Rules, as ``drivers/dma-buf/udmabuf.c``: offset and size page-aligned and size in
(0, 64 MiB] (``EINVAL``); the fd must be a memfd (``EBADFD``); the memfd must be
sealed against shrinking and not against writing (``EINVAL``); flags only
``UDMABUF_FLAGS_CLOEXEC`` (``EINVAL``).
"""

from __future__ import annotations

import errno
import fcntl
from typing import TYPE_CHECKING

from .dmabuf import DmaBuf, DmaBufOps, DmaBufRegistry
from .errors import InvalidArgument, NotTTY, error_for_errno
from .memory import PAGE_SIZE, SharedMemory
from .uapi import CORE
from .vfs import Mapping, OpenFile

if TYPE_CHECKING:
    from .task import Task

__all__ = ["UDMABUF_SIZE_LIMIT", "MemfdFile", "UdmabufFile", "UdmabufOps"]

#: ``size_limit_mb`` module parameter default: 64 MiB.
UDMABUF_SIZE_LIMIT = 64 << 20


class MemfdFile(OpenFile):
    """A memfd as a file of the task (the in-process stand-in for ``memfd_create``).

    Args:
        memory: The memfd and its mapping (closed when the file is released).
    """

    kind = "memfd"

    def __init__(self, memory: SharedMemory) -> None:
        super().__init__()
        self.memory = memory

    @property
    def seals(self) -> int:
        """``F_GET_SEALS`` of the real memfd."""
        return fcntl.fcntl(self.memory.fd, fcntl.F_GET_SEALS)

    def add_seals(self, seals: int) -> None:
        """``F_ADD_SEALS`` on the real memfd."""
        fcntl.fcntl(self.memory.fd, fcntl.F_ADD_SEALS, seals)

    def mmap(self, task: Task, offset: int, length: int, writable: bool) -> Mapping:
        if length <= 0 or offset < 0 or offset + length > self.memory.size:
            raise InvalidArgument(
                f"mmap of [{offset:#x}, {offset + length:#x}) is outside "
                f"memfd of {self.memory.size:#x} bytes"
            )
        return Mapping(self, self.memory.view(offset, length), offset, writable)

    def release(self) -> None:
        self.memory.close()


class UdmabufOps(DmaBufOps):
    """Exporter ops of a udmabuf: the memfd's pages, pinned by a file reference."""

    name = "udmabuf"

    def __init__(self, memfd: MemfdFile) -> None:
        self.memfd = memfd
        self._cpu_access = 0

    def begin_cpu_access(self, dmabuf: DmaBuf, write: bool) -> None:
        self._cpu_access += 1

    def end_cpu_access(self, dmabuf: DmaBuf, write: bool) -> None:
        if not self._cpu_access:
            raise InvalidArgument("DMA_BUF_SYNC_END without a matching start on a udmabuf")
        self._cpu_access -= 1

    def release(self, dmabuf: DmaBuf) -> None:
        self.memfd.put()


class UdmabufFile(OpenFile):
    """An open of ``/dev/udmabuf``."""

    kind = "udmabuf"

    def __init__(self, registry: DmaBufRegistry) -> None:
        super().__init__()
        self.registry = registry

    def ioctl(self, task: Task, cmd: int, argp: int) -> int:
        if cmd != CORE.UDMABUF_CREATE:
            raise NotTTY(f"udmabuf has no ioctl {cmd:#010x}")
        a = CORE.from_bytes(
            "struct udmabuf_create",
            task.mm.copy_from_user(argp, CORE.sizeof("struct udmabuf_create")),
        )
        if a.flags & ~CORE.UDMABUF_FLAGS_CLOEXEC:
            raise InvalidArgument(f"udmabuf flags {a.flags:#x} has unknown bits")
        if a.offset % PAGE_SIZE or a.size % PAGE_SIZE:
            raise InvalidArgument(
                f"udmabuf offset {a.offset:#x} and size {a.size:#x} must be page-aligned"
            )
        if not 0 < a.size <= UDMABUF_SIZE_LIMIT:
            raise InvalidArgument(
                f"udmabuf size {a.size:#x} must be in (0, {UDMABUF_SIZE_LIMIT:#x}]"
            )
        memfd = task.files.get(a.memfd)
        if not isinstance(memfd, MemfdFile):
            raise error_for_errno(errno.EBADFD, f"fd {a.memfd} is a {memfd.kind}, not a memfd")
        seals = memfd.seals
        if not seals & fcntl.F_SEAL_SHRINK:
            raise InvalidArgument(f"memfd {a.memfd} is not sealed with F_SEAL_SHRINK")
        if seals & fcntl.F_SEAL_WRITE:
            raise InvalidArgument(f"memfd {a.memfd} is sealed with F_SEAL_WRITE")
        if a.offset + a.size > memfd.memory.size:
            raise InvalidArgument(
                f"udmabuf [{a.offset:#x}, {a.offset + a.size:#x}) is past the end of memfd "
                f"{a.memfd} ({memfd.memory.size:#x} bytes)"
            )
        ops = UdmabufOps(memfd)
        buf = DmaBuf(
            ops,
            memfd.memory,
            a.offset,
            a.size,
            exporter="udmabuf",
            registry=self.registry,
            flags=0o2,
        )
        memfd.get()  # the pages stay pinned for the buffer's life
        try:
            return task.files.install(buf, cloexec=bool(a.flags & CORE.UDMABUF_FLAGS_CLOEXEC))
        except BaseException:
            buf.put()
            raise
