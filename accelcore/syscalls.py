"""The system-call layer: the one way a transport reaches the engine.

Every transport is an adapter over :class:`Syscalls`: the in-process
:class:`~accelcore.Process`, and the server's session (:mod:`accelcore.server`),
which serves Python clients and the native ``LD_PRELOAD`` shim alike. A
transport brings the calling :class:`~accelcore.task.Task`, descriptor numbers
and user addresses; this layer does the rest, the same way for all of them:

**Locking.** Every call holds the engine lock (``clock.lock``) from resolving its
descriptor to its return. A handler that waits releases it while it sleeps
(:meth:`~accelcore.clock.Clock.wait_until`), so other calls run meanwhile.

**Descriptor resolution.** Numbers resolve through ``task.files``: the task's own
``FdTable`` in process; in the server, a table that holds for the length of
one call the descriptors the client sent with it (``ServerFdTable``). A number that is not open is
``EBADF``. Which argument fields carry descriptors is declared in the uAPI
header (``accel:fd``), so a transport whose descriptors live in another process
knows what to send with no per-driver code (:func:`fd_offsets`).

**Restart.** A handler interrupted by a signal raises
:class:`~accelcore.errors.RestartSyscall` (after copying its arguments out). The
layer delivers the signal and, if the task has ``SA_RESTART``, issues the call
again, which reads its arguments from user memory afresh, as the kernel does
after ``-ERESTARTSYS``; otherwise the call fails with ``EINTR``. A signal that
arrives as a call completes is delivered on the way out, so it does not
interrupt the next call.

**May it sleep.** :func:`ioctl_may_sleep` and :func:`read_may_sleep` say whether
a call can block: only ioctls whose table row declares ``waits=True`` and
blocking reads. A transport may run every other call inline and needs an
interruptible worker only for these.

>>> from accelcore.testing import vaccel_subsystem
>>> sub, dev = vaccel_subsystem()
>>> from accelcore.vfs import POLLOUT
>>> calls = Syscalls(sub)
>>> task = sub.new_task()
>>> fd = calls.open(task, "/dev/accel/accel0")
>>> calls.poll(task, fd) & POLLOUT != 0
True
>>> calls.close(task, fd)
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .errors import Interrupted, InvalidArgument, RestartSyscall, error_for_errno
from .memory import PAGE_SIZE, SharedMemory
from .uapi import CORE
from .udmabuf import MemfdFile
from .vfs import Mapping, OpenFile

if TYPE_CHECKING:
    from .driver import IoctlDesc
    from .subsystem import Subsystem
    from .task import Task

__all__ = [
    "Syscalls",
    "check_mmap_range",
    "fd_offsets",
    "ioctl_desc",
    "ioctl_may_sleep",
    "read_may_sleep",
]

_T = TypeVar("_T")


class Syscalls:
    """The system calls of one subsystem (see the module docstring for the contract).

    Args:
        subsystem: The subsystem the calls reach.
    """

    def __init__(self, subsystem: Subsystem) -> None:
        self.subsystem = subsystem
        self.lock = subsystem.clock.lock

    # -- descriptors -------------------------------------------------------------
    def open(self, task: Task, path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
        """``open(2)`` a device node; returns the new descriptor.

        Raises:
            NoEntry: no such node. PermissionDenied: its mode refuses the task.
            TooManyFiles: the task's table is full (``EMFILE``).
        """
        with self.lock:
            file = self.open_file(task, path, flags)
            return self._install(task, file, cloexec=bool(flags & os.O_CLOEXEC))

    def open_file(self, task: Task, path: str, flags: int = os.O_RDWR) -> OpenFile:
        """The open file description ``open(2)`` makes, not yet given a descriptor
        (for a transport that holds files itself, as the server holds one per
        node connection). A driver's open that sleeps is restarted or fails with
        ``EINTR``, as an ioctl is.

        Raises:
            As :meth:`accelcore.Subsystem.open`; Interrupted: a signal, without
            ``SA_RESTART``.
        """
        with self.lock:
            return self._restarting(
                task, lambda: self.subsystem.open(task, path, flags), lambda: f"open of {path}"
            )

    def close(self, task: Task, fd: int) -> None:
        """``close(2)``; the file is released when its last reference goes.

        Raises:
            BadFd: ``fd`` is not open.
        """
        with self.lock:
            task.files.close(fd)

    def dup(self, task: Task, fd: int) -> int:
        """``dup(2)``: another descriptor for the same open file description."""
        with self.lock:
            return task.files.dup(fd)

    def send_fd(self, task: Task, fd: int, to: Task) -> int:
        """Pass ``fd`` of ``task`` to task ``to`` (``SCM_RIGHTS``); its number there."""
        with self.lock:
            return self._install(to, task.files.get(fd).get(), cloexec=True)

    def memfd_create(self, task: Task, name: str, size: int) -> int:
        """``memfd_create(2)`` + ``ftruncate``: a descriptor for new shared memory."""
        with self.lock:
            return self._install(task, MemfdFile(SharedMemory(size, name)), cloexec=True)

    def _install(self, task: Task, file: OpenFile, *, cloexec: bool) -> int:
        try:
            return task.files.install(file, cloexec=cloexec)
        except BaseException:
            file.put()
            raise

    # -- ioctl and read --------------------------------------------------------------
    def ioctl(self, task: Task, fd: int, cmd: int, argp: int) -> int:
        """``ioctl(2)`` with its argument at user address ``argp``.

        Returns:
            The ioctl's return value.

        Raises:
            BadFd: ``fd`` is not open.
            Interrupted: a signal interrupted it and the task has no ``SA_RESTART``.
            AccelError: the ioctl's errno.
        """
        lock = self.lock
        lock.acquire()  # not ``with``: its __enter__/__exit__ protocol costs twice as much
        try:
            file = task.files.get(fd)
            try:
                return file.ioctl(task, cmd, argp)
            except RestartSyscall:
                return self._restart(
                    task, lambda: file.ioctl(task, cmd, argp), lambda: _ioctl_name(file, cmd)
                )
            finally:
                # A signal that arrived as the call completed is delivered on the way
                # back to user space; it must not interrupt the next call.
                if task.signal_pending:
                    task.deliver_signal()
        finally:
            lock.release()

    def read(self, task: Task, fd: int, size: int, *, nonblock: bool = False) -> bytes:
        """``read(2)``: events from an accel file, interruptible and restartable as
        :meth:`Syscalls.ioctl`.

        Raises:
            TryAgain: nothing to read and ``nonblock``.
        """
        with self.lock:
            file = task.files.get(fd)
            return self._restarting(
                task,
                lambda: file.read(task, size, nonblock=nonblock),
                lambda: f"read of fd {fd}",
            )

    def _restarting(self, task: Task, call: Callable[[], _T], what: Callable[[], str]) -> _T:
        try:
            try:
                return call()
            except RestartSyscall:
                return self._restart(task, call, what)
        finally:
            # A signal that arrived as the call completed is delivered on the way
            # back to user space; it must not interrupt the next call.
            task.deliver_signal()

    def _restart(self, task: Task, call: Callable[[], _T], what: Callable[[], str]) -> _T:
        """After ``call`` raised RestartSyscall: deliver the signal, then issue it
        again (``SA_RESTART``) until it completes, or fail with ``EINTR``."""
        while True:
            task.deliver_signal()
            if not task.restart_syscalls:
                raise Interrupted(f"{what()} interrupted by a signal") from None
            try:
                return call()
            except RestartSyscall:
                continue

    # -- memory and readiness ----------------------------------------------------------
    def mmap(self, task: Task, fd: int, offset: int, length: int, *, write: bool) -> Mapping:
        """``mmap(2)`` of ``length`` bytes at ``offset`` of the file; the mapping is
        the task's until :meth:`Syscalls.munmap` or exit.

        Raises:
            InvalidArgument: see :func:`check_mmap_range`, or the file refuses the range.
            NoDevice: the file cannot be mapped.
        """
        check_mmap_range(offset, length)
        with self.lock:
            mapping = task.files.get(fd).mmap(task, offset, length, write)
            task.mappings.append(mapping)

            def forget(m: Mapping) -> None:
                if m in task.mappings:
                    task.mappings.remove(m)

            mapping.on_unmap(forget)
            return mapping

    def munmap(self, task: Task, mapping: Mapping) -> None:
        """``munmap(2)``. Idempotent."""
        with self.lock:
            mapping.unmap()

    def poll(self, task: Task, fd: int) -> int:
        """The ready mask of ``fd`` now (``POLLIN``, ``POLLOUT``)."""
        with self.lock:
            return task.files.get(fd).poll()

    # -- signals and exit ------------------------------------------------------------
    def signal(self, task: Task) -> None:
        """Post a signal: the task's current or next wait is interrupted."""
        with self.lock:
            task.post_signal()
            self.subsystem.clock.notify()

    def exit(self, task: Task) -> None:
        """Process exit (also what SIGKILL does): mappings dropped, every descriptor closed."""
        with self.lock:
            self.subsystem.exit_task(task)


