"""System-call semantics through the server: the last close() releases the file
before it returns (a new owner, or an UNMAP, works at once after closing the last
dma-buf fd, with no retry), read() of events with a short buffer returns 0 bytes
and keeps the event, and SET/DROP_MASTER from a non-opener is EACCES."""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from accelcore.machine import Machine
from accelcore.server import Server, connect, send_fds, spawn_server, stop_server
from accelcore.server.client import ClientProcess
from accelcore.server.daemon import control_request, load_machine
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import CORE
from drivers.habana_like import HLK
from drivers.habana_like.packets import encode_lin_dma
from drivers.habana_like.userlib import HlkClient
from drivers.kfd_like.driver import KfdLikeDriver

from .conftest import Child, wait_for

pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(120)]

#: vaccel at accel0, habana_like at accel1, in a server process of their own.
MACHINE: dict[str, Any] = {
    "machine": {"clock": "real", "drivers": ["vaccel", "habana_like"]},
    "virtual": [{"driver": "vaccel", "count": 1}],
    "pci": [{"model": "habana_like", "options": {"dram_mb": 4}}],
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    rt = Path(tmp_path_factory.mktemp("sysc"))
    spawn_server(MACHINE, rt, timeout=60)
    try:
        yield rt
    finally:
        stop_server(rt)


def _accounting(rt: Path) -> dict[str, int]:
    counts: dict[str, int] = control_request("accounting", rt)
    return counts


def _node(rt: Path, driver: str) -> str:
    devices = control_request("devices", rt)
    (dev,) = [d for d in devices if d["driver"] == driver]
    return str(dev["node"])


def _errno(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    return 0


def test_new_owner_right_after_closing_the_last_dmabuf_fd(served: Path) -> None:
    p = connect(served)
    base = _accounting(served)  # with this session's arena
    try:
        node = _node(served, "vaccel")
        fd = p.open(node)
        bo = V.new("struct vaccel_create_bo", size=4096)
        p.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
        ph = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC)
        p.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
        p.close(fd)  # the owner's file is released: its export pins the ownership
        nxt = p.open(node)
        assert _errno(lambda: p.ioctl(nxt, CORE.DRM_IOCTL_SET_MASTER)) == errno.EBUSY
        p.close(ph.fd)  # the last reference of the dma-buf: the pin goes with it
        p.ioctl(nxt, CORE.DRM_IOCTL_SET_MASTER)  # no retry
        p.close(nxt)
        assert _accounting(served) == base  # already, not eventually
    finally:
        p.exit()


def test_unmap_right_after_closing_the_last_dmabuf_fd(served: Path) -> None:
    p = connect(served)
    base = _accounting(served)  # with this session's arena
    try:
        fd = p.open(_node(served, "habana_like"))
        hl = HlkClient(p, fd)  # type: ignore[arg-type]
        handle = hl.mem_alloc(1 << 16)
        va = hl.map_device(handle)
        buf = hl.export(va, 1 << 16)
        assert _errno(lambda: hl.unmap(va)) == errno.EINVAL  # exported
        p.close(buf)
        hl.unmap(va)  # no retry
        hl.mem_free(handle)
        p.close(fd)
        assert _accounting(served) == base
    finally:
        p.exit()


def test_close_of_one_of_two_copies_releases_nothing(served: Path) -> None:
    p = connect(served)
    try:
        fd = p.open(_node(served, "vaccel"))
        p.ioctl(fd, CORE.DRM_IOCTL_SET_MASTER)
        copy = p.dup(fd)
        p.close(fd)
        other = p.open(_node(served, "vaccel"))
        assert _errno(lambda: p.ioctl(other, CORE.DRM_IOCTL_SET_MASTER)) == errno.EBUSY
        p.close(copy)
        p.ioctl(other, CORE.DRM_IOCTL_SET_MASTER)
    finally:
        p.exit()


def test_last_close_does_not_wait_for_the_servers_selector_thread(
    server: Server, machine: Machine, client: ClientProcess
) -> None:
    # The selector thread notices hang-ups asynchronously; a close() must not
    # depend on when it does. Stall it (after the opens, which it accepts).
    base = machine.subsystem.accounting()
    fd = client.open("/dev/accel/accel0")
    nxt = client.open("/dev/accel/accel0")
    gate = threading.Event()

    def stall() -> None:
        gate.wait(30)

    server.post(stall)
    try:
        bo = V.new("struct vaccel_create_bo", size=4096)
        client.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
        ph = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC)
        client.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
        client.close(fd)
        client.close(ph.fd)
        client.ioctl(nxt, CORE.DRM_IOCTL_SET_MASTER)
        client.close(nxt)
        assert machine.subsystem.accounting() == base
    finally:
        gate.set()


