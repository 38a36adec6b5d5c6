"""Resource exhaustion by one client: every cap holds with its errno, and the
others are never starved.

Engine caps (in process): ``HandleTable.limit`` → ``ENOMEM``, ``FdTable.limit`` →
``EMFILE``, a file's event space → ``ENOMEM``, device memory → ``ENOMEM`` for the
caller, kfd signal events → ``ENOSPC``. Server caps (real processes): control
connections, not-yet-opened node connections and open files per client process →
``EMFILE`` (added to ``accelcore.server`` by this issue).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accelcore import CORE, Process, VirtualClock
from accelcore.errors import NoMemory
from accelcore.machine import Machine
from accelcore.memory import PAGE_SIZE
from accelcore.server import Server, connect
from accelcore.server import protocol as p
from accelcore.server.daemon import load_machine
from accelcore.server.wire import recv_record
from accelcore.subsystem import Subsystem
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.testing.vaccel import VAccelDriver
from drivers.habana_like import HabanaLikeDriver
from drivers.habana_like.userlib import HlkClient
from drivers.kfd_like.thunk import Kfd, make_machine

from .conftest import VACCEL_MACHINE, open_fds, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]

Summary = Callable[[str], None]


def _errno(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    return 0


class SmallVAccel(VAccelDriver):
    """vaccel with a small per-file handle cap, so the test reaches it quickly."""

    name = "vsmall"
    max_handles = 32


def _create_bo(proc: Process, fd: int) -> int:
    bo = V.new("struct vaccel_create_bo", size=PAGE_SIZE)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    return int(bo.handle)


# -- engine caps ---------------------------------------------------------------------------


def test_handle_cap_is_enomem_for_the_hog_only(summary: Summary) -> None:
    sub = Subsystem(VirtualClock())
    drv = SmallVAccel()
    sub.register_driver(drv)
    d0, d1 = sub.create_device(drv), sub.create_device(drv)
    base = sub.accounting()
    hog, other = Process(sub), Process(sub)
    hfd = hog.open(d0.node_path)
    made = [_create_bo(hog, hfd) for _ in range(SmallVAccel.max_handles)]
    assert _errno(lambda: _create_bo(hog, hfd)) == errno.ENOMEM
    ofd = other.open(d1.node_path)
    assert [_create_bo(other, ofd) for _ in range(8)] == list(range(1, 9))
    hog.ioctl(hfd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=made[0]))
    assert _create_bo(hog, hfd) > 0  # room again after a close
    hog.exit()
    other.exit()
    assert sub.accounting() == base and sub.oopses == []
    summary(f"handles: cap {SmallVAccel.max_handles} reached -> ENOMEM; other file made 8")


def test_fd_cap_is_emfile_for_the_hog_only(summary: Summary) -> None:
    sub = Subsystem(VirtualClock())
    drv = VAccelDriver()
    sub.register_driver(drv)
    dev = sub.create_device(drv)
    base = sub.accounting()
    hog, other = Process(sub), Process(sub)
    hog.task.files.limit = 16
    fds = [hog.open(dev.node_path) for _ in range(16)]
    assert _errno(lambda: hog.open(dev.node_path)) == errno.EMFILE
    assert other.open(dev.node_path) >= 3
    hog.close(fds[0])
    assert hog.open(dev.node_path) == fds[0]
    hog.exit()
    other.exit()
    assert sub.accounting() == base
    summary("fds: cap 16 reached -> EMFILE; other process opened")


@pytest.mark.parametrize("how", ["dup", "send_fd"])
def test_dup_and_fd_passing_at_the_fd_cap_leak_nothing(how: str) -> None:
    sub = Subsystem(VirtualClock())
    drv = VAccelDriver()
    sub.register_driver(drv)
    dev = sub.create_device(drv)
    base = sub.accounting()
    hog, sender = Process(sub), Process(sub)
    hog.task.files.limit = 1
    fd = hog.open(dev.node_path)
    if how == "dup":
        assert _errno(lambda: hog.dup(fd)) == errno.EMFILE
    else:
        sfd = sender.open(dev.node_path)
        assert _errno(lambda: sender.send_fd(sfd, hog)) == errno.EMFILE
    hog.exit()
    sender.exit()
    assert sub.accounting() == base


def test_event_space_is_enomem_per_file(summary: Summary) -> None:
    sub = Subsystem(VirtualClock())
    drv = VAccelDriver()
    sub.register_driver(drv)
    dev = sub.create_device(drv)
    base = sub.accounting()
    hog, other = Process(sub), Process(sub)
    hfd, ofd = hog.open(dev.node_path), other.open(dev.node_path)
    hfile, ofile = hog.task.files.get(hfd), other.task.files.get(ofd)
    sent = 0
    with pytest.raises(NoMemory) as exc:
        while True:
            hfile.send_event(1, b"x" * 56)  # type: ignore[attr-defined]
            sent += 1
    assert exc.value.errno == errno.ENOMEM
    assert sent == 4096 // 64
    ofile.send_event(2, b"y" * 8)  # type: ignore[attr-defined]
    assert other.read(ofd, 4096, nonblock=True)[:4] == (2).to_bytes(4, "little")
    assert len(hog.read(hfd, 4096, nonblock=True)) == 4096  # draining makes room again
    hfile.send_event(1)  # type: ignore[attr-defined]
    hog.exit()
    other.exit()
    assert sub.accounting() == base
    summary(f"events: {sent} events (4096 bytes) queued -> ENOMEM; other file unaffected")


def test_device_memory_exhaustion_is_enomem_and_freed_with_the_hog(summary: Summary) -> None:
    m = Machine(VirtualClock())
    m.bus.populate([{"model": "habana_like", "count": 1, "options": {"dram_mb": 1}}])
    m.add_driver(HabanaLikeDriver())
    sub = m.subsystem
    base = sub.accounting()
    hog_p = Process(sub)
    hog = HlkClient(hog_p, hog_p.open("/dev/accel/accel0"))
    blocks = 0
    while _errno(lambda: hog.mem_alloc(64 * 1024)) == 0:
        blocks += 1
    assert blocks == 16
    assert _errno(lambda: hog.mem_alloc(PAGE_SIZE)) == errno.ENOMEM
    hog_p.exit()
    nxt_p = Process(sub)
    nxt = HlkClient(nxt_p, nxt_p.open("/dev/accel/accel0"))
    assert nxt.mem_alloc(1 << 20) == 1  # the whole DRAM is back for the next owner
    nxt_p.exit()
    assert sub.accounting() == base and sub.oopses == []
    summary(f"habana dram: {blocks} x 64 KiB allocated -> ENOMEM; all of it back after exit")


def test_kfd_vram_exhaustion_is_enomem_and_freed_with_the_hog(summary: Summary) -> None:
    m = make_machine(1_000)
    sub = m.subsystem
    base = sub.accounting()
    hog = Kfd(m)
    hog.acquire_all()
    gid = hog.gpu_ids[0]
    va, n = 0x1_0000_0000, 0
    while True:
        try:
            hog.alloc(gid, 16 << 20, va + n * (16 << 20))
        except OSError as exc:
            assert exc.errno == errno.ENOMEM
            break
        n += 1
    other = Kfd(m)
    other.acquire_all()
    assert other.create_event() > 0  # the other process is served meanwhile
    hog.close()
    assert other.alloc(gid, 16 << 20, va).handle  # VRAM is back once the hog exits
    other.close()
    assert sub.accounting() == base and sub.oopses == []
    summary(f"kfd vram: {n} x 16 MiB allocated -> ENOMEM; back after the hog exits")


@pytest.mark.long
def test_kfd_signal_event_exhaustion_is_enospc_per_process(summary: Summary) -> None:
    m = make_machine(1_000)
    sub = m.subsystem
    base = sub.accounting()
    hog = Kfd(m)
    events = 0
    while True:
        try:
            hog.create_event()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            break
        events += 1
    other = Kfd(m)
    assert other.create_event() > 0  # events are per process
    hog.close()
    other.close()
    assert sub.accounting() == base and sub.oopses == []
    summary(f"kfd events: {events} signal events -> ENOSPC; other process unaffected")


# -- server caps (real processes) ------------------------------------------------------------


@pytest.fixture
def capped(rt: Path) -> Iterator[tuple[Server, Machine]]:
    machine = load_machine(VACCEL_MACHINE)
    srv = Server(machine, rt, max_sessions_per_client=4, max_files_per_client=8)
    srv.start()
    yield srv, machine
    srv.stop()
    machine.shutdown()


def _peer_works(rt: Path) -> bool:
    """A different process can connect, open and run a NOP (fork; exit status)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through its exit status
        code = 1
        try:
            proc = connect(rt)
            fd = proc.open("/dev/accel/accel1")
            nop = V.new("struct vaccel_nop", value=1)
            proc.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nop)
            code = 0 if nop.result == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def test_sessions_per_client_are_capped_with_emfile(
    capped: tuple[Server, Machine], summary: Summary
) -> None:
    server, machine = capped
    base, fds = machine.subsystem.accounting(), open_fds()
    sessions = [connect(server.runtime_dir) for _ in range(4)]
    with pytest.raises(OSError) as exc:
        connect(server.runtime_dir)
    assert exc.value.errno == errno.EMFILE
    assert _peer_works(server.runtime_dir)
    sessions.pop().exit()
    assert wait_for(lambda: server._conns.get(("session", os.getpid()), 0) == 3)
    sessions.append(connect(server.runtime_dir))
    for s in sessions:
        s.exit()
    assert wait_for(lambda: machine.subsystem.accounting() == base)
    assert wait_for(lambda: open_fds() == fds)
    summary("server sessions: cap 4 per process -> EMFILE on the 5th; a peer process served")


