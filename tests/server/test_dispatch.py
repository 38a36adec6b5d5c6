"""The dispatcher: one thread serves every session past HELLO; a client that
never reads its replies gets them queued, then its session closed — and the
other clients are served all along."""

from __future__ import annotations

import errno
import threading
import time

import pytest

from accelcore.machine import Machine
from accelcore.server import Server, connect
from accelcore.server import protocol as p
from accelcore.server.dispatch import OUTBOX_MAX
from accelcore.server.wire import connect_verified, recv_record, send_record
from accelcore.testing.vaccel import VACCEL_UAPI as V

from .conftest import wait_for


def _threads(prefix: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive())


def test_sessions_past_hello_leave_their_threads(server: Server) -> None:
    before = _threads("accel-session")
    clients = [connect(server.runtime_dir) for _ in range(12)]
    try:
        fds = [c.open("/dev/accel/accel0") for c in clients]
        assert wait_for(lambda: _threads("accel-session") == before)
        for c, fd in zip(clients, fds, strict=True):  # all served, by the one thread
            nop = V.new("struct vaccel_nop", value=3)
            c.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nop)
            assert nop.result == 4
    finally:
        for c in clients:
            c.exit()


def test_a_client_that_never_reads_is_closed_and_others_go_on(
    server: Server, machine: Machine, caplog: pytest.LogCaptureFixture
) -> None:
    base = machine.subsystem.accounting()
    good = connect(server.runtime_dir)
    gfd = good.open("/dev/accel/accel0")
    deaf = connect_verified(server.control_path)
    send_record(deaf, p.encode(p.Hello(False, "deaf"), 1))
    data, _ = recv_record(deaf)
    assert isinstance(p.decode(data).message, p.Welcome)
    # Requests whose replies it never reads (EBADF: a handle it never proved).
    request = p.encode_ioctl(2, V.DRM_IOCTL_VACCEL_NOP, 0, 3, 77)
    deaf.setblocking(False)
    sent, stalled_since = 0, None
    while sent < 4 * OUTBOX_MAX:
        try:
            deaf.send(request)
            sent += 1
            stalled_since = None
        except BlockingIOError:
            # The server stopped reading (it closed the session) or is behind.
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 2:
                break
            time.sleep(0.001)
        except OSError as exc:
            assert exc.errno in (errno.EPIPE, errno.ECONNRESET)
            break
        if sent % 256 == 0:  # the well-behaved client is served meanwhile
            nop = V.new("struct vaccel_nop", value=sent)
            good.ioctl(gfd, V.DRM_IOCTL_VACCEL_NOP, nop)
            assert nop.result == sent + 1
    assert sent > OUTBOX_MAX  # the server took its requests while it could
    assert wait_for(lambda: "does not read its replies" in caplog.text)
    # Its session was closed: reading drains the replies the socket held, then EOF.
    deaf.setblocking(True)
    deaf.settimeout(10)
    replies = 0
    try:
        while recv_record(deaf)[0]:
            replies += 1
    except ConnectionResetError:
        pass
    assert replies <= sent
    deaf.close()
    nop = V.new("struct vaccel_nop", value=1)
    good.ioctl(gfd, V.DRM_IOCTL_VACCEL_NOP, nop)
    assert nop.result == 2
    good.exit()
    assert wait_for(lambda: machine.subsystem.accounting() == base)


def test_stop_ends_dispatched_sessions(machine: Machine, rt: object) -> None:
    srv = Server(machine, rt)  # type: ignore[arg-type]
    srv.start()
    clients = [connect(srv.runtime_dir) for _ in range(4)]
    for c in clients:
        c.open("/dev/accel/accel0")
    srv.stop()
    assert not srv._sessions
    for c in clients:
        c.exit()
