"""The devfs server with a client in this process: nodes, calls, lifetime, control."""

from __future__ import annotations

import errno
import os
import socket
import threading

import pytest

from accelcore.machine import Machine
from accelcore.server import Server, connect, control_request, server_status, uevents
from accelcore.server import protocol as p
from accelcore.server.client import ClientProcess
from accelcore.server.wire import recv_record, send_record
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import CORE

from .conftest import wait_for


def _baseline(machine: Machine) -> dict[str, int]:
    return machine.subsystem.accounting()


def _own(proc: ClientProcess, fd: int, size: int = 4096) -> object:
    bo = V.new("struct vaccel_create_bo", size=size)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    return bo


def test_every_node_is_a_socket(server: Server, machine: Machine) -> None:
    for path in machine.subsystem.nodes:
        assert server.socket_path(path).is_socket()
    assert server.control_path.is_socket()


def test_ioctl_with_struct_copies_results_back(client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    nop = V.new("struct vaccel_nop", value=41)
    assert client.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nop) == 0
    assert nop.result == 42


def test_user_pointer_in_arguments_is_written_in_place(client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    name = client.alloc(64)
    v = CORE.new("struct drm_version", name=name.addr, name_len=64)
    client.ioctl(fd, CORE.DRM_IOCTL_VERSION, v)
    assert bytes(name.view[: v.name_len]) == b"vaccel"


def test_open_of_missing_node_is_enoent(client: ClientProcess) -> None:
    with pytest.raises(FileNotFoundError) as exc:
        client.open("/dev/accel/accel9")
    assert exc.value.errno == errno.ENOENT


def test_descriptors_are_real_and_close_on_exec(client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    assert os.fstat(fd)
    assert not os.get_inheritable(fd)


def test_mmap_maps_the_servers_memory(client: ClientProcess, machine: Machine) -> None:
    fd = client.open("/dev/accel/accel0")
    bo = _own(client, fd)
    m = client.mmap(fd, 4096, bo.mmap_offset)  # type: ignore[attr-defined]
    m.view[:5] = b"hello"
    (server_bo,) = machine.subsystem.device(0).buffers
    assert bytes(server_bo.view(0, 5)) == b"hello"
    m.unmap()


def test_job_completes_and_wait_returns(client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    bo = _own(client, fd)
    job = V.new("struct vaccel_submit", handle=bo.handle, fill=0x5A, delay_ns=1_000_000)  # type: ignore[attr-defined]
    client.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
    wait = V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=5_000_000_000)
    client.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, wait)
    assert wait.status == V.VACCEL_WAIT_COMPLETED


def test_file_lives_until_last_dup_is_closed(client: ClientProcess, machine: Machine) -> None:
    base = _baseline(machine)
    fd = client.open("/dev/accel/accel0")
    fd2 = client.dup(fd)
    client.close(fd)
    assert wait_for(lambda: machine.subsystem.accounting()["files"] == base["files"] + 1)
    nop = V.new("struct vaccel_nop", value=1)
    client.ioctl(fd2, V.DRM_IOCTL_VACCEL_NOP, nop)
    client.close(fd2)
    assert wait_for(lambda: machine.subsystem.accounting() == base)


def test_exit_frees_everything(server: Server, machine: Machine) -> None:
    base = _baseline(machine)
    proc = connect(server.runtime_dir)
    fd = proc.open("/dev/accel/accel0")
    bo = _own(proc, fd)
    proc.mmap(fd, 4096, bo.mmap_offset)  # type: ignore[attr-defined]
    ph = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC)  # type: ignore[attr-defined]
    proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
    proc.exit()
    assert wait_for(lambda: machine.subsystem.accounting() == base)


