"""Tasks: the calling process, its credentials, address space and fd table.

Every engine call names the task that makes it. The task answers the questions
the kernel asks of ``current``: who (pid, uid, gid, ``CAP_SYS_ADMIN``), can this
user pointer be read (its :class:`AddressSpace`), which file is fd N (its
:class:`FdTable`), and is a signal pending (interruptible waits).

In one process the address space is a registry of buffers the program made;
across processes (the server) it is memfd-backed memory shared with the client,
mapped at the same addresses on both sides.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field

from .errors import BadAddress, BadFd, InvalidArgument, TooManyFiles
from .memory import PAGE_SIZE, SharedMemory, page_align
from .vfs import Mapping, OpenFile

__all__ = ["AddressSpace", "Credentials", "FdTable", "Task", "UserBuffer", "Vma"]


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who a task is. ``admin`` stands for ``CAP_SYS_ADMIN``."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    admin: bool | None = None

    @property
    def is_admin(self) -> bool:
        """Root, or explicitly granted ``CAP_SYS_ADMIN``."""
        return self.uid == 0 if self.admin is None else self.admin

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


@dataclass(frozen=True, slots=True)
class Vma:
    """One mapped range of a user address space."""

    start: int
    view: memoryview
    writable: bool
    name: str

    @property
    def end(self) -> int:
        return self.start + len(self.view)


@dataclass(frozen=True, slots=True)
class UserBuffer:
    """Memory a user program allocated: its address and a view of its bytes."""

    addr: int
    view: memoryview
    memory: SharedMemory | None = None

    def __len__(self) -> int:
        return len(self.view)


class AddressSpace:
    """A task's user address space: ranges of memory at addresses.

    ``copy_from_user``/``copy_to_user`` check every access; an address outside
    every range, or crossing a range's end, is ``EFAULT``. Address 0 is never
    mapped (``NULL``).

    Args:
        base: The first address handed out by :meth:`alloc` and :meth:`map`.
    """

    def __init__(self, base: int = 0x7F00_0000_0000) -> None:
        self._starts: list[int] = []
        self._vmas: list[Vma] = []
        self._owned: dict[int, SharedMemory] = {}
        # The two ranges accessed last, as (start, end, view, writable), the view
        # read-only for a read-only range: an ioctl reads its argument in one range
        # and writes its answer in another, so one entry would be replaced on every
        # access. map() cannot overlap a range, and unmap() and clear() empty both.
        self._hot: tuple[int, int, memoryview, bool] | None = None
        self._warm: tuple[int, int, memoryview, bool] | None = None
        self._next = base

    def map(
        self,
        view: memoryview | bytearray,
        *,
        addr: int | None = None,
        writable: bool = True,
        name: str = "anon",
    ) -> int:
        """Make ``view`` visible at ``addr`` (or the next free page-aligned address).

        Raises:
            InvalidArgument: the range is empty or overlaps an existing one.
        """
        mv = view if isinstance(view, memoryview) else memoryview(view)
        mv = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
        if len(mv) == 0:
            raise InvalidArgument("cannot map an empty range")
        if addr is None:
            addr = self._next
            self._next = addr + page_align(len(mv)) + PAGE_SIZE  # a guard page between
        if addr <= 0:
            raise InvalidArgument(f"cannot map at address {addr:#x}")
        i = bisect.bisect_right(self._starts, addr)
        if (i and self._vmas[i - 1].end > addr) or (
            i < len(self._vmas) and self._vmas[i].start < addr + len(mv)
        ):
            raise InvalidArgument(f"range at {addr:#x} of {len(mv):#x} bytes overlaps a mapping")
        self._starts.insert(i, addr)
        self._vmas.insert(i, Vma(addr, mv, writable, name))
        self._next = max(self._next, addr + page_align(len(mv)) + PAGE_SIZE)
        return addr

    def unmap(self, addr: int) -> None:
        """Remove the range that starts at ``addr``.

        Raises:
            InvalidArgument: no range starts there.
        """
        i = bisect.bisect_left(self._starts, addr)
        if i == len(self._starts) or self._starts[i] != addr:
            raise InvalidArgument(f"no user mapping starts at {addr:#x}")
        del self._starts[i]
        del self._vmas[i]
        self._hot = self._warm = None

    def alloc(self, size: int, name: str = "user") -> UserBuffer:
        """Allocate ``size`` bytes of zeroed, shared user memory and map it."""
        mem = SharedMemory(size, name)
        addr = self.map(mem.view(), name=name)
        self._owned[addr] = mem
        return UserBuffer(addr, mem.view(), mem)

    def free(self, buf: UserBuffer) -> None:
        """Unmap and free a buffer from :meth:`alloc`."""
        self.unmap(buf.addr)
        mem = self._owned.pop(buf.addr, None)
        if mem is not None:
            mem.close()

    def clear(self) -> None:
        """Unmap everything and free what :meth:`alloc` made (``exit_mmap``)."""
        self._starts.clear()
        self._vmas.clear()
        self._hot = self._warm = None
        for mem in self._owned.values():
            mem.close()
        self._owned.clear()

    def _entry(self, addr: int, length: int, write: bool) -> tuple[int, int, memoryview, bool]:
        """The cache entry ``(start, end, view, writable)`` of the range holding
        ``[addr, addr + length)``, made the hot one.

        The accessors below test the hot entry inline (the one test every ioctl's
        copy-in and copy-out passes) and call this on any other access.

        Raises:
            BadAddress: ``EFAULT``: some of the range is not mapped, or ``write``
                and it is read-only.
        """
        hot = self._hot
        warm = self._warm
        if hot is not None and hot[0] <= addr and addr + length <= hot[1] and length >= 0:
            entry = hot
        elif warm is not None and warm[0] <= addr and addr + length <= warm[1] and length >= 0:
            entry = warm
            self._hot, self._warm = warm, hot
        else:
            i = bisect.bisect_right(self._starts, addr) - 1
            if i < 0 or length < 0:
                raise BadAddress(f"user address {addr:#x} is not mapped")
            vma = self._vmas[i]
            if addr + length > vma.end:
                raise BadAddress(
                    f"user range [{addr:#x}, {addr + length:#x}) is not mapped"
                    if addr >= vma.end
                    else f"user range [{addr:#x}, {addr + length:#x}) runs past the end of "
                    f"its mapping at {vma.end:#x}"
                )
            # A read-only range is cached with a read-only view: nothing reached
            # through the cache can write it.
            view = vma.view if vma.writable else vma.view.toreadonly()
            entry = (vma.start, vma.end, view, vma.writable)
            self._hot, self._warm = entry, hot
        if write and not entry[3]:
            raise BadAddress(f"user address {addr:#x} is read-only")
        return entry

    def copy_from_user(self, addr: int, length: int) -> bytes:
        """Copy ``length`` bytes from user address ``addr``; ``EFAULT`` if unmapped."""
        if length == 0:
            return b""
        e = self._hot
        if e is None or not (e[0] <= addr and addr + length <= e[1] and length > 0):
            e = self._entry(addr, length, False)
        off = addr - e[0]
        return bytes(e[2][off : off + length])

    def copy_to_user(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to user address ``addr``; ``EFAULT`` if unmapped or read-only."""
        n = len(data)
        if n == 0:
            return
        e = self._hot
        if e is None or not (e[0] <= addr and addr + n <= e[1] and e[3]):
            e = self._entry(addr, n, True)
        off = addr - e[0]
        e[2][off : off + n] = data

    def user_view(self, addr: int, length: int, *, write: bool = False) -> memoryview:
        """A zero-copy view of user memory (``get_user_pages``-like pinning); read-only
        for a read-only range."""
        e = self._hot
        if e is None or not (
            e[0] <= addr and addr + length <= e[1] and length >= 0 and (e[3] or not write)
        ):
            e = self._entry(addr, length, write)
        off = addr - e[0]
        return e[2][off : off + length]

    def check(self, addr: int, length: int, *, write: bool = False) -> None:
        """Raise ``EFAULT`` unless the whole range is accessible."""
        self._entry(addr, length, write)

    @property
    def ranges(self) -> list[Vma]:
        """The mapped ranges, in address order."""
        return list(self._vmas)


