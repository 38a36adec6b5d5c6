"""Buffer objects, per-file handle tables, and their dma-buf export (GEM-like).

A :class:`BufferObject` is device-visible memory with a reference count. User
space names it by a *handle*, private to one open file (:class:`HandleTable`);
``GEM_CLOSE`` drops a handle. ``PRIME_HANDLE_TO_FD`` exports a buffer object as a
:class:`~accelcore.dmabuf.DmaBuf` (with :class:`GemDmaBufOps`), and
``PRIME_FD_TO_HANDLE`` imports one: self-import returns the original object, and
one file gets one handle per buffer however often it imports it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .dmabuf import Attachment, DmaBuf, DmaBufOps, DmaMapping
from .driver import DriverFeature
from .errors import InvalidArgument, NoEntry, NoMemory, NotSupported, error_for_errno
from .fence import ReservationObject, usage_rw
from .memory import MAX_LFS_FILESIZE, MemoryBlock, SharedMemory, page_align
from .vfs import Mapping

if TYPE_CHECKING:
    from .device import AccelDevice
    from .dispatch import IoctlCall, IoctlCallBase
    from .vfs import OpenFile

__all__ = [
    "BufferObject",
    "GemDmaBufOps",
    "HandleTable",
    "dma_resv_wait",
    "gem_close_ioctl",
    "import_dmabuf",
    "wait_bo",
]

#: Fake mmap offsets of buffer objects start here (``DRM_FILE_PAGE_OFFSET_START``).
MMAP_OFFSET_START = 0x1_0000_0000


class BufferObject:
    """Device-visible memory, shared by handles, dma-bufs and kernel users.

    The object lives while anything holds it: handles, dma-bufs, kernel users
    and CPU mappings (:meth:`mmap` makes mappings that hold it, as
    ``drm_gem_vm_open``). Its memory is freed, and device memory returned to
    the allocator, only at the last reference.

    Args:
        device: The device the memory belongs to (a reference is held).
        size: Bytes; rounded up to whole pages.
        memory: Backing memory to use (an imported buffer); a new memfd is
            made when ``None`` and no ``block`` is given.
        offset: Where the object starts in ``memory``.
        region: The memory region it counts against (``system``, ``dram``…).
        name: A label for listings.
        on_free: Called when the last reference goes.
        import_attach: Set when the object wraps an imported dma-buf; the
            object then shares the dma-buf's reservation object.
        block: Device memory from :meth:`accelcore.memory.DeviceMemory.alloc`
            to back the object (its own memfd); the object takes over the
            caller's reference and drops it when freed.

    Raises:
        InvalidArgument: ``size`` is not positive or above
            :data:`~accelcore.memory.MAX_LFS_FILESIZE` (a ``__u64`` near 2**64),
            or the range is outside ``memory``.
        NoMemory: no memory could be made for ``size`` bytes.

    Attributes:
        size: Bytes, a whole number of pages.
        device: The :class:`~accelcore.device.AccelDevice` it belongs to.
        memory: The backing :class:`~accelcore.memory.SharedMemory`; the object
            is ``[offset, offset + size)`` of it.
        offset: Where the object starts in ``memory``.
        region: The memory region it counts against (``system``, ``dram``…).
        name: A label for listings.
        block: The device-memory block backing it, if any.
        resv: Its :class:`~accelcore.fence.ReservationObject` (``obj->resv``):
            the fences of the jobs that use it. Exporting the object shares this
            very object with the dma-buf, and importing a dma-buf shares the
            dma-buf's, so importers, ``poll``, ``EXPORT_SYNC_FILE`` and bufinfo
            see every job fence a driver adds (implicit sync).
        dma_buf: The dma-buf it is exported as, while one lives (export is
            cached: a second export returns the same dma-buf).
        import_attach: The attachment, for an object wrapping an imported dma-buf.
        mmap_offset: Its fake mmap offset once
            :meth:`AccelDevice.mmap_offset <accelcore.device.AccelDevice.mmap_offset>`
            assigned one, else ``None``.
        refcount: References (handles, dma-bufs, kernel users, CPU mappings).
        handle_count: Handles naming it, over all files.
        priv: Free for the driver's per-object state.
    """

    def __init__(
        self,
        device: AccelDevice,
        size: int,
        *,
        memory: SharedMemory | None = None,
        offset: int = 0,
        region: str = "system",
        name: str = "bo",
        on_free: Callable[[BufferObject], None] | None = None,
        import_attach: Attachment | None = None,
        block: MemoryBlock | None = None,
    ) -> None:
        if not 0 < size <= MAX_LFS_FILESIZE:
            raise InvalidArgument(f"buffer size {size:#x} must be in (0, {MAX_LFS_FILESIZE:#x}]")
        self.size = page_align(size)
        self.block = block
        if block is not None:
            memory = block.memory
        self._owns_memory = memory is None
        try:
            self.memory = memory if memory is not None else SharedMemory(self.size, name)
        except InvalidArgument as exc:  # page_align went past MAX_LFS_FILESIZE
            raise NoMemory(f"no memory for a {size:#x}-byte buffer: {exc.strerror}") from exc
        if offset < 0 or offset + self.size > self.memory.size:
            if self._owns_memory:
                self.memory.close()
            raise InvalidArgument(
                f"buffer [{offset:#x}, {offset + self.size:#x}) is outside its memory"
            )
        self.offset = offset
        self.device = device
        self.region = region
        self.name = name
        self.refcount = 1
        self.handle_count = 0
        self.dma_buf: DmaBuf | None = None
        self.import_attach = import_attach
        self.import_mapping: DmaMapping | None = None
        self.mmap_offset: int | None = None
        self.priv: Any = None
        self.resv = import_attach.dmabuf.resv if import_attach is not None else ReservationObject()
        self._on_free = on_free
        device.get()
        device.buffers.add(self)

    def view(self, offset: int = 0, length: int | None = None) -> memoryview:
        """A view of the object's bytes."""
        if length is None:
            length = self.size - offset
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InvalidArgument(
                f"range [{offset:#x}, {offset + length:#x}) is outside "
                f"buffer of {self.size:#x} bytes"
            )
        return self.memory.view(self.offset + offset, length)

    def mmap(self, file: OpenFile, offset: int, length: int, writable: bool) -> Mapping:
        """A CPU mapping of the first ``length`` bytes, through ``file`` at fake
        offset ``offset``; it holds a reference on the object until unmapped
        (``drm_gem_mmap_obj``).

        Raises:
            InvalidArgument: ``length`` is not in ``(0, size]``.
            PermissionDenied: ``writable`` and ``file`` is not open for writing.
        """
        if length <= 0 or length > self.size:
            raise InvalidArgument(
                f"mmap length {length:#x} does not fit buffer {self.name} of {self.size:#x} bytes"
            )
        return Mapping(
            file, self.view(0, length), offset, writable, holds=self, object_view=self.view()
        )

    def get(self) -> BufferObject:
        """Take a reference."""
        self.refcount += 1
        return self

    def put(self) -> None:
        """Drop a reference; the last one frees the object."""
        self.refcount -= 1
        if self.refcount == 0:
            self._free()

    def _free(self) -> None:
        if self.import_attach is not None:
            att, self.import_attach = self.import_attach, None
            if self.import_mapping is not None:
                att.dmabuf.unmap_attachment(self.import_mapping)
            att.dmabuf.detach(att)
        if self._on_free is not None:
            self._on_free(self)
        if self._owns_memory:
            self.memory.close()
        if self.block is not None:
            block, self.block = self.block, None
            block.put()
        if self.mmap_offset is not None:
            self.device.mmap_offsets.pop(self.mmap_offset, None)
        self.device.buffers.discard(self)
        self.device.put()

    def __repr__(self) -> str:
        return f"<BufferObject {self.name} size={self.size:#x} refs={self.refcount}>"