def check_mmap_range(offset: int, length: int) -> None:
    """The checks ``mmap(2)`` makes before any file sees the call: a positive
    length, a page-aligned offset, and a range that does not wrap the 64-bit
    offset space (``ksys_mmap_pgoff`` takes the offset unsigned, so drivers such
    as amdkfd encode a type in its top bits; ``do_mmap`` refuses a wrap with
    ``EOVERFLOW``). Every transport runs them, the client before it encodes.

    Raises:
        InvalidArgument: ``length`` is not positive, or ``offset`` is negative,
            not a multiple of the page size, or not below 2**64.
        AccelError: ``EOVERFLOW``, ``offset + length`` wraps past 2**64.
    """
    if length <= 0:
        raise InvalidArgument(f"mmap length {length} must be positive")
    if not 0 <= offset < 1 << 64 or offset % PAGE_SIZE:
        raise InvalidArgument(
            f"mmap offset {offset:#x} must be a page-aligned unsigned 64-bit offset"
        )
    if offset + length > 1 << 64:
        raise error_for_errno(
            errno.EOVERFLOW, f"mmap range [{offset:#x}, +{length:#x}) wraps the offset space"
        )


def ioctl_desc(file: OpenFile, cmd: int) -> IoctlDesc | None:
    """The table row ``file`` would run for ``cmd``, or ``None`` (no such ioctl, or a
    file whose ioctls are not table-driven)."""
    lookup = getattr(file, "ioctl_lookup", None)
    return lookup(cmd) if lookup is not None else None


