"""What MMAP passes across processes (issue 15 §1): exactly the memfd of the
object mapped — never the whole device memory — and, for a read-only request, a
descriptor that can only be mapped read-only. Checked from a child process that
drops to an unprivileged uid where the tests run as root.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accelcore import CORE
from accelcore.machine import Machine
from accelcore.server import Server, connect
from accelcore.server import protocol as p
from accelcore.server.client import ClientProcess
from accelcore.server.daemon import load_machine
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.udmabuf import F_SEAL_FUTURE_WRITE
from drivers.kfd_like.thunk import Kfd, driver_of

PAGE = 4096
VA = 0x50_0000_0000
SECRET = b"the victim's secret"
NOBODY = 65534
KFD_MACHINE = {
    "machine": {"clock": "real", "drivers": ["kfd_like", "vaccel"]},
    "pci": [{"model": "kfd_like"}],
    "virtual": [{"driver": "vaccel", "count": 1}],
}


# ACQUIRE_VM's drm_fd is a descriptor: kfd_like.h marks it accel:fd, so the client
# sends it with the call.


@pytest.fixture
def kfd_server(rt: Path) -> Iterator[tuple[Server, Machine]]:
    m = load_machine(KFD_MACHINE)
    srv = Server(m, rt, description=KFD_MACHINE)
    srv.start()
    yield srv, m
    srv.stop()
    m.shutdown()


def _in_child(body: Callable[[], int]) -> int:
    """Run ``body`` in a forked child, as uid/gid 65534 when we are root; its
    return is the exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through its exit status
        code = 99
        try:
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            code = body()
        except BaseException:
            traceback.print_exc()  # shows in the test's captured output
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _raw_mmap(
    proc: ClientProcess, fd: int, offset: int, length: int, write: bool
) -> tuple[int, int]:
    """MMAP as the wire carries it: ``(mapping id, the descriptor received)``."""
    reply, fds = proc._session().call(p.Mmap(offset, length, write, 0, fd), [fd])
    assert isinstance(reply, p.Mapped), reply
    (memfd,) = fds
    return reply.mapping_id, memfd


