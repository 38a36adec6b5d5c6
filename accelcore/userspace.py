"""The in-process user API: a program's view of the subsystem, as system calls.

A :class:`Process` is a user program living in this interpreter: it opens device
nodes and gets file descriptors, calls ioctls with argument structs, maps
buffers, reads and polls events, passes and duplicates descriptors, forks, and
exits. It is a thin adapter over the system-call layer (:mod:`accelcore.syscalls`),
which does the locking, descriptor resolution and restarts; this module only
marshals Python arguments (structs and buffers into user memory and back). The
same surface exists across real processes in :mod:`accelcore.server`'s client,
so code written against one runs on the other.

>>> from accelcore.testing import vaccel_subsystem
>>> sub, dev = vaccel_subsystem()
>>> proc = Process(sub)
>>> fd = proc.open("/dev/accel/accel0")
>>> v = CORE.new("struct drm_version")
>>> proc.ioctl(fd, CORE.DRM_IOCTL_VERSION, v)
0
>>> v.version_major, v.name_len
(1, 6)
>>> proc.close(fd)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .batch import Batch, BatchedIoctl
from .errors import InvalidArgument
from .subsystem import Subsystem
from .syscalls import Syscalls
from .task import Task, UserBuffer
from .uapi import CORE
from .udmabuf import MemfdFile
from .vfs import Mapping

__all__ = ["Process", "batch_arguments", "ioctl_buffer"]

ArgBuffer = bytearray | memoryview


class Process:
    """A user program in this interpreter.

    Args:
        subsystem: The subsystem it talks to.
        uid, gid, groups: Its credentials (uid 0 is root and has ``CAP_SYS_ADMIN``).
        comm: Its command name.
        restart: ``SA_RESTART``: interrupted ioctls are restarted, not ``EINTR``.
        task: Adopt an existing task instead of making one.
    """

    def __init__(
        self,
        subsystem: Subsystem,
        *,
        uid: int = 0,
        gid: int = 0,
        groups: tuple[int, ...] = (),
        comm: str = "python",
        restart: bool = False,
        task: Task | None = None,
    ) -> None:
        self.subsystem = subsystem
        self.task = (
            task
            if task is not None
            else subsystem.new_task(
                uid=uid, gid=gid, groups=groups, comm=comm, restart_syscalls=restart
            )
        )
        #: The system-call layer this process is an adapter over.
        self.syscalls = Syscalls(subsystem)
        self._scratch: UserBuffer | None = None

    @property
    def pid(self) -> int:
        return self.task.pid

    # -- descriptors -----------------------------------------------------------
    def open(self, path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
        """``open(2)`` a device node; returns the descriptor."""
        return self.syscalls.open(self.task, path, flags)

    def close(self, fd: int) -> None:
        """``close(2)``; the file is released when its last descriptor closes."""
        self.syscalls.close(self.task, fd)

    def dup(self, fd: int) -> int:
        """``dup(2)``: another descriptor for the same open file description."""
        return self.syscalls.dup(self.task, fd)

    def send_fd(self, fd: int, to: Process) -> int:
        """Pass a descriptor to another process (``SCM_RIGHTS``); returns its number there."""
        return self.syscalls.send_fd(self.task, fd, to.task)

    def fork(self) -> Process:
        """``fork(2)``: a child sharing every open file description."""
        return Process(self.subsystem, task=self.subsystem.fork_task(self.task))

    def exit(self) -> None:
        """Process exit (also what a SIGKILL does): every descriptor is closed."""
        with self.syscalls.lock:
            self._scratch = None
            self.syscalls.exit(self.task)

    kill = exit

    # -- ioctl -----------------------------------------------------------------------
    def ioctl(self, fd: int, cmd: int, arg: int | ArgBuffer | Any = 0) -> int:
        """``ioctl(2)``. ``arg`` is a user address, or a struct/buffer as with
        :func:`fcntl.ioctl`: it is copied into user memory, and whatever the
        kernel copied out is copied back into it (also when the call fails).

        Returns:
            The ioctl's return value.

        Raises:
            OSError: an :class:`~accelcore.errors.AccelError` with the errno.
        """
        cmd &= 0xFFFF_FFFF  # an unsigned int, as the system call (and fcntl.ioctl) take it
        if isinstance(arg, int):
            return self.syscalls.ioctl(self.task, fd, cmd, arg)
        buf = ioctl_buffer(arg)
        n = len(buf)
        if n == 0:
            return self.syscalls.ioctl(self.task, fd, cmd, 0)
        scratch = self._scratch
        if scratch is None or len(scratch.view) < n:
            scratch = self._new_scratch(n)
        view = scratch.view
        view[:n] = buf
        try:
            return self.syscalls.ioctl(self.task, fd, cmd, scratch.addr)
        finally:
            if not buf.readonly:
                buf[:n] = view[:n]

    def batch(self) -> Batch:
        """Ioctls to submit together (:mod:`accelcore.batch`): in process they run
        one after another, each exactly as :meth:`ioctl` would run it."""
        return Batch(self._run_batch)

    def _run_batch(self, calls: Sequence[BatchedIoctl]) -> None:
        inputs = batch_arguments(calls)  # read now, before any call runs
        offsets, total = [], 0
        for data in inputs:
            offsets.append(total)
            if isinstance(data, bytes):
                total += (len(data) + 7) & ~7
        with self.syscalls.lock:
            scratch = self.task.mm.alloc(total, "ioctl-args") if total else None
        try:
            for call, data, at in zip(calls, inputs, offsets, strict=True):
                if isinstance(data, OSError):
                    call.set_error(data)  # not an argument: fails alone, as alone
                    continue
                view = None
                arg = call.arg
                if data is not None:
                    arg = 0
                    if data and scratch is not None:
                        view = scratch.view[at : at + len(data)]
                        view[:] = data
                        arg = scratch.addr + at
                try:
                    ret = self.syscalls.ioctl(self.task, call.fd, call.cmd & 0xFFFF_FFFF, arg)
                    call.set_result(ret)
                except OSError as exc:
                    call.set_error(exc)
                finally:
                    if view is not None:
                        out = ioctl_buffer(call.arg)
                        if not out.readonly:
                            out[: len(view)] = view
        finally:
            if scratch is not None:
                with self.syscalls.lock:
                    self.task.mm.free(scratch)

    def _new_scratch(self, size: int) -> UserBuffer:
        """The user memory :meth:`ioctl` copies arguments through, grown to ``size``."""
        with self.syscalls.lock:
            if self._scratch is not None:
                self.task.mm.free(self._scratch)
            self._scratch = self.task.mm.alloc(max(size, 4096), "ioctl-args")
        return self._scratch

    # -- memory ----------------------------------------------------------------------
    def alloc(self, size: int) -> UserBuffer:
        """Allocate user memory (``malloc``); its ``addr`` can go in ioctl structs."""
        with self.syscalls.lock:
            return self.task.mm.alloc(size)

    def free(self, buf: UserBuffer) -> None:
        """Free memory from :meth:`alloc`."""
        with self.syscalls.lock:
            self.task.mm.free(buf)

    def mmap(self, fd: int, length: int, offset: int = 0, *, write: bool = True) -> Mapping:
        """``mmap(2)`` of ``length`` bytes at ``offset`` of the file."""
        return self.syscalls.mmap(self.task, fd, offset, length, write=write)

    def munmap(self, mapping: Mapping) -> None:
        """``munmap(2)``."""
        self.syscalls.munmap(self.task, mapping)

    def memfd_create(self, name: str, size: int) -> int:
        """``memfd_create(2)`` + ``ftruncate``: a descriptor for new shared memory."""
        return self.syscalls.memfd_create(self.task, name, size)

    def add_seals(self, fd: int, seals: int) -> None:
        """``fcntl(fd, F_ADD_SEALS, seals)`` on a memfd."""
        file = self.task.files.get(fd)
        if not isinstance(file, MemfdFile):
            raise InvalidArgument(f"fd {fd} is not a memfd")
        file.add_seals(seals)

    # -- events ----------------------------------------------------------------------
    def read(self, fd: int, size: int, *, nonblock: bool = False) -> bytes:
        """``read(2)``: events from an accel file; a signal gives ``EINTR`` (or a
        restart, with ``SA_RESTART``), as for :meth:`ioctl`."""
        return self.syscalls.read(self.task, fd, size, nonblock=nonblock)

    def poll(self, fd: int) -> int:
        """The ready mask of ``fd`` now (``POLLIN``, ``POLLOUT``)."""
        return self.syscalls.poll(self.task, fd)

    def signal(self) -> None:
        """Deliver a signal: the process's current or next wait is interrupted."""
        self.syscalls.signal(self.task)

    def __repr__(self) -> str:
        return f"<Process pid={self.pid}>"


