"""dma-buf: buffers shared between devices and processes, with exporter ops.

A :class:`DmaBuf` is a file (so its lifetime is its references: fds, importers'
attachments, mappings) over a range of :class:`~accelcore.memory.SharedMemory`.
The exporter supplies :class:`DmaBufOps`; importers :meth:`~DmaBuf.attach` and
map. A *dynamic* importer gives :class:`ImporterOps` with ``move_notify`` and is
told when the buffer moves or is revoked; a static importer's mapping pins the
buffer. Every buffer carries a :class:`~accelcore.fence.ReservationObject`.

User-space ABI on the dma-buf fd: ``DMA_BUF_IOCTL_SYNC`` (begin/end CPU access),
``DMA_BUF_SET_NAME``, ``DMA_BUF_IOCTL_EXPORT_SYNC_FILE`` and ``…IMPORT_SYNC_FILE``,
``mmap`` and ``poll``. The ioctls run from a table (``DmaBuf.IOCTLS``) through
:func:`accelcore.ioctl.run_ioctl`, as every ioctl does: copy-in and copy-out by
the number's size and direction, and a bug in an exporter's op is an oops
(``EIO``), not a crash. :class:`DmaBufRegistry` lists every live buffer, like
debugfs ``dma_buf/bufinfo``.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import BadFd, InvalidArgument, NotSupported, error_for_errno
from .fence import Fence, FenceContext, ReservationObject, Usage
from .ioctl import FileIoctlCall, IoctlTableFile, ioctl_table
from .memory import PAGE_SIZE, SharedMemory
from .sync_file import SyncFile
from .uapi import CORE
from .vfs import POLLIN, POLLOUT, Mapping, OpenFile

if TYPE_CHECKING:
    from .clock import Clock
    from .task import Task

log = logging.getLogger("accelcore")

__all__ = [
    "Attachment",
    "DmaBuf",
    "DmaBufOps",
    "DmaBufRegistry",
    "DmaMapping",
    "ImporterOps",
    "SgEntry",
]

DMA_BUF_NAME_LEN = 32


@dataclass(frozen=True, slots=True)
class SgEntry:
    """One contiguous piece of a mapped buffer (a scatterlist entry)."""

    memory: SharedMemory
    offset: int
    length: int

    def view(self) -> memoryview:
        return self.memory.view(self.offset, self.length)


class ImporterOps:
    """What a dynamic importer supplies (``dma_buf_attach_ops``)."""

    allow_peer2peer: bool = True

    def move_notify(self, attachment: Attachment) -> None:
        """The buffer moved or was revoked: drop and re-create mappings soon."""


@dataclass(eq=False)
class DmaMapping:
    """An attachment's mapping into the importer's device address space."""

    attachment: Attachment
    sg: list[SgEntry]
    valid: bool = True

    def view(self) -> memoryview:
        """The bytes, for a single-entry mapping (what simulated DMA engines use)."""
        if not self.valid:
            raise error_for_errno(errno.ENODEV, "dma-buf mapping was invalidated")
        if len(self.sg) != 1:
            raise InvalidArgument(f"mapping has {len(self.sg)} pieces; walk .sg instead")
        return self.sg[0].view()


@dataclass(eq=False)
class Attachment:
    """A device attached to a buffer as importer (``dma_buf_attachment``)."""

    dmabuf: DmaBuf
    importer: str
    ops: ImporterOps | None
    peer2peer: bool = True
    mappings: list[DmaMapping] = field(default_factory=list)
    priv: Any = None
    #: Pins held through :meth:`DmaBuf.pin` (dynamic importers only).
    pins: int = 0
    #: The core pinned the buffer for this static importer of a dynamic exporter.
    core_pinned: bool = False

    @property
    def dynamic(self) -> bool:
        return self.ops is not None


class DmaBufOps:
    """Exporter operations (``dma_buf_ops``). Subclass and override what you support.

    The defaults map the buffer's own memory range, which is right for
    memory-backed exporters. ``release`` is where the exporter frees its side.
    """

    #: Exporter name shown in bufinfo (``exp_name``).
    name: str = "accelcore"
    #: Whether :meth:`revoke` is supported (the buffer can be taken away).
    revocable: bool = False
    #: A dynamic exporter can move the buffer; it implements :meth:`pin`/:meth:`unpin`,
    #: and static importers keep it pinned while attached.
    dynamic: bool = False

    def attach(self, dmabuf: DmaBuf, attachment: Attachment) -> None:
        """Check that the importer can reach the buffer; raise to refuse."""

    def detach(self, dmabuf: DmaBuf, attachment: Attachment) -> None:
        """Undo :meth:`attach`."""

    def map(self, dmabuf: DmaBuf, attachment: Attachment) -> list[SgEntry]:
        """The buffer's pieces, for the importer's device."""
        return [SgEntry(dmabuf.memory, dmabuf.offset, dmabuf.size)]

    def unmap(self, dmabuf: DmaBuf, mapping: DmaMapping) -> None:
        """Undo :meth:`map`."""

    def release(self, dmabuf: DmaBuf) -> None:
        """The last reference went: free the exporter's side."""

    def pin(self, dmabuf: DmaBuf, attachment: Attachment) -> None:
        """The buffer must not move any more (dynamic exporters)."""

    def unpin(self, dmabuf: DmaBuf, attachment: Attachment) -> None:
        """Undo :meth:`pin`."""

    def mmap(self, dmabuf: DmaBuf, offset: int, length: int) -> memoryview:
        """CPU view of ``[offset, offset+length)`` of the buffer."""
        return dmabuf.memory.view(dmabuf.offset + offset, length)

    def begin_cpu_access(self, dmabuf: DmaBuf, write: bool) -> None:
        """Before CPU access (``DMA_BUF_IOCTL_SYNC`` start)."""

    def end_cpu_access(self, dmabuf: DmaBuf, write: bool) -> None:
        """After CPU access (``DMA_BUF_IOCTL_SYNC`` end)."""

    def revoke(self, dmabuf: DmaBuf) -> None:
        """Take the memory back (only if :attr:`revocable`)."""


