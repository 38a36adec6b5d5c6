"""DRM syncobjs, binary and timeline, and their core ioctls (``drm_syncobj.c``).

A :class:`Syncobj` is a container for a fence, named by a per-file handle. A
*binary* syncobj holds one fence (or none); ``SIGNAL`` puts a signalled one in,
``RESET`` takes it out, a driver's job puts its finished fence in. A *timeline*
syncobj holds a chain of points: adding point *n* wraps a fence in a chain node
that signals once that fence and every earlier point signalled; asking for
point *n* gives the first node at or after it. Point 0 in a timeline ioctl
means the binary behaviour.

The ioctls are core ioctls for drivers that declare
:attr:`DriverFeature.SYNCOBJ <accelcore.DriverFeature.SYNCOBJ>` (and
``SYNCOBJ_TIMELINE`` for the timeline ones); others get ``EOPNOTSUPP``. Errnos
follow the kernel exactly (see the guide's syncobj table), notably: a bad handle
is ``ENOENT`` in the array ioctls and TRANSFER but ``EINVAL`` in DESTROY and a
plain HANDLE_TO_FD; ``timeout_nsec`` is an absolute time on the device clock
(the model's ``CLOCK_MONOTONIC``), 0 or past polls, and expiry is ``ETIME``;
``count_handles == 0`` succeeds for the waits and is ``EINVAL`` for RESET,
SIGNAL, TIMELINE_SIGNAL and QUERY. Waits are interruptible and, the timeout
being absolute, safe to restart.

Drivers use :func:`syncobj_find_fence` for a job's in-fences and
:func:`syncobj_replace_fence` / :func:`syncobj_add_point` for its out-fence.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .driver import DriverFeature, IoctlFlags
from .errors import (
    BadFd,
    InvalidArgument,
    NoEntry,
    NotSupported,
    error_for_errno,
)
from .fence import Fence, FenceContext
from .resources import IdTable, file_scope
from .sync_file import SyncFile
from .uapi import CORE
from .vfs import OpenFile

if TYPE_CHECKING:
    from .clock import Clock
    from .dispatch import IoctlCall
    from .file import AccelFile

__all__ = [
    "Syncobj",
    "SyncobjFile",
    "lookup_syncobj",
    "syncobj_add_point",
    "syncobj_find_fence",
    "syncobj_ioctls",
    "syncobj_replace_fence",
]

#: ``DRM_SYNCOBJ_WAIT_FOR_SUBMIT_TIMEOUT``: how long a driver's in-fence lookup
#: (and TRANSFER with WAIT_FOR_SUBMIT) waits for a fence to appear.
WAIT_FOR_SUBMIT_TIMEOUT_NS = 5_000_000_000


@dataclass(eq=False)
class _ChainNode:
    """One timeline point (``dma_fence_chain``): signals when ``fence`` and the
    previous node have."""

    seqno: int
    prev_seqno: int
    chain: Fence


class Syncobj:
    """A fence container (``struct drm_syncobj``).

    Args:
        clock: The device clock (for signalled stubs and chain fences).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        #: The current fence: the binary fence, or the newest timeline node's.
        self.fence: Fence | None = None
        self._nodes: list[_ChainNode] = []
        self._chain_ctx = FenceContext(clock, "drm_syncobj", "chain")
        self._stubs = FenceContext(clock, "drm_syncobj", "stub")

    # -- binary ----------------------------------------------------------------------
    def replace_fence(self, fence: Fence | None) -> None:
        """Put ``fence`` in (``None`` empties it); a timeline is dropped."""
        self.fence = fence
        self._nodes = []

    def signal(self) -> None:
        """Put a signalled stub in (``SIGNAL``: ``drm_syncobj_assign_null_handle``)."""
        self.replace_fence(self._stubs.signalled_stub())

    # -- timeline --------------------------------------------------------------------
    @property
    def is_timeline(self) -> bool:
        """Whether the current fence is a timeline node."""
        return bool(self._nodes) and self.fence is self._nodes[-1].chain

    def add_point(self, fence: Fence, point: int) -> None:
        """Add timeline ``point`` for ``fence`` (``drm_syncobj_add_point``).

        A point at or below the newest is kept in order after it (the kernel
        only logs "unorder point").
        """
        prev = self.fence
        prev_seqno = self._nodes[-1].seqno if self.is_timeline else 0
        if not self.is_timeline:
            self._nodes = []
        chain = Fence(self._chain_ctx, max(point, prev_seqno))
        waits = [f for f in (fence, prev) if f is not None]
        left = [len(waits)]

        def done(f: Fence) -> None:
            if f.error and not chain.error and not chain.signalled:
                chain.set_error(f.error)
            left[0] -= 1
            if left[0] == 0:
                chain.signal()

        for f in waits:
            try:
                f.add_callback(done)
            except NoEntry:
                done(f)
        self._nodes.append(_ChainNode(chain.seqno, prev_seqno, chain))
        self.fence = chain
        self._collect()

    def _collect(self) -> None:
        # Forget signalled nodes older than the newest signalled one (the chain's
        # garbage collection): their points stay known as signalled.
        last = max((i for i, n in enumerate(self._nodes) if n.chain.signalled), default=-1)
        if last > 0:
            del self._nodes[:last]

    def find(self, point: int) -> Fence | None:
        """The fence for ``point`` (``dma_fence_chain_find_seqno``): the first node
        at or after it; a signalled stub for a point already collected; ``None``
        when the point is not submitted (or the syncobj is empty, or binary and
        ``point`` is not 0)."""
        if point == 0:
            return self.fence
        if not self.is_timeline or self._nodes[-1].seqno < point:
            return None
        self._collect()
        for node in self._nodes:
            if node.seqno >= point:
                if node.prev_seqno >= point:  # older than everything kept: signalled
                    return self._stubs.signalled_stub()
                return node.chain
        return None  # pragma: no cover - the head is >= point

    def query(self, last_submitted: bool) -> int:
        """``QUERY``: the last signalled point (``LAST_SUBMITTED``: the newest
        point); 0 for a binary or empty syncobj."""
        if not self.is_timeline:
            return 0
        if last_submitted:
            return self._nodes[-1].seqno
        self._collect()
        for node in reversed(self._nodes):
            if node.chain.signalled:
                return node.seqno
        return self._nodes[0].prev_seqno


