"""The dispatcher: one thread serves every session past HELLO; a client that
never reads its replies gets them queued, then its session closed — and the
other clients are served all along."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

from accelcore.machine import Machine
from accelcore.server import Server, connect
from accelcore.server import protocol as p
from accelcore.server.client import ioctl_buffer
from accelcore.server.dispatch import OUTBOX_MAX
from accelcore.server.wire import connect_verified, recv_record, send_record
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import CORE

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


def _server_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_sleeping_calls_reply_to_a_client_that_never_reads_stops_no_one(
    server: Server, machine: Machine
) -> None:
    """A batch that sleeps (a WAIT) and then returns a descriptor is answered by a
    worker; the client reads no reply, so its socket is full by then. The worker
    must not block in ``sendmsg`` holding the locks the dispatcher takes (the send
    lock; with descriptors, the one a CLOSE waits on): after the client's CLOSE,
    another client is still served."""
    base, fds_before = machine.subsystem.accounting(), _server_fds()
    good = connect(server.runtime_dir)
    gfd = good.open("/dev/accel/accel0")
    deaf = connect(server.runtime_dir)
    fd = deaf.open("/dev/accel/accel0")
    sync = CORE.new("struct drm_syncobj_create")
    deaf.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_CREATE, sync)
    bo = V.new("struct vaccel_create_bo", size=4096)
    deaf.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    job = V.new("struct vaccel_submit", handle=bo.handle, fill=1, delay_ns=60 * 10**9)
    deaf.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
    session = server._sessions[deaf.token]
    args = []
    for struct_ in (
        V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=200_000_000),
        CORE.new("struct drm_syncobj_handle", handle=sync.handle),
    ):
        raw = bytes(ioctl_buffer(struct_))
        buf = deaf.alloc(len(raw))
        buf.view[:] = raw
        args.append(buf.addr)
    del buf  # its view would keep the arena (and its memfd) past exit()
    handle = deaf._handles[deaf._fds[fd]]
    sock = deaf._session().sock
    sock.send(
        p.encode(
            p.Batch(
                (
                    p.Ioctl(V.DRM_IOCTL_VACCEL_WAIT, args[0], fd, handle),
                    p.Ioctl(CORE.DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, args[1], fd, handle),
                )
            ),
            1 << 40,
        )
    )
    # Replies it never reads (EBADF: a handle it never proved) fill its socket.
    bad = p.encode_ioctl(2, V.DRM_IOCTL_VACCEL_NOP, 0, 3, 1 << 30)
    for _ in range(OUTBOX_MAX // 2):
        sock.send(bad)
    assert wait_for(lambda: len(session._outbox) > 0)  # the socket is full
    wait_for(lambda: not session._inflight)  # the batch's worker is done (or blocked)
    st = os.fstat(fd)
    sock.send(p.encode(p.Close(st.st_dev, st.st_ino, False), 3))
    served: list[int] = []

    def call() -> None:
        nop = V.new("struct vaccel_nop", value=5)
        good.ioctl(gfd, V.DRM_IOCTL_VACCEL_NOP, nop)
        served.append(nop.result)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(20)
    assert served == [6]
    deaf.exit()
    good.exit()
    assert wait_for(lambda: machine.subsystem.accounting() == base)
    # Also the descriptor in the reply it never claimed (exit() read past it).
    assert wait_for(lambda: _server_fds() <= fds_before)
