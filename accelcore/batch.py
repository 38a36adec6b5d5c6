"""Batched submission: several ioctls handed to the system-call layer at once.

A program that issues many small ioctls (a queue of submissions, a sweep of
queries) pays the crossing into the kernel — here, into the devfs server — once
per call. ``proc.batch()`` queues calls and submits them together: across
processes they travel in one record and are answered by one, so N calls cost
one round trip. Each call runs exactly as it would alone, in order: its own
return value or errno, its own restart or ``EINTR`` on a signal, descriptors
it returns installed; a failing call does not stop the ones after it (as
io_uring runs unlinked SQEs). The in-process :class:`~accelcore.Process` has the
same API (it runs the calls one after another), so code written against one
transport runs on the other.

>>> import errno
>>> from accelcore.testing import vaccel_subsystem
>>> from accelcore import Process
>>> from accelcore.uapi import CORE
>>> sub, dev = vaccel_subsystem()
>>> proc = Process(sub)
>>> fd = proc.open("/dev/accel/accel0")
>>> v = CORE.new("struct drm_version")
>>> with proc.batch() as b:
...     version = b.ioctl(fd, CORE.DRM_IOCTL_VERSION, v)
...     bad = b.ioctl(fd, 0xDEAD, 0)
>>> version.result(), v.version_major
(0, 1)
>>> bad.error.errno == errno.ENOTTY
True
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from typing import Any

from .errors import InvalidArgument

__all__ = ["Batch", "BatchedIoctl"]


class BatchedIoctl:
    """One queued ``ioctl(fd, cmd, arg)`` of a :class:`Batch` (``arg`` as for
    :meth:`accelcore.Process.ioctl`: a user address, a buffer or a cffi struct,
    copied back after the batch ran)."""

    __slots__ = ("_done", "_error", "_ret", "arg", "cmd", "fd")

    def __init__(self, fd: int, cmd: int, arg: Any) -> None:
        self.fd = fd
        self.cmd = cmd
        self.arg = arg
        self._ret = 0
        self._error: OSError | None = None
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the batch carrying this call ran."""
        return self._done

    @property
    def error(self) -> OSError | None:
        """The call's error (an :class:`~accelcore.errors.AccelError` with its errno),
        or ``None`` if it succeeded or has not run."""
        return self._error

    def result(self) -> int:
        """The call's return value.

        Raises:
            OSError: the call's own error, as the call alone would raise it.
            InvalidArgument: the batch has not been submitted (``EINVAL``).
        """
        if not self._done:
            raise InvalidArgument(
                f"ioctl {self.cmd:#010x} on fd {self.fd} is queued: submit its batch first"
            )
        if self._error is not None:
            raise self._error
        return self._ret

    def set_result(self, ret: int) -> None:
        """Complete the call with return value ``ret`` (a transport's side)."""
        self._ret, self._error, self._done = ret, None, True

    def set_error(self, error: OSError) -> None:
        """Complete the call with ``error`` (a transport's side)."""
        self._error, self._done = error, True

    def __repr__(self) -> str:
        state = "queued" if not self._done else f"error {self._error}" if self._error else self._ret
        return f"<BatchedIoctl fd={self.fd} cmd={self.cmd:#010x} {state}>"


class Batch:
    """Ioctls queued to be submitted together (``proc.batch()``).

    Use as a context manager: the calls queued in the block are submitted when it
    ends without an exception (an exception discards them unsubmitted). Or call
    :meth:`submit` explicitly; the batch can then be reused.

    Args:
        run: The transport's submission: completes every call it is given, in
            order, each with :meth:`BatchedIoctl.set_result` or ``set_error``.
    """

    def __init__(self, run: Callable[[Sequence[BatchedIoctl]], None]) -> None:
        self._run = run
        self._queued: list[BatchedIoctl] = []

    def ioctl(self, fd: int, cmd: int, arg: Any = 0) -> BatchedIoctl:
        """Queue ``ioctl(fd, cmd, arg)``; its result is there once submitted."""
        call = BatchedIoctl(fd, cmd, arg)
        self._queued.append(call)
        return call

    def submit(self) -> list[BatchedIoctl]:
        """Run the queued calls (in order) and return them, each completed.

        Raises:
            OSError: the transport itself failed (through the server:
                :class:`~accelcore.errors.NoDevice`, ``ENODEV``, once the session
                ended); the calls it had not completed carry that error (their
                :meth:`~BatchedIoctl.result` raises it), those it had keep their own.
        """
        calls, self._queued = self._queued, []
        if calls:
            try:
                self._run(calls)
            except OSError as exc:
                for call in calls:
                    if not call.done:
                        call.set_error(exc)
                raise
            for call in calls:
                if not call.done:  # a transport's bug must not look like a result
                    call.set_error(OSError(errno.EIO, "the transport did not complete it"))
        return calls

    def __len__(self) -> int:
        return len(self._queued)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.submit()
        else:
            self._queued = []