def test_exit_releases_the_files_it_closes_before_returning(
    server: Server, machine: Machine, client: ClientProcess
) -> None:
    owner = connect(server.runtime_dir)
    ofd = owner.open("/dev/accel/accel0")
    owner.ioctl(ofd, CORE.DRM_IOCTL_SET_MASTER)
    nxt = client.open("/dev/accel/accel0")
    gate = threading.Event()

    def stall() -> None:
        gate.wait(30)

    server.post(stall)
    try:
        owner.exit()
        client.ioctl(nxt, CORE.DRM_IOCTL_SET_MASTER)  # no retry
    finally:
        gate.set()
    client.close(nxt)


# -- read() of events (in-process server: the test queues the events) --------------


def test_read_with_a_short_buffer_returns_nothing_and_keeps_the_event(
    machine: Machine, client: ClientProcess
) -> None:
    fd = client.open("/dev/accel/accel0")
    dev = machine.subsystem.device(0)
    with machine.clock.lock:
        (file,) = dev.files
        file.send_event(0x80000001, b"12345678")  # 16 bytes with the header
        file.send_event(0x80000002, b"")  # 8 bytes
    assert client.read(fd, 15) == b""
    assert client.read(fd, 20)[:4] == (0x80000001).to_bytes(4, "little")  # the second: no room
    assert client.read(fd, 8) == (0x80000002).to_bytes(4, "little") + (8).to_bytes(4, "little")
    assert _errno(lambda: client.read(fd, 8, nonblock=True)) == errno.EAGAIN
    client.close(fd)


# -- SET/DROP_MASTER from a process that is not the opener -------------------------

NON_OPENER_SCRIPT = """
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sock = socket.socket(fileno=SOCKFD)
proc = connect(RT)
_, (fd,) = recv_fds(sock)
for name in ("DRM_IOCTL_DROP_MASTER", "DRM_IOCTL_SET_MASTER"):
    try:
        proc.ioctl(fd, getattr(CORE, name))
        say(name, 0)
    except OSError as exc:
        say(name, exc.errno)
"""


