"""Native client mode: the client's own memory and descriptors, reached from the server.

A program run under ``accelctl run`` keeps its ioctl arguments, and the buffers
their pointers name, in its ordinary memory (stack, ``malloc``). In the kernel,
``copy_from_user`` reads the caller's address space; here the server reads and
writes the client's memory with ``process_vm_readv``/``process_vm_writev`` on
its pid, which the kernel allows the server exactly when it may ``ptrace``-attach
the client (``PTRACE_MODE_ATTACH_REALCREDS``: same uid or ``CAP_SYS_PTRACE``,
and Yama's ``ptrace_scope``). So every driver's embedded pointers work as they do
in the kernel, with no table of pointer fields, and a bad pointer is ``EFAULT``.

Descriptor numbers in ioctl arguments (``PRIME_FD_TO_HANDLE``'s ``fd``, a
driver's ``drm_fd``) are the client's numbers; the server takes its own copy of
each with ``pidfd_getfd(2)`` (same permission check) when the engine looks one up.

This module is the server's side of that mode; it does I/O on another process
and so lives outside the sans-I/O engine, which only sees an
:class:`~accelcore.task.AddressSpace` and a descriptor table (``task.files``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path

from ..errors import BadAddress, BadFd, NotPermitted
from ..memory import PAGE_SIZE
from ..server.fdtable import CallFds, ServerFdTable, is_placeholder
from ..task import AddressSpace, Vma
from ..vfs import OpenFile

__all__ = ["NativeAddressSpace", "NativeFdTable", "open_native", "pidfd_getfd"]

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = 438  # the same on every Linux architecture since 5.6
#: Remote iovecs per process_vm_* call (IOV_MAX).
_IOV_MAX = 1024
_ADDR_END = 1 << 64


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_IovecP = ctypes.POINTER(_Iovec)
for _name in ("process_vm_readv", "process_vm_writev"):
    _fn = getattr(_libc, _name)
    _fn.argtypes = [ctypes.c_int, _IovecP, ctypes.c_ulong, _IovecP, ctypes.c_ulong, ctypes.c_ulong]
    _fn.restype = ctypes.c_ssize_t
_libc.syscall.restype = ctypes.c_long

_YAMA = Path("/proc/sys/kernel/yama/ptrace_scope")


def _permission_hint(pid: int) -> str:
    try:
        scope = _YAMA.read_text().strip()
    except OSError:
        scope = ""
    hint = (
        f"the server (pid {os.getpid()}) may not read the memory of pid {pid}: it needs the "
        "same uid (or CAP_SYS_PTRACE) and a dumpable client"
    )
    if scope == "1":
        hint += (
            "; Yama ptrace_scope is 1, so the client must name the server as its tracer "
            "with prctl(PR_SET_PTRACER, server_pid) (the preload library does this)"
        )
    elif scope in ("2", "3"):
        hint += f"; Yama ptrace_scope is {scope}: run the server with CAP_SYS_PTRACE"
    return hint


class NativeAddressSpace(AddressSpace):
    """A native client's address space: its arenas as ranges, the rest its own memory.

    Addresses inside a range mapped with :meth:`map` (arenas the client shared) are
    served from that memory, as in the base class. Any other address is the
    client's: read with ``process_vm_readv``, written with ``process_vm_writev``;
    a range the client has not mapped (or, when writing, mapped read-only) is
    :class:`~accelcore.errors.BadAddress` (``EFAULT``), as ``copy_{from,to}_user``.

    :meth:`user_view` of client memory for reading returns a copy (the engine reads
    ioctl arguments this way); pinning it for writing (``pin_user_pages`` for
    device DMA, e.g. habana_like ``USERPTR``) is refused with ``EFAULT``: another
    process's private pages cannot be shared after the fact. Memory the client
    shares as an arena can be pinned.

    Args:
        pid: The client process.
        pidfd: A pidfd of it (owned: closed by :meth:`clear`).
    """

    def __init__(self, pid: int, pidfd: int) -> None:
        super().__init__()
        self.pid = pid
        self.pidfd = pidfd
        # One poller of the pidfd per thread (a poll object must not be polled by
        # two threads at once), made at a thread's first access, not at every one.
        self._pollers = threading.local()

    def alive(self) -> bool:
        """Whether the client process still runs: its pidfd is not readable (a pidfd
        polls readable once its process has exited) and not closed by :meth:`clear`."""
        pidfd = self.pidfd
        if pidfd < 0:
            return False
        mine = self._pollers
        if getattr(mine, "fd", None) != pidfd:
            mine.poller = select.poll()
            mine.poller.register(pidfd, select.POLLIN)
            mine.fd = pidfd
        return not mine.poller.poll(0)  # a closed pidfd polls POLLNVAL: not alive

    def _check_alive(self, addr: int) -> None:
        """Raises:
        BadAddress: ``EFAULT``: the client exited; its pid may now name another
            process, whose memory must not be touched (checked through the pidfd,
            which stays bound to the process it was opened for)."""
        if not self.alive():
            raise BadAddress(
                f"pid {self.pid} has exited: its memory at {addr:#x} is gone (the pid may "
                "now belong to another process, which is not touched)"
            )

    def _local(self, addr: int, length: int) -> Vma | None:
        for vma in self._vmas:  # arenas: a handful at most
            if vma.start <= addr and addr + length <= vma.end:
                return vma
        return None

    def _remote(self, write: bool, addr: int, buf: ctypes.Array[ctypes.c_char], n: int) -> None:
        if addr <= 0 or addr + n > _ADDR_END:
            raise BadAddress(f"user range [{addr:#x}, {addr + n:#x}) is not mapped")
        self._check_alive(addr)
        local = _Iovec(ctypes.addressof(buf), n)
        remote = _Iovec(addr, n)
        fn = _libc.process_vm_writev if write else _libc.process_vm_readv
        done = fn(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if done == n:
            return
        err = ctypes.get_errno() if done < 0 else errno.EFAULT
        what = "write" if write else "read"
        if err == errno.EPERM:
            raise BadAddress(
                f"cannot {what} user memory at {addr:#x}: {_permission_hint(self.pid)}"
            )
        if err == errno.ESRCH:
            raise BadAddress(f"pid {self.pid} has exited: its memory at {addr:#x} is gone")
        raise BadAddress(
            f"user range [{addr:#x}, {addr + n:#x}) is not "
            f"{'mapped writable' if write else 'mapped'} in pid {self.pid}"
        )

    def copy_from_user(self, addr: int, length: int) -> bytes:
        """Copy ``length`` bytes from the client at ``addr``; ``EFAULT`` if unmapped."""
        if length == 0:
            return b""
        if length < 0:
            raise BadAddress(f"negative length {length} at {addr:#x}")
        if self._local(addr, length) is not None:
            return super().copy_from_user(addr, length)
        buf = ctypes.create_string_buffer(length)
        self._remote(False, addr, buf, length)
        return buf.raw

    def copy_to_user(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to the client at ``addr``; ``EFAULT`` if unmapped or read-only."""
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if n == 0:
            return
        if self._local(addr, n) is not None:
            super().copy_to_user(addr, data)
            return
        buf = (ctypes.c_char * n).from_buffer_copy(data)
        self._remote(True, addr, buf, n)

    def user_view(self, addr: int, length: int, *, write: bool = False) -> memoryview:
        """A view of user memory: zero-copy inside an arena; a copy of client memory
        for reading; ``EFAULT`` for pinning client memory writable (see the class)."""
        if length < 0 or self._local(addr, length) is not None:
            return super().user_view(addr, length, write=write)
        if write:
            self.check(addr, length, write=False)
            raise BadAddress(
                f"user range [{addr:#x}, {addr + length:#x}) is private memory of pid "
                f"{self.pid}, which the server cannot pin for DMA; share it (MAP_SHARED "
                "memory through the preload library) to pin it"
            )
        return memoryview(self.copy_from_user(addr, length)).toreadonly()

    def check(self, addr: int, length: int, *, write: bool = False) -> None:
        """``EFAULT`` unless the whole range is mapped in the client: one byte of
        every page is read (written back unchanged when ``write``)."""
        if length <= 0:
            return
        if self._local(addr, length) is not None:
            super().check(addr, length, write=write)
            return
        self._check_alive(addr)
        end = addr + length
        pages = []
        at = addr
        while at < end:
            pages.append(at)
            at = (at // PAGE_SIZE + 1) * PAGE_SIZE
        for i in range(0, len(pages), _IOV_MAX):
            chunk = pages[i : i + _IOV_MAX]
            n = len(chunk)
            buf = ctypes.create_string_buffer(n)
            local = _Iovec(ctypes.addressof(buf), n)
            remote = (_Iovec * n)(*[_Iovec(a, 1) for a in chunk])
            for fn in (
                (_libc.process_vm_readv, _libc.process_vm_writev)
                if write
                else (_libc.process_vm_readv,)
            ):
                if (
                    chunk[-1] + 1 > _ADDR_END
                    or fn(self.pid, ctypes.byref(local), 1, remote, n, 0) != n
                ):
                    raise BadAddress(
                        f"user range [{addr:#x}, {end:#x}) is not "
                        f"{'mapped writable' if write else 'mapped'} in pid {self.pid}"
                    )

    def clear(self) -> None:
        """Process exit: drop the arenas and the pidfd."""
        super().clear()
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = -1


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """``pidfd_getfd(2)``: a close-on-exec copy of descriptor ``fd`` of the process.

    Raises:
        BadFd: ``fd`` is not open in that process.
        NotPermitted: the server may not take it (see :class:`NativeAddressSpace`).
    """
    ret = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    if ret >= 0:
        return int(ret)
    err = ctypes.get_errno()
    if err == errno.EBADF:
        raise BadFd(f"file descriptor {fd} is not open in the client")
    if err in (errno.EPERM, errno.EACCES):
        raise NotPermitted(f"cannot take descriptor {fd} of the client: permission denied")
    raise BadFd(f"file descriptor {fd} of the client: {os.strerror(err)}")


class NativeFdTable(ServerFdTable):
    """``task.files`` of a native client (a ``ServerFdTable``): descriptors a call
    did not carry are the client's own, fetched with :func:`pidfd_getfd` when the
    engine looks them up.

    Args:
        room: As for the server's ``ServerFdTable``: files the client may still be given.
        pidfd: The client's pidfd (borrowed).
        resolve: Turns a descriptor of the server into its open file with a
            reference, closing the descriptor.
        put: Drops references taken by ``resolve`` (after the call).
    """

    def __init__(
        self,
        room: Callable[[], int] | None,
        pidfd: int,
        resolve: Callable[[int], OpenFile],
        put: Callable[[list[OpenFile]], None],
    ) -> None:
        super().__init__(room)
        self._pidfd = pidfd
        self._resolve = resolve
        self._put_files = put

    def leave(self, ctx: CallFds, prev: CallFds | None) -> None:
        """End the call; the descriptors fetched during it are released."""
        super().leave(ctx, prev)
        if ctx.fetched:
            fetched, ctx.fetched = ctx.fetched, []
            self._put_files(fetched)

    def get(self, fd: int) -> OpenFile:
        try:
            return super().get(fd)
        except BadFd:
            if not isinstance(fd, int) or fd < 0 or fd > 0x7FFF_FFFF or is_placeholder(fd):
                raise
        ctx = self._ctx()
        file = self._resolve(pidfd_getfd(self._pidfd, fd))
        ctx.fetched.append(file)
        ctx.files[fd] = file
        return file

    def copy(self) -> ServerFdTable:
        """The table of a forked task: the same client, nothing fetched."""
        return NativeFdTable(self._room, self._pidfd, self._resolve, self._put_files)


def _first_mapping(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return int(f.readline().split("-", 1)[0], 16)
    except (OSError, ValueError):
        return None


def open_native(pid: int) -> NativeAddressSpace:
    """Check that the server may reach pid's memory, and make its address space.

    Raises:
        NotPermitted: ``process_vm_readv`` is refused (the message says why and
            what to do, e.g. Yama's ``ptrace_scope``).
        NoEntry: no such process.
    """
    pidfd = os.pidfd_open(pid)
    try:
        addr = _first_mapping(pid)
        if addr is not None:
            buf = ctypes.create_string_buffer(1)
            local = _Iovec(ctypes.addressof(buf), 1)
            remote = _Iovec(addr, 1)
            done = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if done < 0 and ctypes.get_errno() == errno.EPERM:
                raise NotPermitted(f"native client mode refused: {_permission_hint(pid)}")
    except BaseException:
        os.close(pidfd)
        raise
    return NativeAddressSpace(pid, pidfd)
