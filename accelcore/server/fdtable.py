"""Descriptors of a remote task, as the engine sees them during one call.

A client's descriptors are real: they live in the client process, and the
engine's ``task.files`` cannot hold them. Instead, each request names its target
(by the session handle proven for it, or by carrying the descriptor) and
carries the descriptors its ioctl arguments name, with their numbers in the
client; the server resolves each to its :class:`~accelcore.vfs.OpenFile` and,
for the length of the call, the task's :class:`ServerFdTable` answers ``get(n)``
from them. Files the engine installs
(``PRIME_HANDLE_TO_FD``, ``UDMABUF_CREATE``…) get *placeholder* numbers; the
server sends the real descriptors with the reply and the client rewrites the
placeholders with the numbers the kernel gave it.

The table is per thread, because one task may have several calls in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import BadFd, NoDevice, TooManyFiles
from ..memory import SharedMemory
from ..task import FdTable
from ..vfs import Mapping, OpenFile
from .protocol import MAX_FDS

__all__ = [
    "PLACEHOLDER_BASE",
    "CallFds",
    "ServerFdTable",
    "backing_memory",
    "is_placeholder",
]

#: Descriptor numbers the engine sees for files it installs during a call.
PLACEHOLDER_BASE = 0x7ACC_0000


def is_placeholder(value: int) -> bool:
    """Whether ``value`` is a number :class:`ServerFdTable` hands out."""
    return PLACEHOLDER_BASE <= value < PLACEHOLDER_BASE + MAX_FDS


@dataclass(slots=True)
class CallFds:
    """The descriptors of one call: those the client sent (``files``; the
    references taken for them are ``held``, dropped after the call), those
    installed (at most ``limit``: the reply's record carries them), and those a
    native client's table fetched meanwhile (released at :meth:`~ServerFdTable.leave`)."""

    files: dict[int, OpenFile] = field(default_factory=dict)
    installed: list[tuple[OpenFile, bool]] = field(default_factory=list)
    limit: int = MAX_FDS
    held: list[OpenFile] = field(default_factory=list)
    fetched: list[OpenFile] = field(default_factory=list)


class ServerFdTable(FdTable):
    """``task.files`` of a remote task: valid only inside :meth:`call`.

    Args:
        room: How many more files the client may be given (the server's
            per-client cap); ``install`` past it is ``EMFILE``. ``None``: no cap.
    """

    def __init__(self, room: Callable[[], int] | None = None) -> None:
        super().__init__()
        self._local = threading.local()
        self._room = room

    def enter(self, ctx: CallFds) -> CallFds | None:
        """Make ``ctx`` this thread's descriptor table until :meth:`leave`; returns
        the one it replaces, to pass to :meth:`leave`."""
        prev: CallFds | None = getattr(self._local, "ctx", None)
        self._local.ctx = ctx
        return prev

    def leave(self, ctx: CallFds, prev: CallFds | None) -> None:
        """End the call :meth:`enter` began."""
        self._local.ctx = prev

    @contextmanager
    def call(self, ctx: CallFds) -> Iterator[CallFds]:
        """Make ``ctx`` this thread's descriptor table for the block."""
        prev = self.enter(ctx)
        try:
            yield ctx
        finally:
            self.leave(ctx, prev)

    def _ctx(self) -> CallFds:
        ctx: CallFds | None = getattr(self._local, "ctx", None)
        if ctx is None:
            raise BadFd("no descriptors of a remote task outside a call")
        return ctx

    def install(self, file: OpenFile, *, cloexec: bool = True) -> int:
        ctx = self._ctx()
        if len(ctx.installed) >= ctx.limit:
            raise TooManyFiles(
                f"one reply may carry at most {MAX_FDS} descriptors (this call may add {ctx.limit})"
            )
        if self._room is not None and len(ctx.installed) >= self._room():
            raise TooManyFiles("the client holds as many open files as the server allows it")
        ctx.installed.append((file, cloexec))
        return PLACEHOLDER_BASE + len(ctx.installed) - 1

    def get(self, fd: int) -> OpenFile:
        ctx = self._ctx()
        if (
            isinstance(fd, int)
            and is_placeholder(fd)
            and fd - PLACEHOLDER_BASE < len(ctx.installed)
        ):
            return ctx.installed[fd - PLACEHOLDER_BASE][0]
        try:
            return ctx.files[fd]
        except (KeyError, TypeError):
            raise BadFd(
                f"file descriptor {fd} is not open (or was not sent with the request)"
            ) from None

    def close(self, fd: int) -> None:
        ctx = self._ctx()
        file = ctx.files.pop(fd, None)
        if file is None:
            raise BadFd(f"file descriptor {fd} is not open")
        file.put()

    def copy(self) -> FdTable:
        return ServerFdTable(self._room)

    def close_all(self) -> None:
        """Nothing to do: the descriptors live in the client and die with it."""

    def fds(self) -> dict[int, OpenFile]:
        ctx: CallFds | None = getattr(self._local, "ctx", None)
        return dict(ctx.files) if ctx is not None else {}

    def __len__(self) -> int:
        return len(self.fds())


def backing_memory(file: OpenFile, mapping: Mapping) -> tuple[SharedMemory, int]:
    """The memfd to pass for ``mapping``, and the offset of the mapped bytes in it.

    Only a memfd that holds exactly the object the mapping maps is passed
    (its :attr:`~accelcore.vfs.Mapping.object_view` spans the whole memfd):
    the receiver can then reach that object's bytes and nothing else. Device
    memory, buffer objects and memfds are each their own memfd, so every whole
    object qualifies; a view of part of a larger memfd (a udmabuf over part of
    a memfd, an export of part of a device-memory block) does not.

    Raises:
        NoDevice: the mapping is not backed by shareable memory, was zapped, or
            its object is only part of its memfd (``ENODEV``).
    """
    whole = mapping.object_view
    found = SharedMemory.backing(whole) if whole is not None else None
    at = SharedMemory.backing(mapping.view)
    if whole is None or found is None or at is None or at[0] is not found[0]:
        raise NoDevice(f"{file.kind} mapping is not backed by shareable memory")
    mem, start = found
    if start != 0 or len(whole) != mem.size:
        raise NoDevice(
            f"{file.kind} mapping's object is [{start:#x}, +{len(whole):#x}) of a "
            f"{mem.size:#x}-byte memfd; only whole memfds are passed to another process"
        )
    return mem, at[1]
