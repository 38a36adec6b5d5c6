"""Real processes: ownership across a SIGKILL, dma-buf passing, fd lifetime,
interrupts from a signal handler, node permissions, and the daemon helpers."""

from __future__ import annotations

import errno
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from accelcore import RealClock
from accelcore.machine import Machine
from accelcore.server import Server, connect, recv_fds, server_status, spawn_server, stop_server
from accelcore.server.client import ClientProcess
from accelcore.subsystem import DevNode
from accelcore.testing import VAccelDriver
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import CORE

from .conftest import VACCEL_MACHINE, Child, wait_for

pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(60)]

Children = Callable[..., Child]


def _child_sending_fd(children: Children, script: str, runtime_dir: Path) -> tuple[Child, int]:
    """Start ``script`` with one end of a socketpair (``SOCKFD``); once it says
    ``SENT``, receive the descriptor it passed over it."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine:
        child = children(
            script.replace("SOCKFD", str(theirs.fileno())),
            runtime_dir,
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        child.expect("SENT")
        _, (fd,) = recv_fds(mine)
    return child, fd


def _info(proc: ClientProcess, fd: int, op: int, ctype: str, count: int = 1) -> list[Any]:
    size = CORE.sizeof(ctype)
    buf = proc.alloc(size * count)
    try:
        arg = CORE.new(
            "struct accel_info", return_pointer=buf.addr, return_size=size * count, op=op
        )
        proc.ioctl(fd, CORE.ACCEL_IOCTL_INFO, arg)
        n = min(arg.actual_size, size * count) // size
        return [
            CORE.from_bytes(ctype, bytes(buf.view[i * size : (i + 1) * size])) for i in range(n)
        ]
    finally:
        proc.free(buf)


OWNER_SCRIPT = """
proc = connect(RT)
fd = proc.open("/dev/accel/accel0")
bo = V.new("struct vaccel_create_bo", size=1 << 20)
proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
m = proc.mmap(fd, 1 << 20, bo.mmap_offset)
job = V.new("struct vaccel_submit", handle=bo.handle, fill=7, delay_ns=DELAY)
proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
say("OWNED", job.seqno)
wait = V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=-1)
proc.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, wait)
say("STATUS", wait.status, bytes(m.view[:2]).hex())
"""


def test_killed_owner_is_revoked_and_next_process_owns(
    server: Server, machine: Machine, client: ClientProcess, children: Children
) -> None:
    base = machine.subsystem.accounting()
    owner = children(OWNER_SCRIPT.replace("DELAY", str(1_500_000_000)), server.runtime_dir)
    owner.expect("OWNED")
    # another process asks INFO while the job runs
    fd = client.open("/dev/accel/accel0")
    (own,) = _info(client, fd, CORE.ACCEL_INFO_OWNERSHIP, "struct accel_info_ownership")
    assert (own.state, own.owner_pid) == (1, owner.pid)
    clients = _info(client, fd, CORE.ACCEL_INFO_CLIENTS, "struct accel_info_client", 4)
    assert sorted(c.pid for c in clients) == sorted([owner.pid, os.getpid()])
    assert wait_for(lambda: machine.subsystem.tasks[owner.pid].wait_points_seen >= 1)

    os.kill(owner.pid, signal.SIGKILL)
    assert owner.finish() == -signal.SIGKILL
    assert wait_for(lambda: machine.subsystem.device(0).ownership.owner is None)
    client.close(fd)
    assert wait_for(lambda: machine.subsystem.accounting() == base)

    (counters,) = [machine.subsystem.device(0).driver.state(machine.subsystem.device(0))]
    assert (counters.submitted, counters.completed) == (1, 0)  # revoked, never completed
    nxt = children(OWNER_SCRIPT.replace("DELAY", "1000000"), server.runtime_dir)
    nxt.expect("OWNED")
    assert nxt.expect("STATUS") == f"STATUS {V.VACCEL_WAIT_COMPLETED} 0707"
    assert nxt.finish() == 0
    assert wait_for(lambda: machine.subsystem.accounting() == base)


EXPORTER_SCRIPT = """
sock = socket.socket(fileno=SOCKFD)
proc = connect(RT)
fd = proc.open("/dev/accel/accel0")
bo = V.new("struct vaccel_create_bo", size=4096)
proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
m = proc.mmap(fd, 4096, bo.mmap_offset)
m.view[:] = b"\\x5a" * 4096
ph = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC | CORE.DRM_RDWR)
proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
send_fds(sock, [ph.fd])
say("SENT")
sys.stdin.readline()
say("SEES", bytes(m.view[:4]).hex())
"""


def test_dmabuf_passed_to_another_process_is_the_same_memory(
    server: Server, machine: Machine, client: ClientProcess, children: Children
) -> None:
    base = machine.subsystem.accounting()
    exporter, buf_fd = _child_sending_fd(children, EXPORTER_SCRIPT, server.runtime_dir)
    assert not os.get_inheritable(buf_fd)
    m = client.mmap(buf_fd, 4096)
    assert bytes(m.view[:4]) == b"\x5a" * 4
    dev1 = client.open("/dev/accel/accel1")
    imp = CORE.new("struct drm_prime_handle", fd=buf_fd)
    client.ioctl(dev1, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, imp)
    assert imp.handle > 0
    m.view[:4] = b"\xc3" * 4
    exporter.send("CHECK")
    assert exporter.expect("SEES") == "SEES c3c3c3c3"
    assert exporter.finish() == 0
    m.unmap()
    client.close(buf_fd)
    client.close(dev1)
    assert wait_for(lambda: machine.subsystem.accounting() == base)


PASSER_SCRIPT = """
sock = socket.socket(fileno=SOCKFD)
proc = connect(RT)
fd = proc.open("/dev/accel/accel0")
send_fds(sock, [fd])
say("SENT")
"""


def test_file_outlives_its_opener_while_a_passed_copy_is_open(
    server: Server, machine: Machine, client: ClientProcess, children: Children
) -> None:
    base = machine.subsystem.accounting()
    child, fd = _child_sending_fd(children, PASSER_SCRIPT, server.runtime_dir)
    assert child.finish() == 0
    nop = V.new("struct vaccel_nop", value=9)
    client.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nop)  # the opener is gone; the file is not
    assert nop.result == 10
    assert machine.subsystem.accounting()["files"] == base["files"] + 1
    client.close(fd)
    assert wait_for(lambda: machine.subsystem.accounting() == base)


SIGINT_SCRIPT = """
proc = connect(RT)
proc.install_sigint_handler()
fd = proc.open("/dev/accel/accel0")
bo = V.new("struct vaccel_create_bo", size=4096)
proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
job = V.new("struct vaccel_submit", handle=bo.handle, fill=1, delay_ns=60 * 10**9)
proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
say("WAITING")
try:
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT,
               V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=-1))
    say("COMPLETED")