class DmaBufRegistry:
    """Every live dma-buf; the source of ``bufinfo`` and of leak accounting.

    Args:
        fence_context: Where stub fences come from (and the clock of ioctls).
        record_oops: Records a bug in an ioctl handler of a dma-buf or udmabuf
            file (the subsystem's :meth:`~accelcore.Subsystem.record_oops`);
            without it the bug is only logged.
    """

    def __init__(
        self,
        fence_context: FenceContext | None = None,
        record_oops: Callable[..., Any] | None = None,
    ) -> None:
        self.live: dict[int, DmaBuf] = {}
        self.fence_context = fence_context
        self._record_oops = record_oops

    def oops(self, where: str, exc: BaseException, what: str) -> str:
        """Record an oops in an ioctl of ``what``; returns the line describing it."""
        if self._record_oops is None:
            log.error("oops in %s on %s", where, what, exc_info=exc)
            return f"{what}: {exc!r}"
        return f"{what}: {self._record_oops(where, exc, device=what).exception}"

    def add(self, dmabuf: DmaBuf) -> None:
        self.live[dmabuf.inode] = dmabuf

    def remove(self, dmabuf: DmaBuf) -> None:
        self.live.pop(dmabuf.inode, None)

    def counts(self) -> dict[str, int]:
        """Buffers, attachments, device mappings and CPU mappings alive now."""
        bufs = list(self.live.values())
        return {
            "dmabufs": len(bufs),
            "attachments": sum(len(b.attachments) for b in bufs),
            "dma_mappings": sum(len(a.mappings) for b in bufs for a in b.attachments),
            "cpu_mappings": sum(len(b.cpu_mappings) for b in bufs),
        }

    def bufinfo(self) -> list[dict[str, Any]]:
        """One record per buffer: size, flags, count, exporter, name, fences, attachments."""
        out = []
        for b in sorted(self.live.values(), key=lambda b: b.inode):
            out.append(
                {
                    "size": b.size,
                    "flags": b.flags,
                    "count": b.refcount,
                    "exp_name": b.ops.name,
                    "exporter": b.exporter,
                    "ino": b.inode,
                    "name": b.name or "<none>",
                    "revoked": b.revoked,
                    "pins": list(b.pins),
                    "fences": [
                        {
                            "usage": u.name.lower(),
                            "driver": f.context.driver,
                            "timeline": f.context.timeline,
                            "seqno": f.seqno,
                            "signalled": f.signalled,
                        }
                        for f, u in b.resv.describe()
                    ],
                    "attachments": [a.importer for a in b.attachments],
                }
            )
        return out