def wait_bo(
    call: IoctlCallBase,
    bo: BufferObject,
    *,
    wait_all: bool,
    timeout_ns: int | None = None,
    deadline: int | None = None,
) -> None:
    """Wait for a buffer's fences from an ioctl handler (the wait of
    ``drm_gem_dma_resv_wait``): an interruptible, restartable wait point.

    Args:
        call: The ioctl call (declared with ``waits=True``).
        bo: The buffer object.
        wait_all: Wait for readers too (``KERNEL``, ``WRITE`` and ``READ``
            fences), as before writing; ``False`` waits for writers only
            (``KERNEL`` and ``WRITE``), as before reading. ``BOOKKEEP`` never.
        timeout_ns: Relative timeout; ``0`` tests without waiting; ``None``
            (and no ``deadline``) waits forever.
        deadline: Absolute device time instead: a restarted call that passes
            the same deadline does not start its timeout over.

    Raises:
        AccelError: ``ETIME`` when the fences are still busy at the timeout.
        RestartSyscall: a signal arrived (the dispatcher restarts the call or
            returns ``EINTR``); nothing was changed, so the call is safe to repeat.
    """
    fences = bo.resv.fences(usage_rw(wait_all))
    if deadline is None and timeout_ns is not None:
        deadline = call.clock.now() + max(0, timeout_ns)
    if not fences:
        return
    if deadline is not None and deadline <= call.clock.now():
        raise error_for_errno(errno.ETIME, f"{bo.name}: {len(fences)} fence(s) still busy")
    remaining = None if deadline is None else deadline - call.clock.now()
    if not call.wait_fences(fences, remaining):
        raise error_for_errno(
            errno.ETIME, f"{bo.name}: fences still busy at device time {deadline} ns"
        )


