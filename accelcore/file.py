"""Open files on accel nodes (``struct drm_file``).

An :class:`AccelFile` is made by ``open()`` of ``/dev/accel/accelN`` (or the
control node). It is one open file description: ``dup``, ``fork`` and fd passing
share it, and it is released at the last close. It carries the client's identity
(client id, opener's pid and uid, name), its handle namespace, its compute
context, its CPU mappings, per-client statistics for fdinfo, and a queue of
events that user space reads and polls.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from typing import TYPE_CHECKING, Any

from .clock import WaitResult
from .dispatch import IoctlCall, dispatch, lookup, permit
from .errors import InvalidArgument, NoMemory, RestartSyscall, TryAgain
from .gem import HandleTable
from .resources import release_scope
from .vfs import POLLIN, POLLOUT, Mapping, OpenFile

if TYPE_CHECKING:
    from .device import AccelDevice
    from .dmabuf import DmaBuf
    from .driver import IoctlDesc
    from .task import Task

__all__ = ["AccelFile"]

_client_ids = itertools.count(1)
_EVENT_HEADER = struct.Struct("<II")
#: Bytes of unread events one file may queue (``drm_file.event_space``).
EVENT_SPACE = 4096


class AccelFile(OpenFile):
    """One open of an accel node.

    Attributes:
        device: The device.
        client_id: Unique, never reused (``drm-client-id``).
        pid, uid, comm: The opener's identity.
        control: Opened through the control node (INFO only).
        handles: The file's buffer-object handles.
        prime: dma-buf → handle, so one buffer gets one handle per file.
        context: The driver's compute context, when the file has one.
        driver_priv: Free for the driver's per-file state.
        engine_time_ns: Engine time used by this client, for fdinfo and INFO.
    """

    kind = "accel"

    def __init__(self, device: AccelDevice, task: Task, flags: int, *, control: bool) -> None:
        super().__init__(flags=flags)
        self.device = device
        self.client_id = next(_client_ids)
        self.pid = task.pid
        self.uid = task.creds.uid
        self.comm = task.comm
        self.admin = task.creds.is_admin
        self.opener = task
        self.control = control
        self.client_name = ""
        self.handles = HandleTable(device.driver.max_handles)
        self.prime: dict[DmaBuf, int] = {}
        self.context: Any = None
        self.driver_priv: Any = None
        self.mappings: list[Mapping] = []
        self.engine_time_ns = 0
        self._events: deque[bytes] = deque()
        self._event_bytes = 0

    @property
    def is_owner(self) -> bool:
        """Whether this file holds the device's single compute context."""
        return self.device.ownership.owner is self

    @property
    def memory_bytes(self) -> int:
        """Bytes of the buffer objects this file has handles to."""
        return sum(bo.size for _, bo in self.handles.items())

    # -- file operations ---------------------------------------------------------
    #: ``dispatch(file, task, cmd, argp)`` is the method itself (no extra call).
    ioctl = dispatch

    # -- the IoctlNode protocol (what run_ioctl needs of the file) ------------------
    def ioctl_lookup(self, cmd: int) -> IoctlDesc | None:
        """The table row for ``cmd`` (the core's or the driver's), or ``None``."""
        return lookup(self.device, cmd)

    def ioctl_call(self, task: Task, cmd: int, desc: IoctlDesc, buf: bytearray) -> IoctlCall:
        return IoctlCall(self, task, cmd, desc, buf)

    #: The core's permission checks, ``permit(file, task, desc)``.
    ioctl_permit = permit

    def ioctl_oops(self, where: str, exc: BaseException) -> str:
        return f"{self.device.name}: {self.device.record_oops(where, exc).exception}"

    def mmap(self, task: Task, offset: int, length: int, writable: bool) -> Mapping:
        self.check_mmap_access(writable)  # do_mmap's EACCES comes before the driver's
        with self.device.subsystem.clock.lock, self.device.enter():
            if self.control:
                raise InvalidArgument("control nodes cannot be mapped")
            mapping = self.device.driver.mmap(self, offset, length, writable)
            if mapping is None:
                mapping = self._gem_mmap(offset, length, writable)
            self.mappings.append(mapping)
            mapping.on_unmap(self.mappings.remove)
            return mapping

    def _gem_mmap(self, offset: int, length: int, writable: bool) -> Mapping:
        bo = self.device.mmap_offsets.get(offset)
        if bo is None or self.handles.handle_of(bo) is None:
            raise InvalidArgument(f"no buffer object of this file at mmap offset {offset:#x}")
        return bo.mmap(self, offset, length, writable)

    def forget_prime(self, handle: int | None = None) -> None:
        """Drop the prime cache's dma-buf references (of ``handle``, or all)."""
        for buf, h in list(self.prime.items()):
            if handle is None or h == handle:
                del self.prime[buf]
                buf.put()

    def zap_mappings(self) -> None:
        """Tear down this file's CPU mappings (owner released, device unplugged)."""
        for m in list(self.mappings):
            m.zap()

    def read(self, task: Task, size: int, *, nonblock: bool = False) -> bytes:
        """Read whole events (``drm_read``): as many as fit in ``size``.

        Only whole events are copied. If the next event does not fit, it stays
        queued and the read returns what fitted before it — nothing (``b""``, a
        read of 0 bytes) when the first one does not fit, as ``drm_read`` does.
        With no event queued the read blocks (interruptibly) or, with
        ``nonblock``, fails.

        Raises:
            TryAgain: no event and ``nonblock`` (``EAGAIN``).
            RestartSyscall: a signal interrupted the blocking wait.
        """
        clock = self.device.subsystem.clock
        with clock.lock:
            if not self._events:
                if nonblock:
                    raise TryAgain("no event to read")
                task.enter_wait()
                res = clock.wait_until(
                    lambda: bool(self._events), None, lambda: task.signal_pending
                )
                if res is WaitResult.INTERRUPTED:
                    raise RestartSyscall("read of events interrupted")
            out = b""
            while self._events and len(out) + len(self._events[0]) <= size:
                ev = self._events.popleft()
                self._event_bytes -= len(ev)
                out += ev
            return out

    def poll(self) -> int:
        return POLLOUT | (POLLIN if self._events else 0)

    def send_event(self, event_type: int, payload: bytes = b"") -> None:
        """Queue an event (``struct drm_event`` header + payload) for user space.

        Raises:
            NoMemory: the file's event space (4096 bytes) is full.
        """
        data = _EVENT_HEADER.pack(event_type, _EVENT_HEADER.size + len(payload)) + payload
        if self._event_bytes + len(data) > EVENT_SPACE:
            raise NoMemory(f"event space of client {self.client_id} is full")
        self._events.append(data)
        self._event_bytes += len(data)
        self.device.subsystem.clock.notify()

    @property
    def pending_events(self) -> int:
        return len(self._events)

    def release(self) -> None:
        dev = self.device
        with dev.subsystem.clock.lock:
            self._events.clear()
            self._event_bytes = 0
            try:
                dev.ownership.file_released(self)
            except Exception as exc:
                dev.record_oops("context teardown at close", exc)
            self.forget_prime()
            self.handles.clear()
            try:
                dev.driver.postclose(self)
            except Exception as exc:
                dev.record_oops("postclose", exc)
            release_scope("file", self, dev)
            if self in dev.files:
                dev.files.remove(self)
            dev.put()

    def fdinfo(self) -> dict[str, str]:
        """``drm_show_fdinfo`` lines, then the driver's."""
        info = {
            "drm-driver": self.device.driver.name,
            "drm-client-id": str(self.client_id),
        }
        if self.device.parent is not None:
            info["drm-pdev"] = self.device.bus_id
        if self.client_name:
            info["drm-client-name"] = self.client_name
        info["drm-total-memory"] = f"{self.memory_bytes // 1024} KiB"
        info.update(self.device.driver.fdinfo(self))
        return info

    def __repr__(self) -> str:
        role = " owner" if self.is_owner else ""
        return f"<AccelFile {self.device.name} client {self.client_id} pid {self.pid}{role}>"