class DmaBuf(IoctlTableFile, OpenFile):
    """A shared buffer.

    Args:
        ops: The exporter's operations.
        memory: Backing memory; the buffer is ``[offset, offset+size)`` of it.
        offset: Start of the buffer in ``memory`` (page-aligned).
        size: Bytes (positive, page multiple).
        exporter: Name of the exporting device (``accel0``, ``udmabuf``).
        registry: Where the buffer is listed while alive.
        priv: The exporter's private data (its buffer object).
        flags: File flags (``O_RDWR``, ``O_CLOEXEC``).
        resv: The exporter's reservation object to share (a buffer object's, as
            ``drm_gem_prime_export`` passes ``obj->resv``); a new one when ``None``.

    Raises:
        InvalidArgument: offset or size not page-aligned, or outside ``memory``.
    """

    kind = "dmabuf"

    def __init__(
        self,
        ops: DmaBufOps,
        memory: SharedMemory,
        offset: int,
        size: int,
        *,
        exporter: str,
        registry: DmaBufRegistry,
        priv: Any = None,
        flags: int = 0,
        resv: ReservationObject | None = None,
    ) -> None:
        if size <= 0 or size % PAGE_SIZE or offset % PAGE_SIZE:
            raise InvalidArgument(
                f"dma-buf offset {offset:#x} and size {size:#x} must be page-aligned and size > 0"
            )
        if offset + size > memory.size:
            raise InvalidArgument(
                f"dma-buf [{offset:#x}, {offset + size:#x}) is outside its memory of "
                f"{memory.size:#x} bytes"
            )
        super().__init__(flags=flags)
        self.ops = ops
        self.memory = memory.get()  # the pages outlive an exporter that goes away
        self.offset = offset
        self.size = size
        self.exporter = exporter
        self.priv = priv
        self.name = ""
        #: The fences of the buffer, shared with the exporter's buffer object.
        self.resv = resv if resv is not None else ReservationObject()
        self.attachments: list[Attachment] = []
        self.cpu_mappings: list[Mapping] = []
        self.revoked = False
        #: What this buffer keeps pinned (e.g. "ownership of accel0"), for listings.
        self.pins: set[str] = set()
        self._registry = registry
        self._on_release: list[Callable[[DmaBuf], None]] = []
        registry.add(self)

    # -- lifetime --------------------------------------------------------------
    def on_release(self, callback: Callable[[DmaBuf], None]) -> None:
        """Run ``callback`` when the last reference goes."""
        self._on_release.append(callback)

    def release(self) -> None:
        for att in list(self.attachments):
            self.detach(att)
        self.ops.release(self)
        self.memory.close()
        self._registry.remove(self)
        callbacks, self._on_release = self._on_release, []
        for cb in callbacks:
            cb(self)

    def _check_usable(self) -> None:
        if self.revoked:
            raise error_for_errno(errno.EBADFD, f"dma-buf {self.inode} was revoked")

    # -- importers -----------------------------------------------------------------
    def attach(self, importer: str, ops: ImporterOps | None = None) -> Attachment:
        """Attach an importing device; holds a reference until :meth:`detach`.

        Raises:
            BadFd: the buffer was revoked (``EBADFD``).
            AccelError: the exporter refused (the importer cannot reach the memory).
        """
        self._check_usable()
        att = Attachment(
            self, importer, ops, peer2peer=ops.allow_peer2peer if ops is not None else False
        )
        self.ops.attach(self, att)
        if self.ops.dynamic and ops is None:
            # A static importer cannot follow a move: keep the buffer pinned while
            # attached, as dma_buf_dynamic_attach does for mismatched pairs.
            try:
                self.ops.pin(self, att)
            except BaseException:
                self.ops.detach(self, att)
                raise
            att.core_pinned = True
        self.attachments.append(att)
        self.get()
        return att

    def detach(self, att: Attachment) -> None:
        """Detach (unmapping what is still mapped) and drop the reference."""
        if att not in self.attachments:
            raise InvalidArgument(f"{att.importer} is not attached to dma-buf {self.inode}")
        for m in list(att.mappings):
            self.unmap_attachment(m)
        while att.pins:
            self.unpin(att)
        if att.core_pinned:
            att.core_pinned = False
            self.ops.unpin(self, att)
        self.ops.detach(self, att)
        self.attachments.remove(att)
        self.put()

    def map_attachment(self, att: Attachment) -> DmaMapping:
        """Map for the importer's device; static importers wait for kernel fences."""
        self._check_usable()
        if att not in self.attachments:
            raise InvalidArgument(f"{att.importer} is not attached to dma-buf {self.inode}")
        mapping = DmaMapping(att, self.ops.map(self, att))
        att.mappings.append(mapping)
        return mapping

    def unmap_attachment(self, mapping: DmaMapping) -> None:
        """Undo :meth:`map_attachment`."""
        att = mapping.attachment
        if mapping in att.mappings:
            att.mappings.remove(mapping)
            self.ops.unmap(self, mapping)
            mapping.valid = False

    def pin(self, att: Attachment) -> None:
        """Pin the buffer for a dynamic importer (``dma_buf_pin``).

        Raises:
            InvalidArgument: ``att`` is a static attachment (the core already pins
                for those) or not attached to this buffer.
        """
        if att not in self.attachments or att.ops is None:
            raise InvalidArgument(
                f"{att.importer}: only dynamic attachments pin dma-buf {self.inode}"
            )
        self._check_usable()
        self.ops.pin(self, att)
        att.pins += 1

    def unpin(self, att: Attachment) -> None:
        """Drop a pin taken with :meth:`pin`."""
        if att not in self.attachments or att.pins == 0:
            raise InvalidArgument(f"{att.importer} holds no pin on dma-buf {self.inode}")
        att.pins -= 1
        self.ops.unpin(self, att)

    @property
    def pinned(self) -> bool:
        """Whether an importer (or the core, for a static one) keeps it from moving."""
        return any(a.pins or a.core_pinned for a in self.attachments)

    def move_notify(self) -> None:
        """Tell every dynamic importer that the buffer moved."""
        for att in list(self.attachments):
            if att.ops is not None:
                att.ops.move_notify(att)

    def revoke(self) -> None:
        """Take the buffer away from everyone who holds it.

        CPU mappings are zapped, dynamic importers get ``move_notify`` and every
        device mapping is invalidated; later attach, map and mmap fail with
        ``EBADFD``. The file stays valid until its last reference goes.

        Raises:
            NotSupported: the exporter does not support revocation.
        """
        if not self.ops.revocable:
            raise NotSupported(f"exporter {self.ops.name} of dma-buf {self.inode} cannot revoke")
        if self.revoked:
            return
        self.revoked = True
        self.ops.revoke(self)
        for m in self.cpu_mappings:
            m.zap()
        for att in self.attachments:
            for mapping in att.mappings:
                mapping.valid = False
        self.move_notify()

    # -- user space ------------------------------------------------------------
    def mmap(self, task: Task, offset: int, length: int, writable: bool) -> Mapping:
        """CPU mapping of ``[offset, offset+length)``; it holds the buffer.

        Raises:
            PermissionDenied: ``writable`` and the buffer was exported without
                ``DRM_RDWR`` (``EACCES``, checked first, as ``do_mmap``).
            BadFd: the buffer was revoked (``EBADFD``).
            InvalidArgument: the range is outside the buffer or not page-aligned.
            NotSupported: the exporter has no CPU mapping.
        """
        self.check_mmap_access(writable)
        self._check_usable()
        if length <= 0 or offset < 0 or offset % PAGE_SIZE or offset + length > self.size:
            raise InvalidArgument(
                f"mmap of [{offset:#x}, {offset + length:#x}) is outside dma-buf of "
                f"{self.size:#x} bytes (or offset not page-aligned)"
            )
        m = Mapping(
            self,
            self.ops.mmap(self, offset, length),
            offset,
            writable,
            object_view=self.ops.mmap(self, 0, self.size),
        )
        self.cpu_mappings.append(m)
        m.on_unmap(self.cpu_mappings.remove)
        return m

    def vmap(self) -> memoryview:
        """Kernel virtual mapping of the whole buffer."""
        self._check_usable()
        return self.ops.mmap(self, 0, self.size)

    def poll(self) -> int:
        """``dma_buf_poll``: ``POLLIN`` once writers (and kernel fences) are done,
        ``POLLOUT`` once readers are done too; ``BOOKKEEP`` fences are ignored."""
        mask = 0
        if not self.resv.fences(Usage.WRITE):
            mask |= POLLIN
        if not self.resv.fences(Usage.READ):  # BOOKKEEP is never implicit sync
            mask |= POLLOUT
        return mask

    # -- ioctls (run from DMA_BUF_IOCTLS by IoctlTableFile.ioctl) ---------------
    def ioctl_clock(self) -> Clock:
        ctx = self._registry.fence_context
        if ctx is None:
            raise BadFd("no fence context for dma-buf ioctls")
        return ctx.clock

    def ioctl_oops(self, where: str, exc: BaseException) -> str:
        return self._registry.oops(where, exc, f"dma-buf {self.inode}")

    def _stub(self) -> Fence:
        ctx = self._registry.fence_context
        if ctx is None:
            raise BadFd("no fence context for stub fences")
        return ctx.signalled_stub()

    def fdinfo(self) -> dict[str, str]:
        info = super().fdinfo()
        info.update(
            {"size": str(self.size), "count": str(self.refcount), "exp_name": self.ops.name}
        )
        if self.name:
            info["name"] = self.name
        return info

    def __repr__(self) -> str:
        return (
            f"<DmaBuf ino={self.inode} size={self.size:#x} exporter={self.exporter} "
            f"refs={self.refcount}>"
        )


