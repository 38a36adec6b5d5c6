"""Isolation: one file's handles are useless in another, one context's memory is
unreachable from another's command buffers or DMA, node permissions and root-only
ioctls hold for real peer processes, and a non-owner cannot change device state.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from accelcore import CORE, IoctlFlags, Process, RealClock, VirtualClock
from accelcore.machine import Machine
from accelcore.memory import PAGE_SIZE
from accelcore.server import Server, connect
from accelcore.subsystem import DevNode, Subsystem
from accelcore.testing import make_driver
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.testing.vaccel import VAccelDriver
from drivers.habana_like import HLK, HabanaLikeDriver
from drivers.habana_like.packets import encode_lin_dma
from drivers.habana_like.userlib import HlkClient
from drivers.kfd_like import KFD_UAPI as U
from drivers.kfd_like.thunk import VRAM, Kfd, driver_of, make_machine

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(60)]

Summary = Callable[[str], None]
NOBODY = 65534


def _errno(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    return 0


# -- handles -------------------------------------------------------------------------------


def test_one_files_handles_are_useless_in_another(summary: Summary) -> None:
    sub = Subsystem(VirtualClock())
    drv = VAccelDriver()
    sub.register_driver(drv)
    d0, d1 = sub.create_device(drv), sub.create_device(drv)
    base = sub.accounting()
    a, b = Process(sub), Process(sub)
    afd = a.open(d0.node_path)
    bo = V.new("struct vaccel_create_bo", size=PAGE_SIZE)
    a.ioctl(afd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    bfd = b.open(d1.node_path)  # b owns d1, with no handles of its own
    b.ioctl(bfd, CORE.DRM_IOCTL_SET_MASTER)
    peek = b.open(d0.node_path)  # and a non-owner file on a's device
    attempts: list[tuple[str, Callable[[], object], int]] = [
        (
            "submit",
            lambda: b.ioctl(
                bfd, V.DRM_IOCTL_VACCEL_SUBMIT, V.new("struct vaccel_submit", handle=bo.handle)
            ),
            errno.ENOENT,
        ),
        (
            "gem_close",
            lambda: b.ioctl(
                bfd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=bo.handle)
            ),
            errno.EINVAL,  # drm_gem_handle_delete's answer
        ),
        (
            "export",
            lambda: b.ioctl(
                bfd,
                CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD,
                CORE.new("struct drm_prime_handle", handle=bo.handle),
            ),
            errno.ENOENT,
        ),
        ("mmap other device", lambda: b.mmap(bfd, PAGE_SIZE, bo.mmap_offset), errno.EINVAL),
        ("mmap same device", lambda: b.mmap(peek, PAGE_SIZE, bo.mmap_offset), errno.EINVAL),
    ]
    for what, call, code in attempts:
        assert _errno(call) == code, what
    a.ioctl(afd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=bo.handle))
    a.exit()
    b.exit()
    assert sub.accounting() == base
    summary(f"handles: {len(attempts)} cross-file uses refused")


# -- habana_like: contexts ----------------------------------------------------------------


@pytest.fixture
def hmachine() -> Iterator[Machine]:
    m = Machine(VirtualClock())
    m.bus.populate([{"model": "habana_like", "count": 2, "options": {"dram_mb": 1}}])
    m.add_driver(HabanaLikeDriver())
    yield m
    m.shutdown()


def _memset(hl: HlkClient, va: int, byte: int, size: int = PAGE_SIZE) -> int:
    cb = hl.cb_with(encode_lin_dma(byte, va, size, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    return hl.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)])


def test_cs_naming_another_contexts_va_is_refused(hmachine: Machine, summary: Summary) -> None:
    sub = hmachine.subsystem
    base = sub.accounting()
    pa, pb = Process(sub), Process(sub)
    a = HlkClient(pa, pa.open("/dev/accel/accel0"))
    b = HlkClient(pb, pb.open("/dev/accel/accel1"))
    ava = a.map_device(a.mem_alloc(PAGE_SIZE))
    a.wait(_memset(a, ava, 0xA5))
    host = pa.alloc(PAGE_SIZE)
    ahva = a.map_host(host.addr, PAGE_SIZE)
    bva = b.map_device(b.mem_alloc(PAGE_SIZE))
    assert bva == ava  # the same VA, in another context
    bhost = pb.alloc(PAGE_SIZE)
    refused = 0
    for cb in (
        encode_lin_dma(0, ahva, PAGE_SIZE, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True),
        encode_lin_dma(ahva, bva, PAGE_SIZE, HLK.HLK_DMA_HOST_TO_DRAM),
        encode_lin_dma(bva, ahva, PAGE_SIZE, HLK.HLK_DMA_DRAM_TO_HOST),
        encode_lin_dma(bva, bva + 2 * PAGE_SIZE, PAGE_SIZE, HLK.HLK_DMA_DRAM_TO_DRAM),
    ):
        assert _errno(lambda cb=cb: b.submit([(b.cb_with(cb), 0)])) == errno.EFAULT
        refused += 1
    # b's view of "its" VA is its own, zeroed memory, never a's 0xA5
    bhva = b.map_host(bhost.addr, PAGE_SIZE)
    cb = b.cb_with(encode_lin_dma(bva, bhva, PAGE_SIZE, HLK.HLK_DMA_DRAM_TO_HOST))
    assert b.wait(b.submit([(cb, 0)])) == 0
    assert bytes(bhost.view[:PAGE_SIZE]) == bytes(PAGE_SIZE)
    # after a leaves, the next owner of a's device cannot reach a's old VA or data
    pa.exit()
    pc = Process(sub)
    c = HlkClient(pc, pc.open("/dev/accel/accel0"))
    chost = pc.alloc(PAGE_SIZE)
    chva = c.map_host(chost.addr, PAGE_SIZE)
    stale = c.cb_with(encode_lin_dma(ava, chva, PAGE_SIZE, HLK.HLK_DMA_DRAM_TO_HOST))
    assert _errno(lambda: c.submit([(stale, 0)])) == errno.EFAULT
    cva = c.map_device(c.mem_alloc(PAGE_SIZE))  # likely the very same DRAM: scrubbed
    cb = c.cb_with(encode_lin_dma(cva, chva, PAGE_SIZE, HLK.HLK_DMA_DRAM_TO_HOST))
    assert c.wait(c.submit([(cb, 0)])) == 0
    assert bytes(chost.view[:PAGE_SIZE]) == bytes(PAGE_SIZE)
    pb.exit()
    pc.exit()
    assert sub.accounting() == base and sub.oopses == []
    summary(
        f"habana contexts: {refused + 1} cross-context CSs refused, {3 * PAGE_SIZE} bytes checked"
    )


# -- kfd_like: process VMs ------------------------------------------------------------------

VA = 0x10_0000_0000


def test_another_processes_va_is_not_mapped_in_mine(summary: Summary) -> None:
    m = make_machine(1_000)
    sub = m.subsystem
    base = sub.accounting()
    owner, other = Kfd(m), Kfd(m)
    owner.acquire_all()
    other.acquire_all()
    gid = owner.gpu_ids[0]
    buf = owner.alloc(gid, PAGE_SIZE, VA, VRAM)
    owner.map(owner.map_args(buf.handle, [gid]))
    cpu = owner.cpu_map(gid, buf, PAGE_SIZE)
    cpu[:] = b"\x3c" * PAGE_SIZE
    (mine,) = driver_of(m).page_tables(owner.p.pid).values()
    (theirs,) = driver_of(m).page_tables(other.p.pid).values()
    assert len(mine) == 1 and len(theirs) == 0
    # the other process's kernel writing "there" faults its own queue
    q = other.create_queue(gid)
    ev = other.create_event()
    q.submit(U.KFD_LIKE_KERNEL_MEMSET, [VA, PAGE_SIZE // 4, 0xDEADBEEF], event=ev)
    assert other.wait([ev], timeout_ms=100) == U.KFD_IOC_WAIT_RESULT_TIMEOUT  # it never ran
    assert bytes(cpu[:PAGE_SIZE]) == b"\x3c" * PAGE_SIZE
    words = np.frombuffer(bytes(cpu[:64]), np.uint32)
    assert not (words == 0xDEADBEEF).any()
    # and the owner's handle means nothing in its process (amdkfd answers ENOMEM)
    assert _errno(lambda: other.map(other.map_args(buf.handle, [gid]))) == errno.ENOMEM
    assert len(theirs) == 0
    del words
    owner.close()
    other.close()
    m.clock.advance(10**9)
    assert sub.accounting() == base and sub.oopses == []
    summary(f"kfd VMs: foreign VA unmapped, foreign kernel faulted, {PAGE_SIZE} bytes intact")


# -- real peer processes: permissions, root-only ioctls, ownership ---------------------------


def _root_only_driver() -> VAccelDriver:
    """vaccel plus a ROOT_ONLY ioctl (no in-tree driver has one)."""
    return make_driver(  # type: ignore[return-value]
        "vroot",
        header="""
            /* cffi:begin */
            struct vroot_poke { __u64 value; };
            /* cffi:end */
            #define DRM_IOCTL_VROOT_POKE DRM_IOWR(DRM_COMMAND_BASE + 0x20, struct vroot_poke)
        """,
        ioctls={"DRM_IOCTL_VROOT_POKE": (lambda call: None, IoctlFlags.ROOT_ONLY)},
    )


@pytest.fixture
def peer_server(rt: Path) -> Iterator[tuple[Server, Machine]]:
    m = Machine(RealClock())
    vaccel = m.add_driver(VAccelDriver())
    m.subsystem.create_device(vaccel)
    vroot = _root_only_driver()
    m.subsystem.register_driver(vroot)
    m.subsystem.create_device(vroot)
    opener = m.subsystem.nodes["/dev/accel/accel0"].opener
    m.subsystem.add_node(DevNode("/dev/accel/secret", 0o600, 0, 0, opener))
    srv = Server(m, rt)
    srv.start()
    yield srv, m
    srv.stop()
    m.shutdown()


def _as_nobody(body: Callable[[], int]) -> int:
    """Run ``body`` in a forked child as uid/gid 65534; its return is the exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through its exit status
        code = 99
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.getuid() != 0, reason="dropping to uid 65534 needs root")
def test_permissions_and_root_only_ioctls_hold_for_a_peer(
    peer_server: tuple[Server, Machine], summary: Summary
) -> None:
    server, machine = peer_server
    rt = server.runtime_dir
    vroot = next(d for d in machine.subsystem.registered_devices() if d.driver.name == "vroot")
    cmd = vroot.driver.uapi.DRM_IOCTL_VROOT_POKE  # type: ignore[union-attr]

    owner = connect(rt)  # root owns accel0 meanwhile
    ofd = owner.open("/dev/accel/accel0")
    owner.ioctl(ofd, V.DRM_IOCTL_VACCEL_CREATE_BO, V.new("struct vaccel_create_bo", size=4096))
    rfd = owner.open(vroot.node_path)
    assert owner.ioctl(rfd, cmd, bytearray(8)) == 0  # root may

    def peer() -> int:
        proc = connect(rt)
        checks = [
            (lambda: proc.open("/dev/accel/secret"), errno.EACCES),
            (lambda: proc.ioctl(proc.open(vroot.node_path), cmd, bytearray(8)), errno.EACCES),
            (
                lambda: proc.ioctl(
                    proc.open("/dev/accel/accel0"),
                    V.DRM_IOCTL_VACCEL_CREATE_BO,
                    V.new("struct vaccel_create_bo", size=4096),
                ),
                errno.EBUSY,
            ),
            (
                lambda: proc.ioctl(proc.open("/dev/accel/accel0"), CORE.DRM_IOCTL_SET_MASTER),
                errno.EBUSY,
            ),
            (
                lambda: proc.ioctl(
                    proc.open("/dev/accel/accel0"),
                    CORE.DRM_IOCTL_DROP_MASTER,
                ),
                errno.EINVAL,
            ),
        ]
        for i, (call, code) in enumerate(checks):
            if _errno(call) != code:
                return 10 + i
        nop = V.new("struct vaccel_nop", value=4)  # INFO-level use still works
        proc.ioctl(proc.open("/dev/accel/accel0"), V.DRM_IOCTL_VACCEL_NOP, nop)
        return 0 if nop.result == 5 else 2

    assert _as_nobody(peer) == 0
    assert machine.subsystem.device(0).ownership.owner is not None  # unchanged
    owner.exit()
    summary("peer uid 65534: 0600 node EACCES, ROOT_ONLY EACCES, compute/SET_MASTER EBUSY")


def test_sysfs_hard_reset_as_non_root_is_refused(hmachine: Machine, summary: Summary) -> None:
    dev = hmachine.subsystem.device(0)
    for attr in ("hard_reset", "clk_max_freq_mhz"):
        assert (
            _errno(lambda attr=attr: dev.sysfs.write(attr, "1", privileged=False)) == errno.EACCES
        )
    assert dev.reset_count == 0
    summary("sysfs: non-root hard_reset and clk_max_freq_mhz writes refused (EACCES)")
