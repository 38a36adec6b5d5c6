"""accelctl's exit codes, one per kind of failure (numbered as nvidia-smi numbers them).

Every failure is one line ``Error: <message>`` on stderr and one of these codes;
scripts tell the kinds apart by the code, never by the message.
"""

from __future__ import annotations

import enum
import errno

import click

__all__ = ["AccelctlError", "ExitCode", "NoServerError", "exit_code_of"]


class ExitCode(enum.IntEnum):
    """The documented exit codes of ``accelctl`` (``docs/cli.rst`` lists them)."""

    #: Success.
    OK = 0
    #: Any other runtime failure (``EIO``, a driver's refusal...).
    ERROR = 1
    #: Invalid argument: a usage error, a malformed selector, ``EINVAL``.
    INVALID_ARGUMENT = 2
    #: The source cannot do it (the read-only host; ``EOPNOTSUPP``, ``ENOTTY``).
    NOT_SUPPORTED = 3
    #: No permission (``EACCES``, ``EPERM``).
    NO_PERMISSION = 4
    #: Not found: no device matches, no such attribute (``ENOENT``).
    NOT_FOUND = 6
    #: No devfs server answers (none started, or a stale socket, or it went away).
    NO_SERVER = 9
    #: The device is busy or in reset; try again (``EBUSY``, ``EAGAIN``).
    IN_RESET = 10
    #: The device is gone, unplugged (``ENODEV``).
    DEVICE_GONE = 15


_BY_ERRNO = {
    errno.EINVAL: ExitCode.INVALID_ARGUMENT,
    errno.EOPNOTSUPP: ExitCode.NOT_SUPPORTED,
    errno.ENOTTY: ExitCode.NOT_SUPPORTED,
    errno.EACCES: ExitCode.NO_PERMISSION,
    errno.EPERM: ExitCode.NO_PERMISSION,
    errno.ENOENT: ExitCode.NOT_FOUND,
    errno.EBUSY: ExitCode.IN_RESET,
    errno.EAGAIN: ExitCode.IN_RESET,
    errno.ENODEV: ExitCode.DEVICE_GONE,
}


class AccelctlError(click.ClickException):
    """A one-line failure with its :class:`ExitCode`."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        # click declares exit_code on the class (a ClassVar in some releases,
        # a plain attribute in others); each instance carries its own.
        self.exit_code = int(code)  # type: ignore[misc, unused-ignore]


class NoServerError(AccelctlError):
    """No devfs server answers at a runtime directory (exit :attr:`ExitCode.NO_SERVER`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.NO_SERVER)


def exit_code_of(exc: OSError) -> ExitCode:
    """The exit code of an errno-carrying error (:attr:`ExitCode.ERROR` for the rest)."""
    return _BY_ERRNO.get(exc.errno or 0, ExitCode.ERROR)