def dma_resv_wait(
    call: IoctlCallBase,
    handles: HandleTable,
    handle: int,
    *,
    wait_all: bool,
    timeout_ns: int | None = None,
    deadline: int | None = None,
) -> None:
    """``drm_gem_dma_resv_wait``: wait on the fences of the object behind ``handle``.

    Args:
        call: The ioctl call (declared with ``waits=True``).
        handles: The caller's handle table (``call.file.handles``).
        handle: The object's handle.
        wait_all, timeout_ns, deadline: As :func:`wait_bo`.

    Raises:
        InvalidArgument: ``handle`` names no object (``EINVAL``, as the kernel,
            not ``ENOENT``).
        AccelError: ``ETIME`` at the timeout.
        RestartSyscall: a signal arrived.
    """
    try:
        bo = handles.lookup(handle)
    except NoEntry:
        raise InvalidArgument(f"no buffer object with handle {handle} to wait on") from None
    wait_bo(call, bo, wait_all=wait_all, timeout_ns=timeout_ns, deadline=deadline)


class GemDmaBufOps(DmaBufOps):
    """Exporter ops for a buffer object: the dma-buf holds a reference on it."""

    def __init__(self, name: str, *, revocable: bool = False) -> None:
        self.name = name
        self.revocable = revocable

    def release(self, dmabuf: DmaBuf) -> None:
        bo: BufferObject = dmabuf.priv
        if bo.dma_buf is dmabuf:
            bo.dma_buf = None
        bo.put()


class HandleTable:
    """One file's handles: small integers from 1, each holding a reference.

    Args:
        limit: The most handles one file may hold; ``ENOMEM`` past it, so one
            client cannot exhaust the device for the others.
    """

    def __init__(self, limit: int = 65536) -> None:
        self._objects: dict[int, BufferObject] = {}
        self._next = 1
        self.limit = limit

    def create(self, bo: BufferObject) -> int:
        """A new handle for ``bo`` (takes a reference of its own).

        Raises:
            NoMemory: the file holds ``limit`` handles.
        """
        if len(self._objects) >= self.limit:
            raise NoMemory(f"file holds {self.limit} handles (the per-file limit)")
        handle = self._next
        while handle in self._objects:
            handle += 1
        self._next = handle + 1
        self._objects[handle] = bo.get()
        bo.handle_count += 1
        return handle

    def lookup(self, handle: int) -> BufferObject:
        """The object behind ``handle``; ``ENOENT`` if the handle is unknown."""
        try:
            return self._objects[handle]
        except KeyError:
            raise NoEntry(f"no buffer object with handle {handle} on this file") from None

    def handle_of(self, bo: BufferObject) -> int | None:
        """The handle this file has for ``bo``, if any."""
        for h, o in self._objects.items():
            if o is bo:
                return h
        return None

    def delete(self, handle: int) -> BufferObject:
        """Drop ``handle``; ``EINVAL`` if unknown (as ``drm_gem_handle_delete``).

        Returns:
            The object (its reference already dropped; do not use it further
            unless you hold another).
        """
        bo = self._objects.pop(handle, None)
        if bo is None:
            raise InvalidArgument(f"no buffer object with handle {handle} on this file")
        bo.handle_count -= 1
        bo.put()
        return bo

    def clear(self) -> None:
        """Drop every handle (the file is released)."""
        for handle in sorted(self._objects):
            self.delete(handle)

    def items(self) -> list[tuple[int, BufferObject]]:
        return sorted(self._objects.items())

    def __len__(self) -> int:
        return len(self._objects)


def import_dmabuf(device: AccelDevice, dmabuf: DmaBuf, name: str | None = None) -> BufferObject:
    """Wrap a foreign dma-buf as a buffer object of ``device``: attach statically,
    map, and back the object with the mapping's memory (shared, not copied).

    Raises:
        InvalidArgument: the exporter maps the buffer in several pieces (only
            contiguous buffers can back a buffer object).
        AccelError: the exporter refused the attachment (the device cannot reach
            the memory); nothing stays attached.
    """
    att = dmabuf.attach(device.name)
    try:
        mapping = dmabuf.map_attachment(att)
        if len(mapping.sg) != 1:
            raise InvalidArgument(
                f"dma-buf {dmabuf.inode} has {len(mapping.sg)} pieces; "
                "only contiguous buffers can be imported"
            )
        sg = mapping.sg[0]
        bo = BufferObject(
            device,
            sg.length,
            memory=sg.memory,
            offset=sg.offset,
            region="imported",
            name=name or f"import:{dmabuf.exporter}",
            import_attach=att,
        )
    except BaseException:
        dmabuf.detach(att)
        raise
    bo.import_mapping = mapping
    return bo


def gem_close_ioctl(call: IoctlCall) -> None:
    """``DRM_IOCTL_GEM_CLOSE`` (``drm_gem_close_ioctl``): drop a handle of the file,
    and the PRIME cache's entry for it.

    Raises:
        NotSupported: the driver has no buffer objects (``EOPNOTSUPP``).
        InvalidArgument: ``pad`` is not zero, or no such handle.
    """
    if DriverFeature.GEM not in call.device.driver.features:
        raise NotSupported(f"{call.device.driver.name} has no buffer objects (GEM)")
    if call.args.pad:
        raise InvalidArgument(f"drm_gem_close.pad is {call.args.pad:#x}, must be 0")
    file = call.file
    handle = call.args.handle
    file.handles.delete(handle)
    file.forget_prime(handle)