@pytest.mark.skipif(os.getuid() != 0, reason="dropping to nobody needs root")
def test_passed_fd_cannot_drop_its_owners_master(
    machine: Machine, client: ClientProcess, children: Callable[..., Child], rt: Path
) -> None:
    rt.chmod(0o755)
    fd = client.open("/dev/accel/accel0")
    client.ioctl(fd, CORE.DRM_IOCTL_SET_MASTER)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine:
        child = children(
            NON_OPENER_SCRIPT.replace("SOCKFD", str(theirs.fileno())),
            rt,
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        send_fds(mine, [fd])
        assert child.expect("DRM_IOCTL_DROP_MASTER") == f"DRM_IOCTL_DROP_MASTER {errno.EACCES}"
        assert child.expect("DRM_IOCTL_SET_MASTER") == f"DRM_IOCTL_SET_MASTER {errno.EACCES}"
        assert child.finish() == 0
    assert machine.subsystem.device(0).ownership.owner is not None
    client.ioctl(fd, CORE.DRM_IOCTL_DROP_MASTER)  # the opener still may
    client.close(fd)


# -- a driver's open that sleeps: EINTR through the server ---------------------------

KFD_MACHINE: dict[str, Any] = {
    "machine": {"clock": "real", "drivers": ["kfd_like"]},
    "pci": [{"model": "kfd_like", "options": {"vram_mb": 16}}],
}


def test_signal_interrupts_an_open_of_kfd_through_the_server(rt: Path) -> None:
    m = load_machine(KFD_MACHINE)
    srv = Server(m, rt)
    srv.start()
    try:
        drv = m.subsystem.drivers["kfd_like"]
        assert isinstance(drv, KfdLikeDriver)
        with m.clock.lock:
            drv.lock()
        proc = connect(rt)
        result: list[int] = []

        def opener() -> None:
            try:
                result.append(proc.open("/dev/kfd"))
            except OSError as exc:
                result.append(-(exc.errno or 0))

        t = threading.Thread(target=opener)
        t.start()
        assert wait_for(lambda: m.subsystem.tasks[os.getpid()].wait_points_seen >= 1)
        proc.signal()
        t.join(10)
        assert result == [-errno.EINTR]
        assert drv.processes == {}
        with m.clock.lock:
            drv.unlock()
        fd = proc.open("/dev/kfd")  # what the thunk's retry does
        assert list(drv.processes) == [os.getpid()]
        proc.close(fd)
        assert drv.processes == {}  # released by the close itself
        proc.exit()
    finally:
        srv.stop()
        m.shutdown()


# -- habana_like: an owner killed with an engine stalled ------------------------------

HABANA_MACHINE: dict[str, Any] = {
    "machine": {"clock": "real", "drivers": ["habana_like"]},
    "pci": [{"model": "habana_like", "options": {"dram_mb": 4, "cs_timeout_ms": 60_000}}],
}

STALLER_SCRIPT = """
from drivers.habana_like import HLK
from drivers.habana_like.packets import encode_fence, encode_lin_dma
from drivers.habana_like import HLK
from drivers.habana_like.packets import encode_lin_dma
from drivers.habana_like.userlib import HlkClient
proc = connect(RT)
hl = HlkClient(proc, proc.open("/dev/accel/accel0"))
dva = hl.map_device(hl.mem_alloc(4096))
cb = encode_fence(0, 1) + encode_lin_dma(1, dva, 4096, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True)
hl.submit([(hl.cb_with(cb), HLK.HLK_QUEUE_ID_DMA_0)])
say("SUBMITTED")
sys.stdin.readline()
"""


def test_owner_killed_with_a_stalled_engine_leaves_an_idle_device(
    rt: Path, children: Callable[..., Child]
) -> None:
    m = load_machine(HABANA_MACHINE)
    srv = Server(m, rt)
    srv.start()
    try:
        dev = m.subsystem.device(0)
        model = dev.private.model
        staller = children(STALLER_SCRIPT, rt)
        staller.expect("SUBMITTED")
        assert wait_for(lambda: model.engines[0].stalled)
        os.kill(staller.pid, signal.SIGKILL)
        staller.finish()
        # SIGKILL is asynchronous: the server learns of it when the descriptors close.
        assert wait_for(lambda: dev.ownership.owner is None)
        assert dev.reset_count == 1 and model.is_idle()
        proc = connect(rt)
        hl = HlkClient(proc, proc.open("/dev/accel/accel0"))  # type: ignore[arg-type]
        handle = hl.mem_alloc(4096)
        dva = hl.map_device(handle)
        memset = encode_lin_dma(2, dva, 4096, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True)
        seq = hl.submit([(hl.cb_with(memset), HLK.HLK_QUEUE_ID_DMA_0)])
        assert hl.wait(seq) == HLK.HLK_WAIT_CS_STATUS_COMPLETED  # well before any timeout
        assert dev.reset_count == 1
        hl.unmap(dva)
        hl.mem_free(handle)
        proc.exit()
    finally:
        srv.stop()
        m.shutdown()
