"""The client library: :class:`accelcore.Process`'s API across real processes.

:func:`connect` opens a session with the devfs server and returns a
:class:`ClientProcess`. Its descriptors are real descriptors of this process
(sockets whose other end the server holds), so ``os.dup``, ``fork`` and passing
them over a Unix socket (:func:`send_fds`/:func:`recv_fds`) share the open file
as the kernel would; the file is released when the last copy is closed
everywhere, or the last process holding it dies.

User memory is a memfd arena (64 MiB, sparse) mapped here and in the server at
the same address — this process's real address — so pointers inside ioctl
arguments are read and written in place. Arguments passed as buffers or cffi
structs are copied into a per-thread scratch area of the arena and back.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import fcntl
import itertools
import mmap
import os
import signal as _signal
import socket
import stat
import struct
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ..batch import Batch, BatchedIoctl
from ..errors import (
    BadFd,
    InvalidArgument,
    NoDevice,
    NoEntry,
    PermissionDenied,
    error_for_errno,
)
from ..memory import page_align
from ..syscalls import check_mmap_range
from ..task import UserBuffer
from ..userspace import batch_arguments, ioctl_buffer
from . import protocol as p
from .fdtable import is_placeholder
from .server import CONTROL_NAME, default_runtime_dir
from .wire import (
    RecordReader,
    close_all,
    connect_verified,
    recv_fds,
    recv_record,
    send_fds,
    send_record,
)

__all__ = [
    "ARENA_SIZE",
    "ClientMapping",
    "ClientProcess",
    "connect",
    "recv_fds",
    "send_fds",
]

#: Size of each user-memory arena (sparse: untouched pages cost nothing).
ARENA_SIZE = 64 << 20

ArgBuffer = bytearray | memoryview


def _raise_for(msg: p.Message) -> p.Message:
    if isinstance(msg, p.Result) and msg.errno:
        raise error_for_errno(msg.errno, msg.message or os.strerror(msg.errno))
    return msg


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except (OSError, OverflowError):
        return False
    return True


def _address(buf: mmap.mmap) -> int:
    c = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(c)
    finally:
        del c


#: errnos of a send or receive that mean the server end is gone.
_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNABORTED})


class _Channel:
    """The session connection; replies are matched to callers by request id, so
    several threads may have calls in flight (one of them reads for all).

    Once the server has gone (end of file, ``EPIPE``, ``ECONNRESET``), every call,
    also those already waiting, fails with :class:`~accelcore.errors.NoDevice`
    (``ENODEV``), as every call on a file of a hot-unplugged device does."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader = RecordReader(sock)
        self._send_lock = threading.RLock()  # RLock: a signal handler may send
        #: Guards the reply table and the reader's turn; ``_cond`` waits on it.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._waiting = 0
        self._replies: dict[int, tuple[p.Message, list[int]]] = {}
        self._reading = False
        self.rids = itertools.count(1)
        self.inflight = 0
        #: Why the session ended, once the server has gone.
        self.gone: str | None = None

    def _lost(self, why: str) -> NoDevice:
        with self._mutex:
            if self.gone is None:
                self.gone = why
            self._cond.notify_all()
        return NoDevice(f"the devfs server session ended: {self.gone}")

    def send_record(self, data: bytes, fds: Sequence[int], what: str) -> None:
        """Send one encoded record (``what`` names it in errors)."""
        if self.gone is not None:
            raise self._lost(self.gone)
        try:
            with self._send_lock:
                if fds:
                    self.sock.sendmsg(
                        [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    )
                else:
                    self.sock.send(data)
        except OSError as exc:
            if exc.errno in _GONE:
                raise self._lost(f"sending {what}: {exc.strerror}") from None
            raise

    def send(self, msg: p.Message, fds: Sequence[int] = (), rid: int = 0) -> None:
        self.send_record(p.encode(msg, rid), fds, msg.TYPE.name)

    def call(self, msg: p.Message, fds: Sequence[int] = ()) -> tuple[p.Message, list[int]]:
        rid = next(self.rids)
        return self.call_record(p.encode(msg, rid), rid, fds, msg.TYPE.name)

    def call_record(
        self, data: bytes, rid: int, fds: Sequence[int], what: str
    ) -> tuple[p.Message, list[int]]:
        """Send an encoded request of request id ``rid`` and wait for its reply.

        One thread at a time reads; a reply for another caller is left in the
        table for it, and the waiting callers are woken (only when there are)."""
        self.inflight += 1
        try:
            self.send_record(data, fds, what)
            mutex = self._mutex
            while True:
                with mutex:
                    while True:
                        reply = self._replies.pop(rid, None)
                        if reply is not None:
                            return reply
                        if self.gone is not None:
                            raise NoDevice(f"the devfs server session ended: {self.gone}")
                        if not self._reading:
                            self._reading = True
                            break
                        self._waiting += 1
                        try:
                            self._cond.wait()
                        finally:
                            self._waiting -= 1
                try:
                    frame, rfds = self._read()
                except BaseException:
                    with mutex:
                        self._reading = False
                        self._cond.notify_all()
                    raise
                with mutex:
                    self._reading = False
                    if frame.rid != rid:
                        self._replies[frame.rid] = (frame.message, rfds)
                    if self._waiting:  # the next reader, or the caller of that reply
                        self._cond.notify_all()
                if frame.rid == rid:
                    return frame.message, rfds
        finally:
            self.inflight -= 1

    def _read(self) -> tuple[p.Frame, list[int]]:
        try:
            data, fds, _ = self._reader.recv()
        except OSError as exc:
            if exc.errno in _GONE or exc.errno == errno.EBADF:
                raise self._lost(f"receiving: {exc.strerror}") from None
            raise
        if not data:
            raise self._lost("the server closed the connection")
        try:
            frame = p.decode(data)
        except BaseException:
            close_all(fds)
            raise
        if frame.message.fd_count() != len(fds):
            close_all(fds)
            raise p.ProtocolError("reply carries the wrong number of descriptors")
        if frame.rid == 0 and isinstance(frame.message, p.Result):
            # The server refused the session itself (e.g. EMFILE: too many).
            _raise_for(frame.message)
        return frame, fds

    def close(self, *, shutdown: bool) -> None:
        """Close the connection. With ``shutdown`` (the process that owns the
        session is ending it) the socket is shut down first: that wakes a thread
        blocked receiving for a call, which then fails with ``ENODEV``, and the
        server sees the session end even while other copies of the socket exist.
        A forked child that inherited the socket must not shut down its parent's
        session, so it only closes its copy. Replies no caller claimed (their
        caller gave up waiting) have their descriptors closed."""
        if shutdown:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self._lost("the process exited")
        self.sock.close()
        with self._mutex:
            unclaimed, self._replies = self._replies, {}
        for _, fds in unclaimed.values():
            close_all(fds)


class _Arena:
    """A sealed memfd mapped here; first-fit page allocator over it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fd = os.memfd_create("accel-arena", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        self.addr = _address(self.map)
        self.view = memoryview(self.map)
        self._free: list[tuple[int, int]] = [(0, size)]

    def alloc(self, size: int) -> int | None:
        size = page_align(max(size, 1))
        for i, (off, n) in enumerate(self._free):
            if n >= size:
                self._free[i : i + 1] = [(off + size, n - size)] if n > size else []
                return off
        return None

    def release(self, off: int, size: int) -> None:
        size = page_align(max(size, 1))
        self._free.append((off, size))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for o, n in self._free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((o, n))
        self._free = merged

    def contains(self, addr: int, length: int) -> bool:
        return self.addr <= addr and addr + length <= self.addr + self.size

    def close(self) -> None:
        self.view.release()
        with contextlib.suppress(BufferError):  # the program still holds views
            self.map.close()
        os.close(self.fd)


class ClientMapping:
    """A CPU mapping made by :meth:`ClientProcess.mmap`: the server's memory itself."""

    def __init__(
        self,
        proc: ClientProcess,
        mapping_id: int,
        backing: mmap.mmap,
        view: memoryview,
        offset: int,
        writable: bool,
    ) -> None:
        self._proc = proc
        self.mapping_id = mapping_id
        self._backing = backing
        self._view: memoryview | None = view
        self.offset = offset
        self.length = len(view)
        self.writable = writable

    @property
    def view(self) -> memoryview:
        """The mapped bytes."""
        if self._view is None:
            raise BadFd("mapping was unmapped")
        return self._view

    @property
    def mapped(self) -> bool:
        return self._view is not None

    def unmap(self) -> None:
        """``munmap``. Idempotent."""
        if self._view is None:
            return
        self._view.release()
        self._view = None
        with contextlib.suppress(BufferError):
            self._backing.close()
        self._proc._unmapped(self)


class ClientProcess:
    """This process, as a task of the devfs server (see the module docstring).

    Args:
        runtime_dir: The server's runtime directory (default: as the server's).
        restart: ``SA_RESTART``: interrupted ioctls are restarted, not ``EINTR``.
        arena_size: Bytes per user-memory arena.

    Raises:
        NoDevice: no server answers at ``runtime_dir``.
    """

    def __init__(
        self,
        runtime_dir: Path | str | None = None,
        *,
        restart: bool = False,
        arena_size: int = ARENA_SIZE,
    ) -> None:
        self.runtime_dir = Path(runtime_dir) if runtime_dir is not None else default_runtime_dir()
        self._restart = restart
        self._arena_size = page_align(arena_size)
        self._lock = threading.Lock()
        #: Descriptors this object made or was given by a call: number -> the
        #: file's ``(st_dev, st_ino)``; how many of them each file has; and the
        #: session's handle for each file it proved (see :mod:`.protocol`).
        self._fds: dict[int, tuple[int, int]] = {}
        self._nfds: dict[tuple[int, int], int] = {}
        self._handles: dict[tuple[int, int], int] = {}
        self._mappings: dict[int, ClientMapping] = {}
        self._chan: _Channel | None = None
        self._arenas: list[_Arena] = []
        self._exited = False
        self._connect()
        ref = weakref.ref(self)

        def after_fork() -> None:
            obj = ref()
            if obj is not None:
                obj._forked()

        os.register_at_fork(after_in_child=after_fork)

    # -- session -----------------------------------------------------------------
    def _connect(self) -> None:
        try:
            # Checks the listener's uid before anything (HELLO, the arena) is sent.
            sock = connect_verified(self.runtime_dir / CONTROL_NAME)
        except PermissionDenied:
            raise
        except PermissionError as exc:
            raise PermissionDenied(
                f"{self.runtime_dir / CONTROL_NAME}: {exc.strerror} (the runtime "
                "directory's mode keeps this user out)"
            ) from None
        except OSError as exc:
            raise NoDevice(f"no devfs server at {self.runtime_dir}: {exc.strerror}") from exc
        chan = _Channel(sock)
        try:
            msg, _ = chan.call(p.Hello(self._restart, ""))
        except BaseException:
            chan.close(shutdown=False)
            raise
        if not isinstance(msg, p.Welcome):
            chan.close(shutdown=False)
            raise NoDevice(f"devfs server answered HELLO with {msg.TYPE.name}")
        self._chan = chan
        self._pid = os.getpid()
        self.token = msg.token
        fd_fields: dict[int, tuple[int, ...]] = {}
        for cmd, off in msg.fd_offsets:
            key = cmd & 0xFFFF  # type and number: dispatch accepts other sizes too
            if off not in fd_fields.get(key, ()):
                fd_fields[key] = (*fd_fields.get(key, ()), off)
        #: ioctl type and number → offsets of the descriptors its argument carries
        #: (the uAPI headers' ``accel:fd`` fields of the server's machine).
        self.fd_fields = fd_fields
        self.server_pid = msg.server_pid
        self._arenas = []
        self._tls = threading.local()
        self._add_arena(self._arena_size)

    def _forked(self) -> None:
        # The child must not speak on the parent's session (replies would be
        # misrouted, and the server would see the parent's task). Its copy of
        # the socket is dropped; a new session starts at the next call. The
        # inherited arenas stay mapped (they are shared with the parent).
        if self._chan is not None:
            with contextlib.suppress(OSError):
                self._chan.sock.close()
        self._chan = None
        self._mappings = {}
        self._fds = {}
        self._nfds = {}
        self._handles = {}

    def _session(self) -> _Channel:
        if self._exited:
            raise BadFd("process has exited")
        if self._chan is None or os.getpid() != self._pid:
            with self._lock:
                if self._chan is None or os.getpid() != self._pid:
                    self._connect()
        assert self._chan is not None
        if self._chan.gone is not None:
            raise NoDevice(f"the devfs server session ended: {self._chan.gone}")
        return self._chan

    @property
    def pid(self) -> int:
        return os.getpid()

    def _add_arena(self, size: int) -> _Arena:
        arena = _Arena(size)
        try:
            assert self._chan is not None
            _raise_for(self._chan.call(p.AddArena(arena.addr, size), [arena.fd])[0])
        except BaseException:
            arena.close()
            raise
        self._arenas.append(arena)
        return arena

    def _region(self, addr: int, length: int) -> memoryview | None:
        for a in self._arenas:
            if a.contains(addr, length):
                return a.view[addr - a.addr : addr - a.addr + length]
        return None

    # -- descriptors -------------------------------------------------------------------
    def _track(self, fd: int) -> int:
        st = os.fstat(fd)
        self._untrack(fd)  # a number closed behind our back and reused
        key = (st.st_dev, st.st_ino)
        self._fds[fd] = key
        self._nfds[key] = self._nfds.get(key, 0) + 1
        return fd

    def _untrack(self, fd: int) -> tuple[int, int] | None:
        """Forget descriptor ``fd``; returns its file's key if that was this
        process's last descriptor of the file (its handle is dropped)."""
        key = self._fds.pop(fd, None)
        if key is None:
            return None
        left = self._nfds[key] - 1
        if left:
            self._nfds[key] = left
            return None
        del self._nfds[key]
        self._handles.pop(key, None)
        return key

    def open(self, path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
        """``open(2)`` a device node of the server; returns a real descriptor.

        Raises:
            NoEntry: no such node.
            PermissionDenied: the node's mode and group refuse this process.
        """
        self._session()
        token = self.token
        if not path.startswith("/"):
            raise NoEntry(f"device node {path!r} must be an absolute path")
        try:
            sock = connect_verified(self.runtime_dir / path.lstrip("/"))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise NoEntry(f"no device node {path}") from None
        except PermissionDenied:
            raise
        except PermissionError as exc:
            raise PermissionDenied(f"{path}: {exc.strerror}") from None
        try:
            send_record(sock, p.encode(p.Open(flags & ~os.O_CLOEXEC, token)), [sock.fileno()])
            data, fds = recv_record(sock)
            close_all(fds)
            if not data:
                raise NoDevice(f"devfs server closed the connection opening {path}")
            reply = _raise_for(p.decode(data).message)
        except BaseException:
            sock.close()
            raise
        if not flags & os.O_CLOEXEC:
            sock.set_inheritable(True)
        fd = self._track(sock.detach())
        if isinstance(reply, p.Result) and reply.handle:
            self._handles[self._fds[fd]] = reply.handle
        return fd

    def close(self, fd: int) -> None:
        """``close(2)``; the file is released when its last descriptor, in every
        process, is closed — and if this was the last, before ``close`` returns
        (the server is told, and releases it, before replying), so that what the
        release frees (a buffer's export, an ownership pin) is free to use at once.

        Raises:
            BadFd: ``fd`` is not open.
        """
        try:
            st = os.fstat(fd)
            os.close(fd)
        except OSError as exc:
            raise BadFd(f"file descriptor {fd} is not open") from exc
        last = self._untrack(fd) is not None
        if stat.S_ISSOCK(st.st_mode) and not self._exited:
            reply, rfds = self._session().call(p.Close(st.st_dev, st.st_ino, last))
            close_all(rfds)
            _raise_for(reply)

    def dup(self, fd: int) -> int:
        """``dup(2)``: another descriptor for the same open file."""
        try:
            return self._track(os.dup(fd))
        except OSError as exc:
            raise BadFd(f"file descriptor {fd} is not open") from exc

    # -- ioctl -------------------------------------------------------------------------
    def ioctl(self, fd: int, cmd: int, arg: int | ArgBuffer | Any = 0) -> int:
        """``ioctl(2)``, as :meth:`accelcore.Process.ioctl`: ``arg`` is a user
        address, or a buffer or cffi struct copied in and (also on failure) back.

        The target goes by its session handle once proven (see
        :mod:`~accelcore.server.protocol`); descriptors the argument carries (the
        fields its uAPI header marks ``accel:fd``) are sent with the call;
        descriptors the call returns are received close-on-exec and their numbers
        written where the engine put them.

        Raises:
            OSError: an :class:`~accelcore.errors.AccelError` with the errno.
        """
        chan = self._chan
        if chan is None or chan.gone is not None:
            chan = self._session()
        buf: memoryview | None = None
        region: memoryview | None = None
        cmd &= 0xFFFF_FFFF  # unsigned int and unsigned long, as the system call
        if type(arg) is int:  # (and fcntl.ioctl) take them
            argp = arg & 0xFFFF_FFFF_FFFF_FFFF
        else:
            buf = ioctl_buffer(arg)
            argp = 0
            if len(buf):
                scratch = self._scratch(len(buf))
                region = scratch.view[: len(buf)]
                region[:] = buf
                argp = scratch.addr
        key = self._fds.get(fd)
        handle = self._handles.get(key, 0) if key is not None else 0
        offsets = self.fd_fields.get(cmd & 0xFFFF)
        numbers: list[int] = []
        if offsets:
            if region is None:
                region = self._region(argp, (cmd >> 16) & 0x3FFF)
            numbers = self._fd_args(offsets, region)
        rid = next(chan.rids)
        try:
            data = p.encode_ioctl(rid, cmd, argp, fd, handle, numbers)
        except struct.error:  # cmd and argp fit: only the descriptor number can't
            raise BadFd(f"file descriptor {fd} is not open") from None
        try:
            reply, rfds = chan.call_record(
                data, rid, numbers if handle else [fd, *numbers], "IOCTL"
            )
        except OSError as exc:
            if exc.errno == errno.EBADF:  # from sendmsg: the target is not open here
                raise BadFd(f"file descriptor {fd} is not open") from None
            raise
        return self._complete(fd, key, argp, buf, region, reply, rfds)

    def _complete(
        self,
        fd: int,
        key: tuple[int, int] | None,
        argp: int,
        buf: memoryview | None,
        region: memoryview | None,
        reply: p.Message,
        rfds: list[int],
    ) -> int:
        """Finish an ioctl from its RESULT: learn the target's handle, install the
        descriptors it returned, copy a buffer argument back; return or raise."""
        try:
            if not isinstance(reply, p.Result):
                raise NoDevice(f"devfs server answered IOCTL with {reply.TYPE.name}")
            if reply.handle and key is not None and fd in self._fds:
                self._handles[key] = reply.handle
            ret = 0
            if not reply.errno:
                if rfds:
                    if region is None:
                        region = self._region(argp, len(buf) if buf is not None else 0)
                    ret = self._patch(reply, rfds, region)
                    rfds = []
                else:
                    ret = reply.ret
        finally:
            close_all(rfds)
            if buf is not None and region is not None and not buf.readonly:
                buf[:] = region
        _raise_for(reply)
        return ret

    def _fd_args(self, offsets: tuple[int, ...], region: memoryview | None) -> list[int]:
        """The descriptors open here that the argument's ``accel:fd`` fields name
        (one that is not open is not sent: the engine answers ``EBADF``)."""
        out = []
        for off in offsets:
            if region is None or off + 4 > len(region):
                continue
            n = int.from_bytes(region[off : off + 4], "little", signed=True)
            if _is_open(n):
                out.append(n)
        return out

    def _patch(self, reply: p.Result, rfds: list[int], region: memoryview | None) -> int:
        real = dict(zip(reply.placeholders, rfds, strict=True))
        for fd in rfds:
            self._track(fd)
        if region is not None and real:
            words = region[: len(region) - len(region) % 4].cast("i")
            for i, v in enumerate(words):
                if is_placeholder(v) and v in real:
                    words[i] = real[v]
            words.release()
        return real.get(reply.ret, reply.ret)

    # -- batches ---------------------------------------------------------------------
    def batch(self) -> Batch:
        """Ioctls to submit together (:mod:`accelcore.batch`): up to
        :data:`~.protocol.MAX_BATCH` calls travel in one BATCH record and come back
        in one BATCH_RESULT, each call run by the server exactly as if it had come
        alone. A batch longer than a record allows, or one in which a call returns
        descriptors (a reply carries at most :data:`~.protocol.MAX_FDS`), goes in
        several records, transparently."""
        return Batch(self._run_batch)

    def _run_batch(self, calls: Sequence[BatchedIoctl]) -> None:
        pending = list(calls)
        inputs = batch_arguments(pending)  # read now, before any call runs
        while pending:
            done = self._run_record(pending, inputs)
            pending, inputs = pending[done:], inputs[done:]

    def _run_record(
        self, calls: Sequence[BatchedIoctl], inputs: Sequence[bytes | OSError | None]
    ) -> int:
        """Send as many of ``calls`` as one record takes; complete those the server
        ran (it stops after a call that returned descriptors) and say how many."""
        chan = self._session()
        staged: list[tuple[BatchedIoctl, tuple[int, int] | None, int, memoryview | None]] = []
        entries: list[p.Ioctl] = []
        sent: list[int] = []
        sizes = [len(x) if isinstance(x, bytes) else 0 for x in inputs[: p.MAX_BATCH]]
        scratch = self.alloc(max(8, sum((n + 7) & ~7 for n in sizes)))
        at = 0
        try:
            for call, data, size in zip(calls, inputs, sizes, strict=False):
                try:
                    region: memoryview | None = None
                    if isinstance(data, OSError):
                        raise data  # not an argument kind: EINVAL
                    if data is None:
                        argp = call.arg & 0xFFFF_FFFF_FFFF_FFFF
                    else:
                        argp = scratch.addr + at if size else 0
                        region = scratch.view[at : at + size]
                        region[:] = data
                        at += (size + 7) & ~7
                    if not -(1 << 31) <= call.fd < 1 << 31:
                        raise BadFd(f"file descriptor {call.fd} is not open")
                    key = self._fds.get(call.fd)
                    handle = self._handles.get(key, 0) if key is not None else 0
                    if not handle and not _is_open(call.fd):
                        raise BadFd(f"file descriptor {call.fd} is not open")
                    offsets = self.fd_fields.get(call.cmd & 0xFFFF)
                    numbers: list[int] = []
                    if offsets:
                        if region is None:
                            region = self._region(argp, (call.cmd >> 16) & 0x3FFF)
                        numbers = self._fd_args(offsets, region)
                except OSError as exc:
                    # What would fail before reaching the server alone (a bad
                    # argument, a descriptor not open: sent, it would fail the
                    # whole record's sendmsg) fails alone, first in a record of
                    # its own; the calls after it still run.
                    if entries:
                        break
                    call.set_error(exc)
                    return 1
                carried = numbers if handle else [call.fd, *numbers]
                if entries and len(sent) + len(carried) > p.MAX_FDS:
                    break
                entries.append(
                    p.Ioctl(call.cmd & 0xFFFF_FFFF, argp, call.fd, handle, tuple(numbers))
                )
                sent += carried
                staged.append((call, key, argp, region))
            rid = next(chan.rids)
            try:
                data = p.encode(p.Batch(tuple(entries)), rid)
            except (struct.error, p.ProtocolError) as exc:
                raise InvalidArgument(f"a batched ioctl does not fit the protocol: {exc}") from None
            reply, rfds = chan.call_record(data, rid, sent, "BATCH")
            if isinstance(reply, p.Result):  # the record as a whole was refused
                close_all(rfds)
                _raise_for(reply)
            if not isinstance(reply, p.BatchResult) or len(reply.results) > len(staged):
                close_all(rfds)
                raise NoDevice(f"devfs server answered BATCH with {reply.TYPE.name}")
            for (call, key, argp, region), res in zip(staged, reply.results, strict=False):
                mine, rfds = rfds[: len(res.placeholders)], rfds[len(res.placeholders) :]
                buf = ioctl_buffer(call.arg) if type(call.arg) is not int else None
                try:
                    call.set_result(self._complete(call.fd, key, argp, buf, region, res, mine))
                except OSError as exc:
                    call.set_error(exc)
            return len(reply.results)
        finally:
            self.free(scratch)

    def _target(self, fd: int) -> tuple[int, list[int]]:
        """A request's target: ``(handle, [])`` once the session proved ``fd``'s
        file, else ``(0, [fd])`` (the descriptor travels with the request)."""
        key = self._fds.get(fd)
        handle = self._handles.get(key, 0) if key is not None else 0
        return handle, [] if handle else [fd]

    def _scratch(self, size: int) -> UserBuffer:
        cur: UserBuffer | None = getattr(self._tls, "scratch", None)
        if cur is None or len(cur) < size:
            if cur is not None:
                self.free(cur)
            cur = self.alloc(max(size, 4096))
            self._tls.scratch = cur
        return cur

    # -- memory ------------------------------------------------------------------------
    def alloc(self, size: int) -> UserBuffer:
        """User memory shared with the server; its ``addr`` can go in ioctl structs."""
        if size <= 0:
            raise InvalidArgument(f"allocation size {size} must be positive")
        self._session()
        with self._lock:
            for a in self._arenas:
                off = a.alloc(size)
                if off is not None:
                    break
            else:
                a = self._add_arena(max(self._arena_size, page_align(size)))
                off = a.alloc(size)
                assert off is not None
        return UserBuffer(a.addr + off, a.view[off : off + size])

    def free(self, buf: UserBuffer) -> None:
        """Free memory from :meth:`alloc`."""
        with self._lock:
            for a in self._arenas:
                if a.contains(buf.addr, len(buf)):
                    a.release(buf.addr - a.addr, len(buf))
                    return
        raise InvalidArgument(f"{buf.addr:#x} was not allocated by this process")

    def mmap(self, fd: int, length: int, offset: int = 0, *, write: bool = True) -> ClientMapping:
        """``mmap(2)``: maps the very memory the server's object uses.

        Raises:
            InvalidArgument: see :func:`accelcore.syscalls.check_mmap_range`.
        """
        check_mmap_range(offset, length)
        handle, carried = self._target(fd)
        reply, rfds = self._session().call(p.Mmap(offset, length, write, handle, fd), carried)
        try:
            _raise_for(reply)
            if not isinstance(reply, p.Mapped):
                raise NoDevice(f"devfs server answered MMAP with {reply.TYPE.name}")
            aligned = reply.memfd_offset - reply.memfd_offset % mmap.ALLOCATIONGRANULARITY
            delta = reply.memfd_offset - aligned
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if write else 0)
            backing = mmap.mmap(
                rfds[0], delta + reply.length, mmap.MAP_SHARED, prot, offset=aligned
            )
        finally:
            close_all(rfds)
        view = memoryview(backing)[delta : delta + reply.length]
        m = ClientMapping(self, reply.mapping_id, backing, view, offset, write)
        self._mappings[m.mapping_id] = m
        return m

    def munmap(self, mapping: ClientMapping) -> None:
        """``munmap(2)``."""
        mapping.unmap()

    def _unmapped(self, mapping: ClientMapping) -> None:
        if self._mappings.pop(mapping.mapping_id, None) is not None and self._chan is not None:
            # If the session is gone, the server dropped the mapping with it.
            with contextlib.suppress(OSError, p.ProtocolError):
                _raise_for(self._chan.call(p.Munmap(mapping.mapping_id))[0])

    def memfd_create(self, name: str, size: int) -> int:
        """``memfd_create(2)`` + ``ftruncate``: a real memfd (sealable)."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        return self._track(fd)

    def add_seals(self, fd: int, seals: int) -> None:
        """``fcntl(fd, F_ADD_SEALS, seals)`` on a memfd."""
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        except OSError as exc:
            raise error_for_errno(exc.errno or 22, f"fd {fd}: {exc.strerror}") from None

    # -- events ------------------------------------------------------------------------
    def read(self, fd: int, size: int, *, nonblock: bool = False) -> bytes:
        """``read(2)``: events from an accel file (interruptible by :meth:`signal`)."""
        handle, carried = self._target(fd)
        reply, rfds = self._session().call(p.Read(size, nonblock, handle, fd), carried)
        close_all(rfds)
        _raise_for(reply)
        return reply.data if isinstance(reply, p.Data) else b""

    def poll(self, fd: int) -> int:
        """The ready mask of ``fd`` now (``POLLIN``, ``POLLOUT``)."""
        handle, carried = self._target(fd)
        reply, rfds = self._session().call(p.Poll(handle, fd), carried)
        close_all(rfds)
        _raise_for(reply)
        return reply.ret if isinstance(reply, p.Result) else 0

    def signal(self) -> None:
        """Deliver a signal to this task: its current or next wait in the server is
        interrupted (``EINTR``, or a restart with ``restart=True``)."""
        self._session().send(p.Signal())

    def install_sigint_handler(self) -> None:
        """Make Ctrl-C interrupt a call blocked in the server (it fails with
        ``EINTR``); with no call in flight, Ctrl-C raises ``KeyboardInterrupt``."""

        def handler(signum: int, frame: FrameType | None) -> None:
            chan = self._chan
            if chan is not None and chan.inflight:
                chan.send(p.Signal())
            else:
                raise KeyboardInterrupt

        _signal.signal(_signal.SIGINT, handler)

    # -- exit --------------------------------------------------------------------------
    def exit(self) -> None:
        """End the session: descriptors this object made and still open are closed
        (files they were the last copies of are released before this returns, as
        by :meth:`close`), mappings dropped, the server-side task exits. Idempotent."""
        if self._exited:
            return
        for m in list(self._mappings.values()):
            m.unmap()
        closed = []
        for fd, key in list(self._fds.items()):
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == key:
                    os.close(fd)
                    closed.append(key)
            except OSError:
                pass
        self._fds.clear()
        self._nfds.clear()
        self._handles.clear()
        if self._chan is not None and os.getpid() == self._pid:
            # As close(): what these were the last copies of is released before
            # exit() returns (the server may be gone already: nothing to release).
            for key in closed:
                with contextlib.suppress(OSError, ConnectionError, p.ProtocolError):
                    self._chan.call(p.Close(*key))
        self._exited = True
        if self._chan is not None:
            self._chan.close(shutdown=os.getpid() == self._pid)
            self._chan = None
        # The per-thread scratch buffers are views of the arenas: drop them first,
        # or the arenas' mappings (and their descriptors) outlive the session.
        self._tls = threading.local()
        for a in self._arenas:
            a.close()
        self._arenas = []

    kill = exit

    def __enter__(self) -> ClientProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.exit()

    def __repr__(self) -> str:
        return f"<ClientProcess pid={os.getpid()} server={self.runtime_dir}>"


def connect(runtime_dir: Path | str | None = None, *, restart: bool = False) -> ClientProcess:
    """Open a session with the devfs server at ``runtime_dir``.

    Raises:
        NoDevice: no server answers there.
    """
    return ClientProcess(runtime_dir, restart=restart)