class SyncobjFile(OpenFile):
    """A syncobj as a file (``syncobj_file``): import it on any file of a
    syncobj-capable device to get a new handle to the same syncobj."""

    kind = "syncobj"

    def __init__(self, syncobj: Syncobj) -> None:
        super().__init__()
        self.syncobj = syncobj


# -- the per-file handle table ------------------------------------------------------


def _table(file: AccelFile) -> IdTable[Syncobj]:
    scope = file_scope(file)
    table = scope.tables.get("syncobjs")
    if table is None:
        table = scope.ids("syncobjs")
        scope.add_action(table.clear, "syncobj handles")
    return table


def lookup_syncobj(file: AccelFile, handle: int) -> Syncobj:
    """The syncobj behind ``handle`` on ``file``.

    Raises:
        NoEntry: no such handle (``ENOENT``, as ``drm_syncobj_find`` callers).
    """
    syncobj = _table(file).load(handle)
    if syncobj is None:
        raise NoEntry(f"no syncobj with handle {handle} on this file")
    return syncobj


def syncobj_find_fence(file: AccelFile, handle: int, point: int = 0) -> Fence:
    """A job's in-fence from a syncobj (``drm_syncobj_find_fence``, flags 0, as
    ``drm_sched_job_add_syncobj_dependency`` uses it).

    Raises:
        NoEntry: unknown handle.
        InvalidArgument: the syncobj has no fence for ``point`` (nothing submitted).
    """
    fence = lookup_syncobj(file, handle).find(point)
    if fence is None:
        raise InvalidArgument(f"syncobj {handle} has no fence for point {point}")
    return fence