except InterruptedError as exc:
    say("EINTR" if exc.errno == 4 else f"ERRNO {exc.errno}")
"""


def test_sigint_in_the_client_interrupts_a_wait_in_the_server(
    server: Server, machine: Machine, children: Children
) -> None:
    child = children(SIGINT_SCRIPT, server.runtime_dir)
    child.expect("WAITING")
    assert wait_for(
        lambda: (
            child.pid in machine.subsystem.tasks
            and machine.subsystem.tasks[child.pid].wait_points_seen >= 1
        )
    )
    os.kill(child.pid, signal.SIGINT)
    assert child.expect("EINTR") == "EINTR"
    assert child.finish() == 0


@pytest.fixture
def secret_server(machine: Machine, rt: Path) -> Iterator[Server]:
    accel = machine.subsystem.nodes["/dev/accel/accel0"]
    machine.subsystem.add_node(DevNode("/dev/accel/secret", 0o600, 0, 0, accel.opener))
    srv = Server(machine, rt)
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.skipif(os.getuid() != 0, reason="dropping to nobody needs root")
def test_mode_0600_node_refuses_a_non_root_peer(secret_server: Server) -> None:
    rt = secret_server.runtime_dir
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 3
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            proc = connect(rt)
            try:
                proc.open("/dev/accel/secret")
                code = 1
            except PermissionError as exc:
                code = 0 if exc.errno == errno.EACCES else 2
            proc.open("/dev/accel/accel0")  # mode 0666 is fine
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_root_may_open_the_0600_node(secret_server: Server) -> None:
    proc = connect(secret_server.runtime_dir)
    try:
        assert proc.open("/dev/accel/secret") >= 0
    finally:
        proc.exit()


def test_spawned_server_serves_and_stops(rt: Path) -> None:
    pid = spawn_server(VACCEL_MACHINE, rt, timeout=30)
    try:
        status = server_status(rt)
        assert status is not None and status["pid"] == pid
        assert status["machine"]["virtual"] == VACCEL_MACHINE["virtual"]
        proc = connect(rt)
        fd = proc.open("/dev/accel/accel1")
        nop = V.new("struct vaccel_nop", value=1)
        proc.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nop)
        assert nop.result == 2
        proc.exit()
    finally:
        assert stop_server(rt) is True
    assert server_status(rt) is None
    assert stop_server(rt) is False


class OtherAccel(VAccelDriver):
    """A second driver (same uAPI, its own name), so the share crosses drivers."""

    name = "otheraccel"


def test_dmabuf_crosses_drivers_and_processes(rt: Path, children: Children) -> None:
    """Issue 4's last case: a buffer exported by a device of one driver, in one
    process, is imported by a device of another driver in another process; a job
    on the importer's device writes it and the exporter reads the bytes."""
    machine = Machine(RealClock())
    first, second = VAccelDriver(), OtherAccel()
    machine.add_driver(first)
    machine.add_driver(second)
    machine.subsystem.create_device(first)  # accel0: vaccel
    machine.subsystem.create_device(second)  # accel1: otheraccel
    with Server(machine, rt) as server:
        base = machine.subsystem.accounting()
        client = connect(server.runtime_dir)
        exporter, buf_fd = _child_sending_fd(children, EXPORTER_SCRIPT, server.runtime_dir)
        other = client.open("/dev/accel/accel1")
        imp = CORE.new("struct drm_prime_handle", fd=buf_fd)
        client.ioctl(other, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, imp)
        bufinfo = machine.subsystem.dmabufs.bufinfo()
        assert [(b["exporter"], b["attachments"]) for b in bufinfo] == [("accel0", ["accel1"])]
        job = V.new("struct vaccel_submit", handle=imp.handle, fill=0x77, delay_ns=1000)
        client.ioctl(other, V.DRM_IOCTL_VACCEL_SUBMIT, job)
        client.ioctl(
            other,
            V.DRM_IOCTL_VACCEL_WAIT,
            V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=-1),
        )
        exporter.send("CHECK")
        assert (
            exporter.expect("SEES") == "SEES 77777777"
        )  # otheraccel's write, seen in vaccel's export
        assert exporter.finish() == 0
        client.close(buf_fd)  # the last copy of the buffer's fd, in this process
        client.exit()
        ok = wait_for(lambda: machine.subsystem.accounting() == base)
        after = machine.subsystem.accounting()
        assert ok, {k: (base[k], after[k]) for k in base if base[k] != after[k]}
    machine.shutdown()