def test_dmabuf_fd_is_real_cloexec_and_maps_same_memory(client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    bo = _own(client, fd)
    bo_map = client.mmap(fd, 4096, bo.mmap_offset)  # type: ignore[attr-defined]
    ph = CORE.new(
        "struct drm_prime_handle",
        handle=bo.handle,  # type: ignore[attr-defined]
        flags=CORE.DRM_CLOEXEC | CORE.DRM_RDWR,
    )
    client.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
    assert not os.get_inheritable(ph.fd)
    buf_map = client.mmap(ph.fd, 4096)
    buf_map.view[:3] = b"abc"
    assert bytes(bo_map.view[:3]) == b"abc"


def test_self_import_of_passed_back_fd_gives_original_handle(client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    bo = _own(client, fd)
    ph = CORE.new("struct drm_prime_handle", handle=bo.handle)  # type: ignore[attr-defined]
    client.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
    back = CORE.new("struct drm_prime_handle", fd=ph.fd)
    client.ioctl(fd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, back)
    assert back.handle == bo.handle  # type: ignore[attr-defined]


def test_import_of_a_non_dmabuf_fd_is_einval(client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    _own(client, fd)
    r, w = os.pipe()
    try:
        arg = CORE.new("struct drm_prime_handle", fd=r)
        with pytest.raises(OSError) as exc:
            client.ioctl(fd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, arg)
        assert exc.value.errno == errno.EINVAL
    finally:
        os.close(r)
        os.close(w)


def test_udmabuf_wraps_a_sealed_memfd_shared_not_copied(client: ClientProcess) -> None:
    import fcntl

    memfd = client.memfd_create("user", 8192)
    client.add_seals(memfd, fcntl.F_SEAL_SHRINK)
    udev = client.open("/dev/udmabuf")
    create = CORE.new(
        "struct udmabuf_create", memfd=memfd, flags=CORE.UDMABUF_FLAGS_CLOEXEC, offset=0, size=8192
    )
    dmabuf = client.ioctl(udev, CORE.UDMABUF_CREATE, create)
    m = client.mmap(dmabuf, 8192)
    m.view[:4] = b"WXYZ"
    assert os.pread(memfd, 4, 0) == b"WXYZ"


def test_second_owner_is_busy(server: Server, client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    _own(client, fd)
    other = connect(server.runtime_dir)
    try:
        ofd = other.open("/dev/accel/accel0")
        with pytest.raises(OSError) as exc:
            _own(other, ofd)
        assert exc.value.errno == errno.EBUSY
    finally:
        other.exit()


def test_signal_interrupts_a_blocking_wait_with_eintr(client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    bo = _own(client, fd)
    job = V.new("struct vaccel_submit", handle=bo.handle, fill=1, delay_ns=60 * 10**9)  # type: ignore[attr-defined]
    client.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
    result: list[BaseException] = []

    def waiter() -> None:
        wait = V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=-1)
        try:
            client.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, wait)
        except OSError as exc:
            result.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    client.signal()  # a signal posted before the wait starts interrupts it too
    t.join(10)
    assert not t.is_alive()
    assert [getattr(e, "errno", None) for e in result] == [errno.EINTR]


def test_blocked_client_does_not_block_others(server: Server, client: ClientProcess) -> None:
    fd = client.open("/dev/accel/accel0")
    bo = _own(client, fd)
    job = V.new("struct vaccel_submit", handle=bo.handle, fill=1, delay_ns=60 * 10**9)  # type: ignore[attr-defined]
    client.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
    errors: list[int | None] = []

    def waiter() -> None:
        try:
            client.ioctl(
                fd,
                V.DRM_IOCTL_VACCEL_WAIT,
                V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=-1),
            )
        except OSError as exc:
            errors.append(exc.errno)

    t = threading.Thread(target=waiter)
    t.start()
    other = connect(server.runtime_dir)
    try:
        ofd = other.open("/dev/accel/accel1")
        nop = V.new("struct vaccel_nop", value=1)
        other.ioctl(ofd, V.DRM_IOCTL_VACCEL_NOP, nop)
        assert nop.result == 2
        # the same session's other threads are not blocked either
        nop2 = V.new("struct vaccel_nop", value=5)
        client.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nop2)
        assert nop2.result == 6
    finally:
        other.exit()
        client.signal()
        t.join(10)
    assert errors == [errno.EINTR]


def test_control_lists_devices_and_status(server: Server) -> None:
    devices = control_request("devices", server.runtime_dir)
    assert [(d["name"], d["driver"], d["status"]) for d in devices] == [
        ("accel0", "vaccel", "operational"),
        ("accel1", "vaccel", "operational"),
    ]
    status = server_status(server.runtime_dir)
    assert status is not None and status["pid"] == os.getpid()
    assert status["protocol"] == p.PROTOCOL_VERSION


def test_server_status_without_server_is_none(rt: object) -> None:
    assert server_status(str(rt)) is None


def test_uevent_subscription_sees_a_new_device(server: Server, machine: Machine) -> None:
    stream = uevents(server.runtime_dir)
    first: list[dict[str, object]] = []
    t = threading.Thread(target=lambda: first.append(next(stream)))
    t.start()
    assert wait_for(lambda: len(machine.sysfs._listeners) >= 2)  # server's + stream's
    machine.subsystem.create_device(machine.subsystem.drivers["vaccel"])
    t.join(10)
    stream.close()
    assert first and first[0]["action"] == "add"
    assert wait_for(lambda: server.socket_path("/dev/accel/accel2").is_socket())


# -- hostile input: only the offending connection is closed ------------------------------


def _raw(path: object) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(str(path))
    return s


GARBAGE = {
    "short": b"xx",
    "bad magic": b"NOPE" + b"\0" * 20,
    "truncated": p.encode(p.Munmap(1))[:-3],
    "oversized": b"\0" * (p.MAX_MESSAGE + 100),
    "ioctl before hello": p.encode(p.Ioctl(1, 0, 0)),
}


@pytest.mark.parametrize("raw", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_on_control_closes_only_that_connection(
    server: Server, client: ClientProcess, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    fd = client.open("/dev/accel/accel0")
    bad = _raw(server.control_path)
    with bad:
        bad.send(raw)
        assert bad.recv(100) == b""  # closed by the server
    nop = V.new("struct vaccel_nop", value=7)
    client.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nop)
    assert nop.result == 8
    assert any("refused" in r.message for r in caplog.records)


def test_too_many_descriptors_close_the_connection(server: Server, client: ClientProcess) -> None:
    bad = _raw(server.control_path)
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(p.MAX_FDS + 1)]
    try:
        with bad:
            send_record(bad, p.encode(p.Hello()), fds)
            assert bad.recv(100) == b""
    finally:
        for fd in fds:
            os.close(fd)
    assert client.poll(client.open("/dev/accel/accel0")) & 4  # POLLOUT


def test_non_open_first_record_on_a_node_is_refused(server: Server, machine: Machine) -> None:
    base = _baseline(machine)
    bad = _raw(server.socket_path("/dev/accel/accel0"))
    with bad:
        bad.send(p.encode(p.Poll()))
        assert bad.recv(100) == b""
    assert machine.subsystem.accounting() == base


def test_data_on_an_open_file_releases_only_that_file(
    server: Server, client: ClientProcess, machine: Machine
) -> None:
    base = _baseline(machine)
    keep = client.open("/dev/accel/accel0")
    noisy = client.open("/dev/accel/accel1")
    os.write(noisy, b"garbage")
    assert wait_for(lambda: machine.subsystem.accounting()["files"] == base["files"] + 1)
    nop = V.new("struct vaccel_nop", value=1)
    client.ioctl(keep, V.DRM_IOCTL_VACCEL_NOP, nop)
    assert nop.result == 2


def test_open_with_someone_elses_token_is_eperm(server: Server, client: ClientProcess) -> None:
    s = _raw(server.socket_path("/dev/accel/accel0"))
    with s:
        send_record(s, p.encode(p.Open(os.O_RDWR, b"\0" * 16)), [s.fileno()])
        data, _ = recv_record(s)
        msg = p.decode(data).message
        assert isinstance(msg, p.Result) and msg.errno == errno.EPERM


def test_exit_ends_a_call_blocked_in_another_thread(server: Server, machine: Machine) -> None:
    """exit() ends the session even while a thread is blocked in a wait: that
    thread's call fails with ENODEV and the server-side task goes at once."""
    base = _baseline(machine)
    proc = connect(server.runtime_dir)
    fd = proc.open("/dev/accel/accel0")
    bo = _own(proc, fd)
    job = V.new("struct vaccel_submit", handle=bo.handle, fill=1, delay_ns=60 * 10**9)  # type: ignore[attr-defined]
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
    errors: list[int | None] = []

    def waiter() -> None:
        wait = V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=-1)
        try:
            proc.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, wait)
        except OSError as exc:
            errors.append(exc.errno)

    t = threading.Thread(target=waiter)
    t.start()
    # the wait is running on a worker of the server-side session
    session = server._sessions[proc.token]
    assert wait_for(lambda: bool(session._inflight), 5)
    proc.exit()
    t.join(10)
    assert not t.is_alive()
    assert errors == [errno.ENODEV]
    assert wait_for(lambda: _baseline(machine) == base)