def ioctl_may_sleep(file: OpenFile, cmd: int) -> bool:
    """Whether ioctl ``cmd`` on ``file`` can block: its row declares ``waits=True``.

    A file with no table to look in (a driver's own ``ioctl`` override) may sleep.
    """
    if getattr(file, "ioctl_lookup", None) is None:
        return type(file).ioctl is not OpenFile.ioctl
    desc = ioctl_desc(file, cmd)
    return desc is not None and desc.waits


def read_may_sleep(file: OpenFile, *, nonblock: bool) -> bool:
    """Whether a read can block (any read without ``O_NONBLOCK`` of a readable file)."""
    return not nonblock and type(file).read is not OpenFile.read


def fd_offsets(subsystem: Subsystem) -> dict[int, tuple[int, ...]]:
    """For each ioctl number of the core and of every registered driver, the offsets
    of the descriptors its argument carries (the header's ``accel:fd`` fields).

    Where two drivers define the same number with different layouts, the offsets are
    merged: a transport then sends a descriptor the handler does not read, which
    costs nothing but the transfer.
    """
    table: dict[int, set[int]] = {}
    uapis = [CORE, *(d.uapi for d in subsystem.drivers.values() if d.uapi is not None)]
    for uapi in uapis:
        for d in uapi.ioctls.values():
            if d.fd_offsets:
                table.setdefault(d.cmd, set()).update(d.fd_offsets)
    return {cmd: tuple(sorted(offs)) for cmd, offs in table.items()}


def _ioctl_name(file: OpenFile, cmd: int) -> str:
    desc = ioctl_desc(file, cmd)
    return desc.name if desc is not None else f"ioctl {cmd:#010x}"