def _errno(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    return 0


def test_mmap_of_one_vram_page_passes_that_page_only(kfd_server: tuple[Server, Machine]) -> None:
    server, machine = kfd_server
    base = machine.subsystem.accounting()
    victim = Kfd(machine, connect(server.runtime_dir))
    victim.acquire_all()
    gid = victim.gpu_ids[0]
    valloc = victim.alloc(gid, 4 * PAGE, VA)
    victim.cpu_map(gid, valloc, 4 * PAGE)[: len(SECRET)] = SECRET
    vram_size = driver_of(machine).gpus[gid].gpu.vram_size

    def tenant() -> int:
        k = Kfd(machine, connect(server.runtime_dir))
        k.acquire_all()
        a = k.alloc(gid, PAGE, VA)
        for write in (True, False):
            mid, memfd = _raw_mmap(k.p, k.accel_fds[gid], a.mmap_offset, PAGE, write)
            size = os.fstat(memfd).st_size
            if size != PAGE:  # today's bug: all of VRAM
                return 10 if size == vram_size else 11
            with mmap.mmap(memfd, PAGE, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                if SECRET in m[:]:
                    return 12
            # Nothing past the object: the descriptor ends with it.
            if os.pread(memfd, vram_size, 0) != bytes(PAGE):
                return 13
            os.close(memfd)
            k.p._session().call(p.Munmap(mid))
        k.p.exit()
        return 0

    assert _in_child(tenant) == 0
    victim.close()
    assert machine.subsystem.accounting()["oopses"] == base["oopses"] == 0


def test_read_only_mmap_passes_a_descriptor_that_cannot_write(
    kfd_server: tuple[Server, Machine],
) -> None:
    server, machine = kfd_server
    dropped = os.getuid() == 0
    vaccel = next(d for d in machine.subsystem.registered_devices() if d.driver.name == "vaccel")

    def reader() -> int:
        proc = connect(server.runtime_dir)
        fd = proc.open(vaccel.node_path)
        bo = V.new("struct vaccel_create_bo", size=PAGE)
        proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
        mid, memfd = _raw_mmap(proc, fd, bo.mmap_offset, PAGE, False)
        if fcntl.fcntl(memfd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
            return 20
        writable = lambda: mmap.mmap(memfd, PAGE, mmap.MAP_SHARED)  # noqa: E731
        if _errno(writable) != errno.EACCES:
            return 21
        # Re-opening it writable through /proc is refused to another uid (mode 0600).
        reopen = lambda: os.close(os.open(f"/proc/self/fd/{memfd}", os.O_RDWR))  # noqa: E731
        if dropped and _errno(reopen) != errno.EACCES:
            return 22
        if dropped and _errno(lambda: os.fchmod(memfd, 0o666)) != errno.EPERM:
            return 23
        os.close(memfd)
        proc._session().call(p.Munmap(mid))
        # The client API gives a read-only view, and the mapping works.
        m = proc.mmap(fd, PAGE, bo.mmap_offset, write=False)
        if not m.view.readonly:
            return 24
        m.unmap()
        # A dma-buf exported without DRM_RDWR: a writable mapping is EACCES.
        ph = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC)
        proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
        if _errno(lambda: proc.mmap(ph.fd, PAGE)) != errno.EACCES:
            return 25
        proc.mmap(ph.fd, PAGE, write=False).unmap()
        proc.exit()
        return 0

    assert _in_child(reader) == 0
    assert machine.subsystem.oopses == []


def test_part_of_a_memfd_is_not_passed(kfd_server: tuple[Server, Machine]) -> None:
    """A udmabuf over part of a memfd cannot be passed whole: ENODEV, not more bytes."""
    server, machine = kfd_server
    base = machine.subsystem.accounting()
    proc = connect(server.runtime_dir)
    memfd = proc.memfd_create("two-pages", 2 * PAGE)
    proc.add_seals(memfd, fcntl.F_SEAL_SHRINK)
    u = proc.open("/dev/udmabuf")
    a = CORE.new("struct udmabuf_create", memfd=memfd, offset=PAGE, size=PAGE)
    buf = proc.ioctl(u, CORE.UDMABUF_CREATE, a)
    assert _errno(lambda: proc.mmap(buf, PAGE)) == errno.ENODEV
    whole = proc.ioctl(
        u, CORE.UDMABUF_CREATE, CORE.new("struct udmabuf_create", memfd=memfd, size=2 * PAGE)
    )
    proc.mmap(whole, 2 * PAGE).unmap()
    proc.exit()
    assert machine.subsystem.accounting()["oopses"] == base["oopses"]


def test_gem_close_under_a_served_mapping_keeps_the_buffer_until_munmap(
    kfd_server: tuple[Server, Machine],
) -> None:
    server, machine = kfd_server
    vaccel = next(d for d in machine.subsystem.registered_devices() if d.driver.name == "vaccel")
    proc = connect(server.runtime_dir)
    fd = proc.open(vaccel.node_path)
    bo = V.new("struct vaccel_create_bo", size=PAGE)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    m = proc.mmap(fd, PAGE, bo.mmap_offset)
    m.view[:4] = b"held"
    proc.ioctl(fd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=bo.handle))
    assert len(vaccel.buffers) == 1  # the server's mapping holds it for the client
    assert bytes(m.view[:4]) == b"held"
    m.unmap()
    assert len(vaccel.buffers) == 0
    proc.exit()


@pytest.mark.parametrize(
    "seal", [fcntl.F_SEAL_WRITE, F_SEAL_FUTURE_WRITE], ids=["write", "future_write"]
)
def test_udmabuf_through_the_server_refuses_a_write_sealed_memfd(
    kfd_server: tuple[Server, Machine], seal: int
) -> None:
    server, machine = kfd_server
    proc = connect(server.runtime_dir)
    memfd = proc.memfd_create("sealed", PAGE)
    proc.add_seals(memfd, fcntl.F_SEAL_SHRINK | seal)
    u = proc.open("/dev/udmabuf")
    a = CORE.new("struct udmabuf_create", memfd=memfd, size=PAGE)
    assert _errno(lambda: proc.ioctl(u, CORE.UDMABUF_CREATE, a)) == errno.EINVAL
    proc.exit()
    assert machine.subsystem.oopses == []
