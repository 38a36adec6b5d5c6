"""Open file descriptions and CPU mappings: what a file descriptor points to.

An :class:`OpenFile` is the kernel's ``struct file``: reference counted, shared by
``dup``, ``fork`` and fd passing, released when the last reference goes. Device
files, dma-bufs, sync files and memfds are subclasses; each overrides the file
operations it supports. The defaults answer as the kernel does for a file without
that operation (``ENOTTY`` for ioctl, ``ENODEV`` for mmap, ``EINVAL`` for read).
"""

from __future__ import annotations

import itertools
import os
import select
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

from .errors import BadFd, InvalidArgument, NoDevice, NotTTY, PermissionDenied

if TYPE_CHECKING:
    from .task import Task

__all__ = ["POLLERR", "POLLHUP", "POLLIN", "POLLOUT", "Mapping", "OpenFile", "Refcounted"]

POLLIN = select.POLLIN
POLLOUT = select.POLLOUT
POLLERR = select.POLLERR
POLLHUP = select.POLLHUP

_inode = itertools.count(1)


class Refcounted(Protocol):
    """What a mapping can hold: anything with ``get`` and ``put`` (a buffer object,
    a device-memory block, a command buffer)."""

    def get(self) -> object: ...

    def put(self) -> None: ...


class Mapping:
    """A CPU mapping (``mmap``) of part of a file.

    ``view`` is the mapped memory. After the mapping is zapped (the device was
    unplugged, or the buffer revoked) ``view`` is a private zero-filled page
    range: accesses keep working with undefined contents and never fault, as
    ``Documentation/gpu/drm-uapi.rst`` asks of hot-unplug.

    A mapping holds what it maps (``drm_gem_vm_open``/``vm_close``): a
    reference on the file and one on ``holds``, the object that owns the pages,
    so freeing the object's handle while the mapping lives never returns its
    pages to an allocator; both are dropped at :meth:`unmap`. ``object_view`` is
    the whole of that object's bytes, the most the mapping may ever reach: a
    transport that shares the mapping with another process passes exactly
    those pages and nothing around them.

    Args:
        file: The file mapped (a reference is held until :meth:`unmap`).
        view: The memory.
        offset: The offset in the file.
        writable: Whether ``PROT_WRITE`` was asked for (a shared mapping).
        holds: The object that owns the pages; a reference is held until
            :meth:`unmap`.
        object_view: All of the owning object's bytes (default: ``view``).

    Raises:
        PermissionDenied: ``writable`` and the file was not opened for writing
            (``EACCES``, as ``do_mmap`` for ``MAP_SHARED|PROT_WRITE``).
    """

    def __init__(
        self,
        file: OpenFile,
        view: memoryview,
        offset: int,
        writable: bool,
        *,
        holds: Refcounted | None = None,
        object_view: memoryview | None = None,
    ) -> None:
        file.check_mmap_access(writable)
        self.file = file.get()
        self.length = len(view)
        self.offset = offset
        self.writable = writable
        self._view: memoryview | None = view if writable else view.toreadonly()
        whole = view if object_view is None else object_view
        self._object_view: memoryview | None = whole if writable else whole.toreadonly()
        self.zapped = False
        self._on_unmap: list[Callable[[Mapping], None]] = []
        self._holds = holds
        if holds is not None:
            holds.get()

    @property
    def view(self) -> memoryview:
        """The mapped bytes (zero-filled after a zap)."""
        if self._view is None:
            raise BadFd("mapping was unmapped")
        return self._view

    @property
    def object_view(self) -> memoryview | None:
        """All the bytes of the object that owns the mapped pages (``None`` once
        zapped or unmapped: then there is nothing left to share)."""
        return self._object_view

    @property
    def holds(self) -> Refcounted | None:
        """The object the mapping keeps alive."""
        return self._holds

    def on_unmap(self, callback: Callable[[Mapping], None]) -> None:
        """Run ``callback`` when the mapping goes (for per-file accounting)."""
        self._on_unmap.append(callback)

    def zap(self) -> None:
        """Tear the mapping down: further accesses see zeros."""
        if self._view is None or self.zapped:
            return
        self._view.release()
        self._release_object_view()
        self._view = memoryview(bytearray(self.length))
        self.zapped = True

    def _release_object_view(self) -> None:
        if self._object_view is not None:
            self._object_view.release()
            self._object_view = None

    def unmap(self) -> None:
        """``munmap``: drop the mapping, its reference on the object it maps, then
        the one on the file (``vm_close``, then ``fput``). Idempotent."""
        if self._view is None:
            return
        self._view.release()
        self._release_object_view()
        self._view = None
        for cb in self._on_unmap:
            cb(self)
        self._on_unmap.clear()
        holds, self._holds = self._holds, None
        try:
            if holds is not None:
                holds.put()
        finally:
            self.file.put()

    @property
    def mapped(self) -> bool:
        return self._view is not None