# -- the dma-buf ioctls (drivers/dma-buf/dma-buf.c, dma_buf_ioctl) ------------------


def _sync(call: FileIoctlCall) -> None:
    buf: DmaBuf = call.file  # type: ignore[assignment]
    flags = call.args.flags
    if flags & ~CORE.DMA_BUF_SYNC_VALID_FLAGS_MASK:
        raise InvalidArgument(f"DMA_BUF_IOCTL_SYNC flags {flags:#x} has unknown bits")
    rw = flags & CORE.DMA_BUF_SYNC_RW
    if not rw:
        raise InvalidArgument(f"DMA_BUF_IOCTL_SYNC flags {flags:#x} names no direction")
    buf._check_usable()
    write = bool(rw & CORE.DMA_BUF_SYNC_WRITE)
    if flags & CORE.DMA_BUF_SYNC_END:
        buf.ops.end_cpu_access(buf, write)
    else:
        buf.ops.begin_cpu_access(buf, write)


def _set_name(call: FileIoctlCall) -> None:
    buf: DmaBuf = call.file  # type: ignore[assignment]
    ptr = call.args[0]
    raw = b""
    while len(raw) < DMA_BUF_NAME_LEN:
        ch = call.copy_from_user(ptr + len(raw), 1)
        if ch == b"\0":
            break
        raw += ch
    buf.name = raw.decode("utf-8", "replace")