def syncobj_replace_fence(file: AccelFile, handle: int, fence: Fence) -> None:
    """Make ``fence`` (a job's finished fence) the content of a binary syncobj.

    Raises:
        NoEntry: unknown handle.
    """
    lookup_syncobj(file, handle).replace_fence(fence)


def syncobj_add_point(file: AccelFile, handle: int, fence: Fence, point: int) -> None:
    """Add ``fence`` as timeline ``point`` (0: replace, as binary).

    Raises:
        NoEntry: unknown handle.
    """
    syncobj = lookup_syncobj(file, handle)
    if point:
        syncobj.add_point(fence, point)
    else:
        syncobj.replace_fence(fence)


# -- ioctl helpers -------------------------------------------------------------------


def _require(call: IoctlCall, timeline: bool = False) -> None:
    feats = call.device.driver.features
    need = DriverFeature.SYNCOBJ_TIMELINE if timeline else DriverFeature.SYNCOBJ
    if need not in feats:
        raise NotSupported(f"{call.device.driver.name} does not support {need.name} syncobjs")


def _u32s(call: IoctlCall, addr: int, count: int) -> list[int]:
    return list(struct.unpack(f"<{count}I", call.copy_from_user(addr, 4 * count)))


def _u64s(call: IoctlCall, addr: int, count: int) -> list[int]:
    return list(struct.unpack(f"<{count}Q", call.copy_from_user(addr, 8 * count)))


def _lookup_all(call: IoctlCall, handles: list[int]) -> list[Syncobj]:
    return [lookup_syncobj(call.file, h) for h in handles]


def _etime(message: str) -> OSError:
    return error_for_errno(errno.ETIME, message)


# -- the ioctls ----------------------------------------------------------------------


def _create(call: IoctlCall) -> None:
    _require(call)
    a = call.args
    if a.flags & ~CORE.DRM_SYNCOBJ_CREATE_SIGNALED:
        raise InvalidArgument(f"SYNCOBJ_CREATE flags {a.flags:#x} has unknown bits")
    syncobj = Syncobj(call.clock)
    if a.flags & CORE.DRM_SYNCOBJ_CREATE_SIGNALED:
        syncobj.signal()
    a.handle = _table(call.file).alloc(syncobj)


def _destroy(call: IoctlCall) -> None:
    _require(call)
    a = call.args
    if a.pad:
        raise InvalidArgument(f"drm_syncobj_destroy.pad is {a.pad:#x}, must be 0")
    if _table(call.file).erase(a.handle) is None:
        raise InvalidArgument(f"no syncobj with handle {a.handle} to destroy")


def _handle_args(call: IoctlCall, what: str, other: int, timeline: int) -> tuple[Any, int]:
    """The checked ``drm_syncobj_handle`` of ``what`` (HANDLE_TO_FD, FD_TO_HANDLE):
    pad 0 and no flag but ``other`` and ``timeline`` (``EINVAL``); and the timeline
    point it names (0 without ``timeline``)."""
    _require(call)
    a = call.args
    if a.pad:
        raise InvalidArgument(f"drm_syncobj_handle.pad is {a.pad:#x}, must be 0")
    if a.flags & ~(other | timeline):
        raise InvalidArgument(f"SYNCOBJ_{what} flags {a.flags:#x} has unknown bits")
    return a, int(a.point) if a.flags & timeline else 0


def _handle_to_fd(call: IoctlCall) -> None:
    a, point = _handle_args(
        call,
        "HANDLE_TO_FD",
        CORE.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE,
        CORE.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE,
    )
    if a.flags & CORE.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE:
        fence = syncobj_find_fence(call.file, a.handle, point)
        a.fd = call.install_fd(SyncFile(fence), cloexec=True)
        return
    if a.point:
        raise InvalidArgument(f"SYNCOBJ_HANDLE_TO_FD point {a.point} without a timeline flag")
    syncobj = _table(call.file).load(a.handle)
    if syncobj is None:
        raise InvalidArgument(f"no syncobj with handle {a.handle} to export")
    a.fd = call.install_fd(SyncobjFile(syncobj), cloexec=True)