class OpenFile:
    """Base of every open file description.

    Subclasses override :meth:`release` (called once, at the last
    :meth:`put`) and the file operations they support.
    """

    #: Short name of the kind of file, for listings (``accel``, ``dmabuf``…).
    kind: ClassVar[str] = "file"

    def __init__(self, *, flags: int = 0) -> None:
        self.flags = flags
        self.inode = next(_inode)
        self._refs = 1
        self.released = False

    @property
    def refcount(self) -> int:
        """References held (fds in every task, mappings, kernel users)."""
        return self._refs

    @property
    def writable(self) -> bool:
        """Whether the file was opened for writing (``FMODE_WRITE``: ``O_WRONLY``
        or ``O_RDWR`` in ``flags``)."""
        return (self.flags & os.O_ACCMODE) != os.O_RDONLY

    def check_mmap_access(self, writable: bool) -> None:
        """What ``do_mmap`` checks of the file before its ``mmap`` op runs.

        Raises:
            PermissionDenied: a writable shared mapping of a file not opened
                for writing (``EACCES``): a dma-buf exported without
                ``DRM_RDWR``, a descriptor opened ``O_RDONLY``.
        """
        if writable and not self.writable:
            raise PermissionDenied(
                f"{self.kind} file {self.inode} is not open for writing "
                f"(flags {self.flags:#o}): no writable shared mapping"
            )

    def get(self) -> OpenFile:
        """Take a reference (``get_file``)."""
        if self.released:
            raise BadFd(f"{self.kind} file {self.inode} is already released")
        self._refs += 1
        return self

    def put(self) -> None:
        """Drop a reference (``fput``); the last one releases the file."""
        if self._refs <= 0:
            raise InvalidArgument(f"{self.kind} file {self.inode}: reference count underflow")
        self._refs -= 1
        if self._refs == 0:
            self.released = True
            self.release()

    # -- file operations -------------------------------------------------------
    def release(self) -> None:
        """Free what the file holds. Called once, at the last reference."""

    def ioctl(self, task: Task, cmd: int, argp: int) -> int:
        """Handle an ioctl whose argument is at user address ``argp``."""
        raise NotTTY(f"{self.kind} file has no ioctl {cmd:#010x}")

    def mmap(self, task: Task, offset: int, length: int, writable: bool) -> Mapping:
        """Map ``length`` bytes at file ``offset``."""
        raise NoDevice(f"{self.kind} file cannot be mapped")

    def read(self, task: Task, size: int, *, nonblock: bool = False) -> bytes:
        """Read up to ``size`` bytes."""
        raise InvalidArgument(f"{self.kind} file cannot be read")

    def poll(self) -> int:
        """The ready mask (``POLLIN``, ``POLLOUT``…) right now."""
        return 0

    def fdinfo(self) -> dict[str, str]:
        """Lines for ``/proc/PID/fdinfo/FD``."""
        return {"flags": f"{self.flags:o}", "ino": str(self.inode)}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} ino={self.inode} refs={self._refs}>"