class FdTable:
    """A task's file descriptors: small integers naming open file descriptions.

    Args:
        first: The lowest number handed out (3: 0-2 are stdio in a real process).
        limit: The most descriptors open at once (``RLIMIT_NOFILE``); ``EMFILE`` past it.
    """

    def __init__(self, first: int = 3, limit: int = 1024) -> None:
        self._files: dict[int, tuple[OpenFile, bool]] = {}
        self._first = first
        self.limit = limit

    def install(self, file: OpenFile, *, cloexec: bool = True) -> int:
        """Give ``file`` the lowest free descriptor; takes over the caller's reference.

        Raises:
            TooManyFiles: ``limit`` descriptors are open.
        """
        if len(self._files) >= self.limit:
            raise TooManyFiles(f"task has {self.limit} descriptors open (the limit)")
        fd = self._first
        while fd in self._files:
            fd += 1
        self._files[fd] = (file, cloexec)
        return fd

    def get(self, fd: int) -> OpenFile:
        """The file behind ``fd``; ``EBADF`` if it is not open."""
        try:
            return self._files[fd][0]
        except (KeyError, TypeError):
            raise BadFd(f"file descriptor {fd} is not open") from None

    def close(self, fd: int) -> None:
        """Close ``fd``: drop its reference on the file."""
        try:
            file, _ = self._files.pop(fd)
        except (KeyError, TypeError):
            raise BadFd(f"file descriptor {fd} is not open") from None
        file.put()

    def dup(self, fd: int) -> int:
        """A new descriptor for the same open file description."""
        file = self.get(fd).get()
        try:
            return self.install(file, cloexec=False)
        except BaseException:
            file.put()
            raise

    def copy(self) -> FdTable:
        """The table a forked child gets: every descriptor shares its file."""
        child = FdTable(self._first, self.limit)
        for fd, (file, cloexec) in self._files.items():
            child._files[fd] = (file.get(), cloexec)
        return child

    def close_all(self) -> None:
        """Close every descriptor (process exit)."""
        for fd in sorted(self._files):
            self.close(fd)

    def fds(self) -> dict[int, OpenFile]:
        """Open descriptors and their files."""
        return {fd: f for fd, (f, _) in self._files.items()}

    def __len__(self) -> int:
        return len(self._files)