def _fd_to_handle(call: IoctlCall) -> None:
    a, point = _handle_args(
        call,
        "FD_TO_HANDLE",
        CORE.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE,
        CORE.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE,
    )
    try:
        file = call.get_file(a.fd)
    except BadFd:
        file = None  # fget failing is EINVAL here, as in the kernel
    if a.flags & CORE.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE:
        if not isinstance(file, SyncFile):
            raise InvalidArgument(f"fd {a.fd} is not a sync_file")
        syncobj_add_point(call.file, a.handle, file.fence, point)
        return
    if a.point:
        raise InvalidArgument(f"SYNCOBJ_FD_TO_HANDLE point {a.point} without a timeline flag")
    if not isinstance(file, SyncobjFile):
        raise InvalidArgument(f"fd {a.fd} is not a syncobj file")
    a.handle = _table(call.file).alloc(file.syncobj)


def _wait_common(
    call: IoctlCall,
    handles_ptr: int,
    points_ptr: int | None,
    count: int,
    flags: int,
    timeout_nsec: int,
) -> int:
    """``drm_syncobj_array_wait``: returns ``first_signaled``."""
    syncobjs = _lookup_all(call, _u32s(call, handles_ptr, count))
    points = _u64s(call, points_ptr, count) if points_ptr else [0] * count
    wait_all = bool(flags & CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL)
    for_submit = bool(flags & CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT)
    available = bool(flags & CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE)
    first = 0xFFFF_FFFF
    for i, (s, p) in enumerate(zip(syncobjs, points, strict=True)):
        fence = s.find(p)
        if fence is None and not (for_submit or available):
            raise InvalidArgument(f"syncobj {i} of the wait has no fence for point {p}")
        if fence is not None and fence.signalled and first == 0xFFFF_FFFF:
            first = i

    def done(i: int) -> bool:
        fence = syncobjs[i].find(points[i])
        return fence is not None and (available or fence.signalled)

    def ready() -> int | None:
        states = [done(i) for i in range(count)]
        if wait_all:
            return 0 if all(states) else None
        return next((i for i, ok in enumerate(states) if ok), None)

    if ready() is None:
        now = call.clock.now()
        if timeout_nsec <= now:
            raise _etime(f"syncobj wait: not signalled (timeout {timeout_nsec} <= now {now})")
        if not call.wait(lambda: ready() is not None, deadline=timeout_nsec):
            raise _etime(f"syncobj wait: not signalled at device time {timeout_nsec} ns")
    idx = ready()
    if not wait_all and idx is not None:
        first = idx
    return first


def _wait(call: IoctlCall) -> None:
    _require(call)
    a = call.args
    valid = (
        CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
        | CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
        | CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE
    )
    if a.flags & ~valid:
        raise InvalidArgument(f"SYNCOBJ_WAIT flags {a.flags:#x} has unknown bits")
    if a.count_handles == 0:
        return
    a.first_signaled = _wait_common(
        call, a.handles, None, a.count_handles, a.flags, int(a.timeout_nsec)
    )


def _timeline_wait(call: IoctlCall) -> None:
    _require(call, timeline=True)
    a = call.args
    valid = (
        CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
        | CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
        | CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE
        | CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE
    )
    if a.flags & ~valid:
        raise InvalidArgument(f"SYNCOBJ_TIMELINE_WAIT flags {a.flags:#x} has unknown bits")
    if a.count_handles == 0:
        return
    a.first_signaled = _wait_common(
        call, a.handles, a.points, a.count_handles, a.flags, int(a.timeout_nsec)
    )


def _array(call: IoctlCall, what: str) -> list[Syncobj]:
    _require(call)
    a = call.args
    if a.pad:
        raise InvalidArgument(f"drm_syncobj_array.pad is {a.pad:#x}, must be 0")
    if a.count_handles == 0:
        raise InvalidArgument(f"SYNCOBJ_{what} of 0 handles")
    return _lookup_all(call, _u32s(call, a.handles, a.count_handles))