#: Any cffi object (of any header: they share one backend), and its buffer.
_CDATA = CORE.ffi.CData
_BUFFER = CORE.ffi.buffer


def batch_arguments(calls: Sequence[BatchedIoctl]) -> list[bytes | OSError | None]:
    """What each call of a batch passes as its argument, read when the batch is
    submitted, before any of its calls runs (so every transport runs a batch on
    the same inputs): the bytes of a buffer or struct, ``None`` for a user
    address, or the error of an argument of no kind (that call fails alone)."""
    out: list[bytes | OSError | None] = []
    for call in calls:
        if isinstance(call.arg, int):
            out.append(None)
            continue
        try:
            out.append(bytes(ioctl_buffer(call.arg)))
        except OSError as exc:
            out.append(exc)
    return out


def ioctl_buffer(arg: Any) -> memoryview:
    """The bytes of an ioctl argument given as a buffer or a cffi struct (a flat view;
    read-only for ``bytes``, so nothing is copied back into it).

    Raises:
        InvalidArgument: ``arg`` is neither.
    """
    if isinstance(arg, _CDATA):  # the common case first: one type to test
        try:
            mv = memoryview(_BUFFER(arg))
        except TypeError as exc:
            raise InvalidArgument(
                f"ioctl argument {arg!r} is not an address, a buffer or a cffi struct"
            ) from exc
    elif isinstance(arg, bytearray | memoryview | bytes):
        mv = memoryview(arg)
    else:
        raise InvalidArgument(
            f"ioctl argument {arg!r} is not an address, a buffer or a cffi struct"
        )
    return mv.cast("B") if mv.format != "B" else mv
