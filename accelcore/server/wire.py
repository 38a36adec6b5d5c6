"""Records with descriptors on ``AF_UNIX``/``SOCK_SEQPACKET`` sockets.

The only I/O helpers the server and the client share. Descriptors are sent with
``SCM_RIGHTS`` and received with ``MSG_CMSG_CLOEXEC`` (``socket.recv_fds`` would
leave them inheritable). A record longer than :data:`~.protocol.MAX_MESSAGE`, or
with more descriptors than :data:`~.protocol.MAX_FDS`, is refused, and whatever
descriptors did arrive are closed.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from collections.abc import Sequence
from pathlib import Path

from ..errors import PermissionDenied, TooManyFiles
from .protocol import MAX_FDS, MAX_MESSAGE, ProtocolError

__all__ = [
    "RecordReader",
    "connect_verified",
    "pass_credentials",
    "peer_credentials",
    "recv_fds",
    "recv_record",
    "recv_record_creds",
    "send_fds",
    "send_record",
]

_CREDS = struct.Struct("3i")
#: The flags as plain ints (``socket``'s are ``MsgFlag`` enums, slow to combine).
_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_TRUNCATED = int(socket.MSG_TRUNC) | int(socket.MSG_CTRUNC)


def send_record(sock: socket.socket, data: bytes, fds: Sequence[int] = (), flags: int = 0) -> None:
    """Send one record, with ``fds`` as ``SCM_RIGHTS`` (``flags``: ``MSG_DONTWAIT``…)."""
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], flags)
    else:
        sock.sendmsg([data], [], flags)


def _fds_of(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    return fds


def close_all(fds: Sequence[int]) -> None:
    """Close every descriptor, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def recv_record(
    sock: socket.socket, max_size: int = MAX_MESSAGE, max_fds: int = MAX_FDS
) -> tuple[bytes, list[int]]:
    """Receive one record and its descriptors (close-on-exec); see :func:`recv_record_creds`.

    Returns:
        ``(data, fds)``; ``(b"", [])`` at end of file.
    """
    data, fds, _ = _recv(sock, max_size, max_fds, 0)
    return data, fds


#: Ancillary space for one ``SCM_CREDENTIALS`` (``struct ucred``).
_CRED_SPACE = socket.CMSG_SPACE(_CREDS.size)


def recv_record_creds(
    sock: socket.socket, max_size: int = MAX_MESSAGE, max_fds: int = MAX_FDS
) -> tuple[bytes, list[int], tuple[int, int, int] | None]:
    """Receive one record, its descriptors and its sender's credentials.

    ``sock`` must have ``SO_PASSCRED`` set (:func:`pass_credentials`): the kernel
    then attaches to each record the ``(pid, uid, gid)`` of the process that sent
    it (its tgid, real uid and real gid; only a sender with ``CAP_SYS_ADMIN`` /
    ``CAP_SETUID`` / ``CAP_SETGID`` may state others), unlike ``SO_PEERCRED``,
    which names the process that connected.

    Returns:
        ``(data, fds, creds)``; ``creds`` is ``None`` if the record carried none.
        ``(b"", [], None)`` at end of file.

    Raises:
        As :func:`recv_record`.
    """
    return _recv(sock, max_size, max_fds, _CRED_SPACE)


def pass_credentials(sock: socket.socket) -> None:
    """Set ``SO_PASSCRED``: every record received carries ``SCM_CREDENTIALS``."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


class RecordReader:
    """The receiving side of one connection: records land in one buffer of
    ``max_size + 1`` bytes allocated once (a ``SOCK_SEQPACKET`` record arrives
    whole or is truncated, so one byte more than the largest record tells a
    truncated one), instead of a new buffer per record.

    Args:
        sock: The connection.
        creds: Also receive each record's ``SCM_CREDENTIALS`` (``sock`` must have
            ``SO_PASSCRED``, see :func:`pass_credentials`).
        max_size: The largest record accepted.
        max_fds: The most descriptors one record may carry.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        creds: bool = False,
        max_size: int = MAX_MESSAGE,
        max_fds: int = MAX_FDS,
    ) -> None:
        self.sock = sock
        self._buf = bytearray(max_size + 1)
        self._view = memoryview(self._buf)
        self._max_size = max_size
        self._max_fds = max_fds
        self._anc = socket.CMSG_SPACE(max_fds * 4) + (_CRED_SPACE if creds else 0)

    def recv(self, flags: int = 0) -> tuple[memoryview, list[int], tuple[int, int, int] | None]:
        """Receive one record: ``(data, fds, creds)``, ``data`` a view of the buffer
        valid until the next call; ``(empty, [], None)`` at end of file.
        ``flags``: ``MSG_DONTWAIT`` for a receive that does not wait.

        Raises:
            BlockingIOError: ``MSG_DONTWAIT`` and no record is there.
            As :func:`recv_record_creds`.
        """
        n, anc, flags, _ = self.sock.recvmsg_into([self._buf], self._anc, _CLOEXEC | flags)
        fds, creds = _check(anc, flags, n, self._max_size, self._max_fds)
        return self._view[:n], fds, creds