def test_silent_node_connections_are_capped_with_emfile(
    capped: tuple[Server, Machine], summary: Summary
) -> None:
    server, _ = capped
    fds = open_fds()
    silent = []
    for _ in range(4):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(str(server.socket_path("/dev/accel/accel0")))
        silent.append(s)
    assert wait_for(lambda: server._conns.get(("opening", os.getpid()), 0) == 4)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as fifth:
        fifth.settimeout(10)
        fifth.connect(str(server.socket_path("/dev/accel/accel0")))
        data, _ = recv_record(fifth)
        msg = p.decode(data).message
        assert isinstance(msg, p.Result) and msg.errno == errno.EMFILE
    assert _peer_works(server.runtime_dir)
    for s in silent:
        s.close()
    assert wait_for(lambda: ("opening", os.getpid()) not in server._conns)
    assert wait_for(lambda: open_fds() == fds)
    summary("server silent connects: cap 4 per process -> EMFILE on the 5th; a peer served")


def test_open_files_per_client_are_capped_with_emfile(
    capped: tuple[Server, Machine], summary: Summary
) -> None:
    server, machine = capped
    base = machine.subsystem.accounting()
    proc = connect(server.runtime_dir)
    fds = [proc.open("/dev/accel/accel0") for _ in range(7)]
    bo = V.new("struct vaccel_create_bo", size=PAGE_SIZE)
    proc.ioctl(fds[0], V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    ph = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC)
    proc.ioctl(fds[0], CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)  # the 8th file
    assert wait_for(lambda: server.files_of(os.getpid()) == 8)
    with pytest.raises(OSError) as exc:
        proc.open("/dev/accel/accel0")
    assert exc.value.errno == errno.EMFILE
    ph2 = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC)
    with pytest.raises(OSError) as exc:
        proc.ioctl(fds[0], CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph2)
    assert exc.value.errno == errno.EMFILE
    assert _peer_works(server.runtime_dir)
    proc.close(fds.pop())
    assert wait_for(lambda: server.files_of(os.getpid()) == 7)
    fds.append(proc.open("/dev/accel/accel0"))
    proc.exit()
    assert wait_for(lambda: machine.subsystem.accounting() == base)
    summary("server open files: cap 8 per process -> EMFILE on open and on export; peer served")


def test_server_fd_table_dup_at_the_cap_drops_its_reference() -> None:
    """Regression: ``ServerFdTable.dup`` leaked a file reference on ``EMFILE``."""
    from accelcore.server.fdtable import CallFds, ServerFdTable
    from accelcore.vfs import OpenFile

    table = ServerFdTable(lambda: 0)
    file = OpenFile()
    with table.call(CallFds(files={3: file})):
        assert _errno(lambda: table.dup(3)) == errno.EMFILE
    assert file.refcount == 1