def _export_sync_file(call: FileIoctlCall) -> None:
    buf: DmaBuf = call.file  # type: ignore[assignment]
    args = call.args
    if not args.flags or args.flags & ~CORE.DMA_BUF_SYNC_RW:
        raise InvalidArgument(
            f"EXPORT_SYNC_FILE flags {args.flags:#x} are not a non-empty subset of DMA_BUF_SYNC_RW"
        )
    # dma_resv_usage_rw(write): a writer waits for readers and writers, a
    # reader for writers; BOOKKEEP fences are never implicit sync.
    usage = Usage.READ if args.flags & CORE.DMA_BUF_SYNC_WRITE else Usage.WRITE
    # Every fence of that usage, merged (dma_resv_get_singleton), not one.
    fence = buf.resv.get_singleton(usage) or buf._stub()
    args.fd = call.install_fd(SyncFile(fence), cloexec=True)


def _import_sync_file(call: FileIoctlCall) -> None:
    buf: DmaBuf = call.file  # type: ignore[assignment]
    args = call.args
    if not args.flags or args.flags & ~CORE.DMA_BUF_SYNC_RW:
        raise InvalidArgument(
            f"IMPORT_SYNC_FILE flags {args.flags:#x} are not a non-empty subset of DMA_BUF_SYNC_RW"
        )
    sync = call.get_file(args.fd)
    if not isinstance(sync, SyncFile):
        raise InvalidArgument(f"fd {args.fd} is not a sync file")
    usage = Usage.WRITE if args.flags & CORE.DMA_BUF_SYNC_WRITE else Usage.READ
    # dma_fence_unwrap_for_each: each component of a merged fence is added
    # on its own, so none is lost to add_fence's per-timeline replacement.
    for fence in sync.fence.unwrap():
        buf.resv.add_fence(fence, usage)


DmaBuf.IOCTLS = ioctl_table(
    CORE,
    [
        ("DMA_BUF_IOCTL_SYNC", _sync),
        ("DMA_BUF_SET_NAME_B", _set_name),
        ("DMA_BUF_IOCTL_EXPORT_SYNC_FILE", _export_sync_file),
        ("DMA_BUF_IOCTL_IMPORT_SYNC_FILE", _import_sync_file),
    ],
)


def require_dmabuf(file: OpenFile, fd: int) -> DmaBuf:
    """``dma_buf_get``: the dma-buf behind ``fd``, or ``EINVAL`` if it is another file."""
    if not isinstance(file, DmaBuf):
        raise InvalidArgument(f"fd {fd} is not a dma-buf (its file is of kind {file.kind!r})")
    return file
