"""One exception hierarchy keyed by errno.

Every error the subsystem reports to user space is an :class:`AccelError`, an
:class:`OSError` whose ``errno`` is the value a real ioctl would return. Handlers
raise them; the dispatcher turns them into the caller's errno. Each subclass also
derives from the builtin ``OSError`` subclass Python uses for that errno where one
exists (``PermissionError`` for ``EACCES``, ``TimeoutError`` for ``ETIMEDOUT`` …), so
``except PermissionError`` works as users expect.

Messages say what was wrong and with which value, e.g.
``InvalidArgument("flags 0x4 has unknown bits 0x4")``.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar

__all__ = [
    "ERESTARTSYS",
    "AccelError",
    "AlreadyExists",
    "BadAddress",
    "BadFd",
    "Busy",
    "DeviceIOError",
    "Interrupted",
    "InvalidArgument",
    "NoDevice",
    "NoEntry",
    "NoMemory",
    "NoSpace",
    "NotPermitted",
    "NotSupported",
    "NotTTY",
    "PermissionDenied",
    "RestartSyscall",
    "TimedOut",
    "TooManyFiles",
    "TryAgain",
    "error_for_errno",
]

#: The kernel-internal "restart this system call" code (never seen by user space).
ERESTARTSYS = 512


class AccelError(OSError):
    """Base of all subsystem errors: an ``OSError`` carrying an errno.

    Args:
        message: What was wrong, naming the bad value.
    """

    errno_value: ClassVar[int] = _errno.EIO

    def __init__(self, message: str) -> None:
        super().__init__(self.errno_value, message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.strerror,))


class InvalidArgument(AccelError, ValueError):
    """``EINVAL``: a malformed argument (non-zero padding, unknown flags, bad size)."""

    errno_value = _errno.EINVAL


class NoDevice(AccelError):
    """``ENODEV``: the device is gone (unplugged) or not yet usable."""

    errno_value = _errno.ENODEV


class Busy(AccelError):
    """``EBUSY``: the resource is held by someone else (e.g. the compute context)."""

    errno_value = _errno.EBUSY


class BadAddress(AccelError):
    """``EFAULT``: a user pointer outside the caller's address space."""

    errno_value = _errno.EFAULT


class NotTTY(AccelError):
    """``ENOTTY``: the ioctl does not exist for this file."""

    errno_value = _errno.ENOTTY


class PermissionDenied(AccelError, PermissionError):
    """``EACCES``: the caller lacks a permission (root-only ioctl, node mode)."""

    errno_value = _errno.EACCES


class NotPermitted(AccelError, PermissionError):
    """``EPERM``: the operation is not permitted for this caller."""

    errno_value = _errno.EPERM


class NoSpace(AccelError):
    """``ENOSPC``: a limited device resource is exhausted (minors, device memory)."""

    errno_value = _errno.ENOSPC


class NoMemory(AccelError, MemoryError):
    """``ENOMEM``: out of (simulated) system memory or a per-client cap was hit."""

    errno_value = _errno.ENOMEM


class NoEntry(AccelError, FileNotFoundError):
    """``ENOENT``: an object lookup failed (unknown handle, unknown sequence number)."""

    errno_value = _errno.ENOENT


class AlreadyExists(AccelError, FileExistsError):
    """``EEXIST``: the object already exists."""

    errno_value = _errno.EEXIST


class BadFd(AccelError):
    """``EBADF``: the file descriptor is not open (or not valid in this process)."""

    errno_value = _errno.EBADF


class Interrupted(AccelError, InterruptedError):
    """``EINTR``: a blocking wait was interrupted and the call is not restarted."""

    errno_value = _errno.EINTR


class DeviceIOError(AccelError):
    """``EIO``: the device died, a reset failed, or a driver bug (an oops) was caught."""

    errno_value = _errno.EIO


class NotSupported(AccelError):
    """``EOPNOTSUPP``: the driver does not support this feature."""

    errno_value = _errno.EOPNOTSUPP


class TimedOut(AccelError, TimeoutError):
    """``ETIMEDOUT``: a wait ran out of time, or work timed out on the device."""

    errno_value = _errno.ETIMEDOUT


class TryAgain(AccelError, BlockingIOError):
    """``EAGAIN``: nothing to do now (non-blocking read with no event)."""

    errno_value = _errno.EAGAIN


class TooManyFiles(AccelError):
    """``EMFILE``: a per-client limit on files or descriptors was reached."""

    errno_value = _errno.EMFILE


class RestartSyscall(AccelError):
    """``ERESTARTSYS``: raised by an interrupted wait inside a handler.

    Never reaches user space: the dispatcher either restarts the call or turns it
    into :class:`Interrupted`, following the calling task's restart policy.
    """

    errno_value = ERESTARTSYS


_BY_ERRNO: dict[int, type[AccelError]] = {
    cls.errno_value: cls
    for cls in (
        InvalidArgument,
        NoDevice,
        Busy,
        BadAddress,
        NotTTY,
        PermissionDenied,
        NotPermitted,
        NoSpace,
        NoMemory,
        NoEntry,
        AlreadyExists,
        BadFd,
        Interrupted,
        DeviceIOError,
        NotSupported,
        TimedOut,
        TryAgain,
        TooManyFiles,
        RestartSyscall,
    )
}


def error_for_errno(code: int, message: str) -> AccelError:
    """Build the :class:`AccelError` subclass for ``code``.

    Args:
        code: A positive errno value.
        message: What was wrong.

    Returns:
        An exception instance whose ``errno`` is ``code``. Codes without a
        dedicated subclass get a plain :class:`AccelError` carrying ``code``.
    """
    cls = _BY_ERRNO.get(code)
    if cls is not None:
        return cls(message)
    err = AccelError(message)
    err.errno = code
    return err