@dataclass(eq=False)
class Task:
    """A process as the engine sees it.

    Args:
        pid: Process id (real ones from ``SO_PEERCRED`` in the server).
        comm: The command name (``/proc/PID/comm``).
        creds: Uid, gid and capabilities.
        restart_syscalls: ``SA_RESTART``: an interrupted ioctl is restarted by the
            engine instead of failing with ``EINTR``.
    """

    pid: int
    comm: str = "python"
    creds: Credentials = field(default_factory=Credentials)
    restart_syscalls: bool = False
    mm: AddressSpace = field(default_factory=AddressSpace)
    files: FdTable = field(default_factory=FdTable)
    signal_pending: bool = False
    #: CPU mappings the task made with mmap; process exit unmaps them.
    mappings: list[Mapping] = field(default_factory=list)
    _interrupt_at: set[int] = field(default_factory=set)
    _wait_points: int = 0
    exited: bool = False

    # -- signals ---------------------------------------------------------------
    def post_signal(self) -> None:
        """A signal arrives: the task's interruptible waits end with a restart."""
        self.signal_pending = True

    def deliver_signal(self) -> None:
        """The signal was handled (the ioctl returned to user space)."""
        self.signal_pending = False

    def inject_interrupts(self, *wait_points: int) -> None:
        """Interrupt the Nth wait point (0-based) counted from now, for each N given.

        This is how the restart checker interrupts an ioctl at every place it can
        sleep, one run per place.
        """
        self._wait_points = 0
        self._interrupt_at = set(wait_points)

    @property
    def wait_points_seen(self) -> int:
        """Wait points passed since the last :meth:`inject_interrupts`."""
        return self._wait_points

    def enter_wait(self) -> None:
        """Count a wait point; a planned interrupt there posts a signal."""
        idx = self._wait_points
        self._wait_points += 1
        if idx in self._interrupt_at:
            self._interrupt_at.discard(idx)
            self.signal_pending = True

    # -- process lifetime ------------------------------------------------------
    def fork(self, pid: int) -> Task:
        """A child sharing every open file description (not the address space)."""
        return Task(
            pid, self.comm, self.creds, self.restart_syscalls, AddressSpace(), self.files.copy()
        )

    def exit(self) -> None:
        """Process exit: close every descriptor. Idempotent."""
        if not self.exited:
            self.exited = True
            for m in list(self.mappings):
                m.unmap()
            self.mappings.clear()
            self.files.close_all()
            self.mm.clear()

    @property
    def tgid(self) -> int:
        return self.pid

    def __repr__(self) -> str:
        return f"Task(pid={self.pid}, comm={self.comm!r}, uid={self.creds.uid})"


def current_pid() -> int:
    """This interpreter's pid (the default for in-process tasks)."""
    return os.getpid()