def _recv(
    sock: socket.socket, max_size: int, max_fds: int, cred_space: int
) -> tuple[bytes, list[int], tuple[int, int, int] | None]:
    """Receive one record and its descriptors (close-on-exec).

    Raises:
        ProtocolError: the record was longer than ``max_size`` or carried more
            than ``max_fds`` descriptors (those received are closed).
        TooManyFiles: ``EMFILE``: descriptors were dropped because this process's
            descriptor table is full (those received are closed).
        OSError: the socket failed.
    """
    data, anc, flags, _ = sock.recvmsg(
        max_size + 1, socket.CMSG_SPACE(max_fds * 4) + cred_space, socket.MSG_CMSG_CLOEXEC
    )
    fds, creds = _check(anc, flags, len(data), max_size, max_fds)
    return data, fds, creds


def _check(
    anc: list[tuple[int, int, bytes]], flags: int, size: int, max_size: int, max_fds: int
) -> tuple[list[int], tuple[int, int, int] | None]:
    """The descriptors and credentials of a received record, once its size and
    descriptor count are checked (see :func:`_recv`)."""
    if not flags & _TRUNCATED and size <= max_size:
        if not anc:
            return [], None
        if len(anc) == 1:  # the usual: the sender's credentials, no descriptors
            level, kind, payload = anc[0]
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                if len(payload) >= _CREDS.size:
                    pid, uid, gid = _CREDS.unpack_from(payload)
                    return [], (pid, uid, gid)
                return [], None
    fds = _fds_of(anc)
    creds: tuple[int, int, int] | None = None
    for level, kind, payload in anc:
        if (
            level == socket.SOL_SOCKET
            and kind == socket.SCM_CREDENTIALS
            and len(payload) >= _CREDS.size
        ):
            pid, uid, gid = _CREDS.unpack_from(payload)
            creds = (pid, uid, gid)
    if flags & int(socket.MSG_CTRUNC):
        close_all(fds)
        if len(fds) < max_fds:
            # There was room for more: the kernel could not install them, because
            # this process's descriptor table is full (scm_detach_fds).
            raise TooManyFiles(
                f"descriptors of a record were dropped: this process (pid {os.getpid()}) "
                "has no free descriptor"
            )
        raise ProtocolError(f"record carried more than {max_fds} descriptors")
    if flags & int(socket.MSG_TRUNC) or size > max_size:
        close_all(fds)
        raise ProtocolError(f"record exceeds {max_size} bytes")
    return fds, creds


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the peer at ``connect()`` time (``SO_PEERCRED``)."""
    pid, uid, gid = _CREDS.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    )
    return pid, uid, gid


def connect_verified(path: Path | str) -> socket.socket:
    """Connect to the server socket at ``path`` and check, before anything is sent,
    that the process listening there (``SO_PEERCRED``) runs as this uid or as root:
    a socket another user planted gets nothing, not even a HELLO.

    Raises:
        PermissionDenied: the listener runs as another uid.
        OSError: the connection failed (``ENOENT``, ``ECONNREFUSED``…).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(str(path))
        pid, uid, _ = peer_credentials(sock)
    except BaseException:
        sock.close()
        raise
    me = os.geteuid()
    if uid not in (me, 0):
        sock.close()
        raise PermissionDenied(
            f"refusing the devfs socket {path}: its server (pid {pid}) runs as uid {uid}, "
            f"not as uid {me} or root"
        )
    return sock


def send_fds(sock: socket.socket, fds: Sequence[int], data: bytes = b"fd") -> None:
    """Pass descriptors to another process over a Unix socket (``SCM_RIGHTS``)."""
    send_record(sock, data, fds)


def recv_fds(
    sock: socket.socket, max_fds: int = MAX_FDS, max_size: int = 4096
) -> tuple[bytes, list[int]]:
    """Receive descriptors passed with :func:`send_fds`, close-on-exec."""
    return recv_record(sock, max_size, max_fds)
