"""udmabuf: a dma-buf made from a user's memfd (seed 003).

Jerome Glisse's answer to WarpDrive (seed 003): wrap process memory in a dma-buf
so any device can use it, with the file's lifetime rules doing the cleanup. The
``/dev/udmabuf`` node takes ``UDMABUF_CREATE`` with a memfd, an offset and a size,
and returns a dma-buf fd over those very pages (shared, not copied).

Rules, as ``drivers/dma-buf/udmabuf.c``: offset and size page-aligned and size in
(0, 64 MiB] (``EINVAL``); the fd must be a memfd (``EBADFD``); the memfd must be
sealed with ``F_SEAL_SHRINK`` and with neither ``F_SEAL_WRITE`` nor
``F_SEAL_FUTURE_WRITE`` (``EINVAL``: a dma-buf lets devices write the pages, which
a write seal forbids; ``SEALS_DENIED`` is both since the December 2024 stable fix
"udmabuf: also check for F_SEAL_FUTURE_WRITE"); flags only
``UDMABUF_FLAGS_CLOEXEC`` (``EINVAL``).

:class:`MemfdFile`, the in-process stand-in for a memfd, keeps the seal rules of
``mm/memfd.c`` on its own ``mmap`` and ``F_ADD_SEALS``: a writable shared mapping
of a memfd sealed with ``F_SEAL_WRITE`` or ``F_SEAL_FUTURE_WRITE`` is ``EPERM``;
adding ``F_SEAL_WRITE`` while a writable shared mapping exists is ``EBUSY``; any
seal after ``F_SEAL_SEAL`` is ``EPERM``.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import TYPE_CHECKING

from .dmabuf import DmaBuf, DmaBufOps, DmaBufRegistry
from .errors import BadFd, Busy, InvalidArgument, NotPermitted, error_for_errno
from .ioctl import FileIoctlCall, IoctlTableFile, ioctl_table
from .memory import PAGE_SIZE, SharedMemory
from .uapi import CORE
from .vfs import Mapping, OpenFile

if TYPE_CHECKING:
    from .clock import Clock
    from .task import Task

__all__ = [
    "F_SEAL_FUTURE_WRITE",
    "UDMABUF_SIZE_LIMIT",
    "WRITE_SEALS",
    "MemfdFile",
    "UdmabufFile",
    "UdmabufOps",
]

#: ``size_limit_mb`` module parameter default: 64 MiB.
UDMABUF_SIZE_LIMIT = 64 << 20

#: ``F_SEAL_FUTURE_WRITE`` (Linux 5.1; not in Python's :mod:`fcntl` before 3.12).
F_SEAL_FUTURE_WRITE = 0x0010
#: The seals that forbid writing through new shared mappings.
WRITE_SEALS = fcntl.F_SEAL_WRITE | F_SEAL_FUTURE_WRITE


class MemfdFile(OpenFile):
    """A memfd as a file of the task (the in-process stand-in for ``memfd_create``).

    Its seals are the real memfd's, except ``F_SEAL_WRITE``: the stand-in's own
    writable mapping of the memfd (how the engine reaches the pages) would make
    the kernel refuse that seal, so this file records it itself and enforces it
    as ``mm/memfd.c`` does.

    Args:
        memory: The memfd and its mapping (closed when the file is released).
        flags: Open flags; a memfd is ``O_RDWR``.
    """

    kind = "memfd"

    def __init__(self, memory: SharedMemory, *, flags: int = os.O_RDWR) -> None:
        super().__init__(flags=flags)
        self.memory = memory
        self._write_sealed = False
        self._writable_maps = 0

    @property
    def seals(self) -> int:
        """``F_GET_SEALS``."""
        real = fcntl.fcntl(self.memory.fd, fcntl.F_GET_SEALS)
        return real | (fcntl.F_SEAL_WRITE if self._write_sealed else 0)

    def add_seals(self, seals: int) -> None:
        """``F_ADD_SEALS``.

        Raises:
            NotPermitted: the memfd is sealed with ``F_SEAL_SEAL`` (``EPERM``).
            Busy: ``F_SEAL_WRITE`` while a writable shared mapping exists (``EBUSY``).
            InvalidArgument: unknown seal bits.
        """
        known = (
            fcntl.F_SEAL_SEAL
            | fcntl.F_SEAL_SHRINK
            | fcntl.F_SEAL_GROW
            | fcntl.F_SEAL_WRITE
            | F_SEAL_FUTURE_WRITE
        )
        if seals & ~known:
            raise InvalidArgument(f"seals {seals:#x} have unknown bits")
        if self.seals & fcntl.F_SEAL_SEAL:
            raise NotPermitted(f"memfd {self.inode} is sealed with F_SEAL_SEAL")
        if seals & fcntl.F_SEAL_WRITE and self._writable_maps:
            raise Busy(
                f"memfd {self.inode} has {self._writable_maps} writable shared "
                "mapping(s); F_SEAL_WRITE needs none"
            )
        real = seals & ~fcntl.F_SEAL_WRITE
        if real:
            try:
                fcntl.fcntl(self.memory.fd, fcntl.F_ADD_SEALS, real)
            except OSError as exc:
                raise error_for_errno(
                    exc.errno or errno.EINVAL, f"memfd {self.inode}: {exc.strerror}"
                ) from None
        if seals & fcntl.F_SEAL_WRITE:
            self._write_sealed = True

    def mmap(self, task: Task, offset: int, length: int, writable: bool) -> Mapping:
        """Map ``[offset, offset+length)`` of the memfd.

        Raises:
            PermissionDenied: ``writable`` and the file is not open for writing (``EACCES``).
            NotPermitted: ``writable`` and the memfd is write-sealed (``EPERM``).
            InvalidArgument: the range is outside the memfd.
        """
        self.check_mmap_access(writable)
        if writable and self.seals & WRITE_SEALS:
            raise NotPermitted(
                f"memfd {self.inode} is sealed against writing (seals {self.seals:#x}); "
                "no writable shared mapping"
            )
        if length <= 0 or offset < 0 or offset + length > self.memory.size:
            raise InvalidArgument(
                f"mmap of [{offset:#x}, {offset + length:#x}) is outside "
                f"memfd of {self.memory.size:#x} bytes"
            )
        m = Mapping(
            self,
            self.memory.view(offset, length),
            offset,
            writable,
            object_view=self.memory.view(),
        )
        if writable:
            self._writable_maps += 1
            m.on_unmap(self._writable_unmapped)
        return m

    def _writable_unmapped(self, _m: Mapping) -> None:
        self._writable_maps -= 1

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


class UdmabufFile(IoctlTableFile, OpenFile):
    """An open of ``/dev/udmabuf``; its one ioctl, ``UDMABUF_CREATE``, runs from
    :attr:`IOCTLS` through :func:`accelcore.ioctl.run_ioctl`."""

    kind = "udmabuf"

    def __init__(self, registry: DmaBufRegistry) -> None:
        super().__init__()
        self.registry = registry

    def ioctl_clock(self) -> Clock:
        if self.registry.fence_context is None:
            raise BadFd("no clock for udmabuf ioctls")
        return self.registry.fence_context.clock

    def ioctl_oops(self, where: str, exc: BaseException) -> str:
        return self.registry.oops(where, exc, "udmabuf")


def _create(call: FileIoctlCall) -> int:
    """``UDMABUF_CREATE``: a dma-buf over the memfd's pages; returns its fd."""
    node: UdmabufFile = call.file  # type: ignore[assignment]
    a = call.args
    if a.flags & ~CORE.UDMABUF_FLAGS_CLOEXEC:
        raise InvalidArgument(f"udmabuf flags {a.flags:#x} has unknown bits")
    if a.offset % PAGE_SIZE or a.size % PAGE_SIZE:
        raise InvalidArgument(
            f"udmabuf offset {a.offset:#x} and size {a.size:#x} must be page-aligned"
        )
    if not 0 < a.size <= UDMABUF_SIZE_LIMIT:
        raise InvalidArgument(f"udmabuf size {a.size:#x} must be in (0, {UDMABUF_SIZE_LIMIT:#x}]")
    memfd = call.get_file(a.memfd)
    if not isinstance(memfd, MemfdFile):
        raise error_for_errno(
            errno.EBADFD, f"fd {a.memfd} is not a memfd (its file is of kind {memfd.kind!r})"
        )
    seals = memfd.seals
    if not seals & fcntl.F_SEAL_SHRINK:
        raise InvalidArgument(f"memfd {a.memfd} is not sealed with F_SEAL_SHRINK")
    if seals & WRITE_SEALS:
        raise InvalidArgument(
            f"memfd {a.memfd} is sealed against writing (seals {seals:#x}: "
            "F_SEAL_WRITE or F_SEAL_FUTURE_WRITE)"
        )
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
        registry=node.registry,
        flags=0o2,
    )
    memfd.get()  # the pages stay pinned for the buffer's life
    try:
        return call.install_fd(buf, cloexec=bool(a.flags & CORE.UDMABUF_FLAGS_CLOEXEC))
    except BaseException:
        buf.put()
        raise


UdmabufFile.IOCTLS = ioctl_table(CORE, [("UDMABUF_CREATE", _create)])
