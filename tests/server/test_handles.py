"""Protocol version 2's session handles: a file is proven once, then named by a
handle that is valid only in its session, lapses with the process's last
descriptor of the file or the file's release (``EBADF``), and is never a way
into another process's file. And a client of another version is refused with a
message that says so."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from accelcore.errors import BadFd
from accelcore.server import Server, recv_fds, send_fds
from accelcore.server import protocol as p
from accelcore.server.client import ClientProcess
from accelcore.server.wire import connect_verified, recv_record, send_record
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import CORE

from .conftest import connected


class Spy:
    """Records the descriptors each record a client sends carries."""

    def __init__(self, proc: ClientProcess) -> None:
        self.sent: list[tuple[str, int]] = []
        chan = proc._session()
        real = chan.send_record

        def send_record(data: bytes, fds: Sequence[int], what: str) -> None:
            self.sent.append((what, len(fds)))
            real(data, fds, what)

        chan.send_record = send_record  # type: ignore[method-assign]


def _version(proc: ClientProcess, fd: int) -> int:
    return proc.ioctl(fd, CORE.DRM_IOCTL_VERSION, CORE.new("struct drm_version"))


def _raw_ioctl(proc: ClientProcess, handle: int, fd: int = 99) -> p.Result:
    """An IOCTL naming ``handle`` with no descriptor, as a hostile client sends it."""
    arg = proc.alloc(CORE.sizeof("struct drm_version"))
    reply, rfds = proc._session().call(p.Ioctl(CORE.DRM_IOCTL_VERSION, arg.addr, fd, handle))
    proc.free(arg)
    assert not rfds and isinstance(reply, p.Result)
    return reply


@pytest.fixture
def other(server: Server) -> Iterator[ClientProcess]:
    yield from connected(server)


def test_a_proven_file_travels_by_handle(client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    spy = Spy(client)
    for _ in range(3):
        assert _version(client, fd) == 0
    assert spy.sent == [("IOCTL", 0)] * 3  # OPEN proved it: no descriptor per call


def test_a_descriptor_from_elsewhere_is_proven_by_its_first_call(
    client: ClientProcess, other: ClientProcess
) -> None:
    fd = other.open("/dev/accel/accel0")
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine, theirs:
        send_fds(mine, [fd])
        _, (received,) = recv_fds(theirs)
    spy = Spy(client)
    try:
        assert _version(client, received) == 0
        assert _version(client, received) == 0
        # Not tracked by this client (it may be closed behind its back): it goes
        # with each call.
        assert spy.sent == [("IOCTL", 1), ("IOCTL", 1)]
    finally:
        os.close(received)


def test_a_handle_is_no_key_to_another_session(client: ClientProcess, other: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    handle = client._handles[client._fds[fd]]
    assert _raw_ioctl(client, handle).errno == 0
    for guess in (handle, handle + 1, 1, 0xFFFF_FFFF):
        reply = _raw_ioctl(other, guess)
        assert reply.errno == errno.EBADF, guess
        assert f"handle {guess}" in reply.message


def test_close_of_the_last_descriptor_ends_the_handle(
    client: ClientProcess, other: ClientProcess
) -> None:
    fd = client.open("/dev/accel/accel0")
    copy = client.dup(fd)
    handle = client._handles[client._fds[fd]]
    client.close(fd)
    assert _version(client, copy) == 0  # a copy remains: the handle too
    assert _raw_ioctl(client, handle).errno == 0
    # The file stays open in another process, but this one closed its last copy.
    kept = _pass(copy, other)
    client.close(copy)
    reply = _raw_ioctl(client, handle)
    assert reply.errno == errno.EBADF
    assert _version(other, kept) == 0
    with pytest.raises(BadFd):
        _version(client, copy)


def _pass(fd: int, to: ClientProcess) -> int:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine, theirs:
        send_fds(mine, [fd])
        _, (received,) = recv_fds(theirs)
    return received


def test_a_released_file_ends_the_handle_of_a_client_that_never_says(
    server: Server, client: ClientProcess
) -> None:
    fd = client.open("/dev/accel/accel0")
    handle = client._handles[client._fds[fd]]
    os.close(fd)  # behind the client's back: no CLOSE, the handle is not forgotten
    # The server releases the file when it sees the hang-up.
    for _ in range(200):
        reply = _raw_ioctl(client, handle)
        if reply.errno:
            break
        time.sleep(0.01)
    assert reply.errno == errno.EBADF


def test_a_reused_number_reaches_the_new_file(client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    bo = V.new("struct vaccel_create_bo", size=4096)
    client.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    client.close(fd)
    again = client.open("/dev/accel/accel0")
    assert again == fd  # the lowest free number
    with pytest.raises(OSError) as exc:  # the new file has no such GEM handle
        client.ioctl(
            again, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=bo.handle)
        )
    assert exc.value.errno == errno.EINVAL
    client.close(again)


def test_ioctl_on_a_closed_descriptor_is_ebadf(client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    client.close(fd)
    with pytest.raises(BadFd):
        _version(client, fd)


def _hello(rt: Path, version: int) -> tuple[Any, ...]:
    with connect_verified(rt / "control") as sock:
        body = p.Hello(False, "old").body()
        send_record(sock, p.HEADER.pack(p.MAGIC, version, p.MsgType.HELLO, 0, len(body), 1) + body)
        data, fds = recv_record(sock)
        assert not fds
        _, err, _, mlen, _ = p.Result.FIXED.unpack_from(data, p.HEADER.size)
        end, _ = recv_record(sock)  # then the server closes the connection
        text = data[p.HEADER.size + p.Result.FIXED.size :][:mlen].decode()
        return err, text, end


@pytest.mark.parametrize("version", [1, 3])
def test_a_client_of_another_version_is_told_why(
    server: Server, client: ClientProcess, version: int
) -> None:
    err, text, end = _hello(server.runtime_dir, version)
    assert err == errno.EPROTONOSUPPORT
    assert f"protocol version {version} is not supported" in text
    assert f"speaks version {p.PROTOCOL_VERSION}" in text
    assert end == b""
    fd = client.open("/dev/accel/accel0")  # the server is still there for others
    assert _version(client, fd) == 0