def test_two_sessions_of_one_process_are_two_tasks(machine: Machine, server: Server) -> None:
    """A second session of a client process gets a task of its own: neither
    replaces the other in the subsystem's task table, and each lives until its
    own session ends (the test transports drive several processes this way)."""
    sub = machine.subsystem
    a, b = connect(server.runtime_dir), connect(server.runtime_dir)
    try:
        fa = a.open("/dev/accel/accel0")
        fb = b.open("/dev/accel/accel0")
        tasks = {s.task.pid: s.task for s in server._sessions.values() if s.task is not None}
        assert len(tasks) == 2 and os.getpid() in tasks
        with machine.clock.lock:
            assert {p: sub.tasks.get(p) for p in tasks} == tasks
        pids = {f.pid for f in machine.subsystem.device(0).files}
        assert pids == set(tasks)  # each file names its own opener
        a.close(fa)
        a.exit()
        assert wait_for(lambda: len(server._sessions) == 1)
        (left,) = [
            t for p, t in tasks.items() if p in {s.task.pid for s in server._sessions.values()}
        ]
        with machine.clock.lock:
            assert sub.tasks.get(left.pid) is left  # the first one's exit left it alone
        v = CORE.new("struct drm_version")
        b.ioctl(fb, CORE.DRM_IOCTL_VERSION, v)
        assert v.name_len == len("vaccel")
    finally:
        a.exit()
        b.exit()