def _reset(call: IoctlCall) -> None:
    for s in _array(call, "RESET"):
        s.replace_fence(None)


def _signal(call: IoctlCall) -> None:
    for s in _array(call, "SIGNAL"):
        s.signal()


def _timeline_array(
    call: IoctlCall, what: str, valid_flags: int
) -> tuple[list[Syncobj], list[int]]:
    _require(call, timeline=True)
    a = call.args
    if a.flags & ~valid_flags:
        raise InvalidArgument(f"SYNCOBJ_{what} flags {a.flags:#x} has unknown bits")
    if a.count_handles == 0:
        raise InvalidArgument(f"SYNCOBJ_{what} of 0 handles")
    syncobjs = _lookup_all(call, _u32s(call, a.handles, a.count_handles))
    points = _u64s(call, a.points, a.count_handles) if a.points else [0] * a.count_handles
    return syncobjs, points


def _timeline_signal(call: IoctlCall) -> None:
    syncobjs, points = _timeline_array(call, "TIMELINE_SIGNAL", 0)
    for s, p in zip(syncobjs, points, strict=True):
        stub = s._stubs.signalled_stub()
        if p:
            s.add_point(stub, p)
        else:
            s.replace_fence(stub)


def _query(call: IoctlCall) -> None:
    last = CORE.DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED
    syncobjs, _ = _timeline_array(call, "QUERY", last)
    values = [s.query(bool(call.args.flags & last)) for s in syncobjs]
    call.copy_to_user(call.args.points, struct.pack(f"<{len(values)}Q", *values))


def _transfer(call: IoctlCall) -> None:
    _require(call, timeline=True)
    a = call.args
    if a.pad:
        raise InvalidArgument(f"drm_syncobj_transfer.pad is {a.pad:#x}, must be 0")
    if a.flags & ~CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT:
        raise InvalidArgument(f"SYNCOBJ_TRANSFER flags {a.flags:#x} has unknown bits")
    src = lookup_syncobj(call.file, a.src_handle)
    dst = lookup_syncobj(call.file, a.dst_handle)
    fence = src.find(int(a.src_point))
    if fence is None and a.flags & CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT:
        point = int(a.src_point)
        if not call.wait(lambda: src.find(point) is not None, WAIT_FOR_SUBMIT_TIMEOUT_NS):
            raise _etime(f"syncobj {a.src_handle} point {point} not submitted in 5 s")
        fence = src.find(point)
    if fence is None:
        raise InvalidArgument(f"syncobj {a.src_handle} has no fence for point {a.src_point}")
    if a.dst_point:
        dst.add_point(fence, int(a.dst_point))
    else:
        dst.replace_fence(fence)


def syncobj_ioctls() -> list[tuple[str, IoctlFlags, Callable[[IoctlCall], None], bool]]:
    """The core table's syncobj rows: ``(name, flags, handler, waits)``.

    Any opener may use them (``DRM_RENDER_ALLOW``), also during a reset; not on
    a control node.
    """
    ok = IoctlFlags.RESET_OK
    return [
        ("DRM_IOCTL_SYNCOBJ_CREATE", ok, _create, False),
        ("DRM_IOCTL_SYNCOBJ_DESTROY", ok, _destroy, False),
        ("DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD", ok, _handle_to_fd, False),
        ("DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE", ok, _fd_to_handle, False),
        ("DRM_IOCTL_SYNCOBJ_WAIT", ok, _wait, True),
        ("DRM_IOCTL_SYNCOBJ_RESET", ok, _reset, False),
        ("DRM_IOCTL_SYNCOBJ_SIGNAL", ok, _signal, False),
        ("DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT", ok, _timeline_wait, True),
        ("DRM_IOCTL_SYNCOBJ_QUERY", ok, _query, False),
        ("DRM_IOCTL_SYNCOBJ_TRANSFER", ok, _transfer, True),
        ("DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL", ok, _timeline_signal, False),
    ]
