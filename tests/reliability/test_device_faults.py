"""Device faults, in virtual time: hangs and hard resets, AER-like errors, surprise
removal with everything open, and resets under an exported dma-buf.

Behaviour checked (habana_like's documented policy, driver docstring):

* a hung CS times out after ``cs_timeout_ms`` of device time, fails with
  ``ETIMEDOUT``, and the device is hard-reset: the owner's context (CBs, device
  memory, VA mappings) is rolled back, the DRAM allocator is empty again, the
  owner keeps its file and its next compute ioctl gets a fresh context;
* an injected PCI error of any severity is logged in config space and never an
  oops; the device keeps working;
* after a surprise removal every ioctl gets ``ENODEV`` except the INFO identity
  and status queries; CPU mappings are zapped; exported buffers stay valid
  objects; everything (minor included) is freed at the last close;
* a reset while device memory is exported to another device leaves that memory
  allocated, with its contents, readable and writable by the importer; the
  ownership stays pinned until the importer lets go.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from accelcore import CORE, Process, VirtualClock
from accelcore.machine import Machine
from accelcore.memory import PAGE_SIZE
from accelcore.pci import ErrorSeverity, FaultKind, ResetKind
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.testing.vaccel import VAccelDriver
from drivers.habana_like import HLK, HabanaLikeDriver
from drivers.habana_like.packets import encode_lin_dma
from drivers.habana_like.userlib import HlkClient

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]

Summary = Callable[[str], None]


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = Machine(VirtualClock())
    m.bus.populate([{"model": "habana_like", "count": 1, "options": {"dram_mb": 4}}])
    m.add_driver(HabanaLikeDriver())
    vaccel = m.add_driver(VAccelDriver())
    m.subsystem.create_device(vaccel)  # an importer of exported device memory
    yield m
    m.shutdown()


def _vaccel(machine: Machine) -> Any:
    return next(d for d in machine.subsystem.registered_devices() if d.driver.name == "vaccel")


def _info(proc: Process, fd: int, op: int, ctype: str) -> Any:
    size = CORE.sizeof(ctype)
    buf = proc.alloc(size)
    try:
        arg = CORE.new("struct accel_info", op=op, return_pointer=buf.addr, return_size=size)
        proc.ioctl(fd, CORE.ACCEL_IOCTL_INFO, arg)
        return CORE.from_bytes(ctype, bytes(buf.view[:size]))
    finally:
        proc.free(buf)


def _errno(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    return 0


def _memset_and_read(hl: HlkClient, byte: int, size: int = PAGE_SIZE) -> bytes:
    """Fill fresh device memory with ``byte`` and DMA it back to host memory."""
    va = hl.map_device(hl.mem_alloc(size))
    host = hl.proc.alloc(size)
    hva = hl.map_host(host.addr, size)
    cb = hl.cb_with(
        encode_lin_dma(byte, va, size, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True)
        + encode_lin_dma(va, hva, size, HLK.HLK_DMA_DRAM_TO_HOST)
    )
    assert hl.wait(hl.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)])) == HLK.HLK_WAIT_CS_STATUS_COMPLETED
    data = bytes(host.view[:size])
    hl.unmap(hva)
    hl.proc.free(host)
    return data


# -- hang → detection → hard reset → rollback -------------------------------------------


def _hang_cycles(machine: Machine, cycles: int) -> tuple[int, int]:
    sub = machine.subsystem
    dev = sub.device(0)
    fn = dev.parent
    base = sub.accounting()
    owner = Process(sub)
    hl = HlkClient(owner, owner.open(dev.node_path))
    mon = Process(sub)
    mfd = mon.open(dev.control_path)
    checked = 0
    for i in range(cycles):
        va = hl.map_device(hl.mem_alloc(2 * PAGE_SIZE))
        cb = hl.cb_with(
            encode_lin_dma(i & 0xFF, va, PAGE_SIZE, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True)
        )
        seq = hl.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)])
        t0 = machine.clock.now()
        machine.bus.inject_fault(fn, FaultKind.HANG)
        assert _errno(lambda seq=seq: hl.wait_args(seq, timeout_us=5_000_000)) == errno.ETIMEDOUT
        assert machine.clock.now() - t0 >= 1_000_000_000  # detected after cs_timeout_ms
        # rolled back: context gone, DRAM free, device operational, the owner still owns
        assert dev.reset_count == i + 1
        assert dev.private.allocator.used == 0
        assert dev.ownership.owner is owner.task.files.get(hl.fd)
        st = _info(mon, mfd, CORE.ACCEL_INFO_STATUS, "struct accel_info_status")
        assert st.status == CORE.ACCEL_STATUS_OPERATIONAL
        # the old sequence number answers TIMEDOUT; the fresh context works
        assert _errno(lambda seq=seq: hl.wait_args(seq)) == errno.ETIMEDOUT
        byte = (i * 37 + 1) & 0xFF
        assert _memset_and_read(hl, byte) == bytes([byte]) * PAGE_SIZE
        checked += PAGE_SIZE
    owner.exit()
    mon.exit()
    machine.clock.run_until_idle()
    assert sub.oopses == []
    assert sub.accounting() == base
    return cycles, checked


def test_hang_detect_reset_rollback_100_cycles(machine: Machine, summary: Summary) -> None:
    cycles, checked = _hang_cycles(machine, 100)
    summary(f"hang: {cycles} hangs injected, {cycles} hard resets, {checked} bytes checked")


@pytest.mark.long
def test_hang_reset_soak(machine: Machine, summary: Summary) -> None:
    cycles, checked = _hang_cycles(machine, 2000)
    summary(f"hang soak: {cycles} hangs/resets, {checked} bytes checked")


# -- error interrupts (AER-like) ---------------------------------------------------------


def test_injected_pci_errors_are_handled_without_oops(machine: Machine, summary: Summary) -> None:
    sub = machine.subsystem
    dev = sub.device(0)
    fn = dev.parent
    base = sub.accounting()
    owner = Process(sub)
    hl = HlkClient(owner, owner.open(dev.node_path))
    injected = 0
    for round_ in range(10):
        for severity in ErrorSeverity:
            machine.bus.inject_fault(fn, FaultKind.ERROR, severity=severity)
            injected += 1
            byte = (round_ * 3 + injected) & 0xFF
            assert _memset_and_read(hl, byte) == bytes([byte]) * PAGE_SIZE
    assert len(machine.bus.injected) == injected
    assert sub.oopses == [] and not dev.tainted
    owner.exit()
    assert sub.accounting() == base
    summary(f"aer: {injected} errors injected ({len(ErrorSeverity)} severities), 0 oopses")


# -- surprise removal ---------------------------------------------------------------------


def _surprise_cycle(machine: Machine) -> int:
    """One hot-add, full use, surprise removal and last close; returns checks made."""
    sub = machine.subsystem
    fn = machine.bus.hot_add("habana_like", options={"dram_mb": 1})
    dev = machine.accel_device(fn)
    owner, importer, mon = Process(sub), Process(sub), Process(sub)
    hl = HlkClient(owner, owner.open(dev.node_path))
    mfd = mon.open(dev.control_path)
    va = hl.map_device(hl.mem_alloc(PAGE_SIZE))
    assert _memset_and_read(hl, 0x77, PAGE_SIZE) == b"\x77" * PAGE_SIZE
    dmabuf = hl.export(va, PAGE_SIZE)
    cb = hl.cb_create(64)
    cpu = owner.mmap(hl.fd, cb.size, cb.mmap_offset)
    cpu.view[:4] = b"live"
    vfd = importer.open(_vaccel(machine).node_path)
    imp = CORE.new("struct drm_prime_handle", fd=owner.send_fd(dmabuf, importer))
    importer.ioctl(vfd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, imp)
    pending = hl.submit(
        [(hl.cb_with(encode_lin_dma(1, va, PAGE_SIZE, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True)), 0)]
    )

    machine.bus.remove(fn, surprise=True)

    checks = 0
    for who, fd in ((owner, hl.fd), (mon, mfd)):
        ident = _info(who, fd, CORE.ACCEL_INFO_DEVICE, "struct accel_info_device")
        assert ident.minor == dev.minor
        st = _info(who, fd, CORE.ACCEL_INFO_STATUS, "struct accel_info_status")
        assert st.status == CORE.ACCEL_STATUS_UNPLUGGED
        own = lambda who=who, fd=fd: _info(  # noqa: E731
            who, fd, CORE.ACCEL_INFO_OWNERSHIP, "struct accel_info_ownership"
        )
        assert _errno(own) == errno.ENODEV
        checks += 3
    refused: list[Callable[[], object]] = [
        lambda: hl.mem_alloc(PAGE_SIZE),
        lambda: hl.cb_create(64),
        lambda: hl.wait_args(pending),
        lambda: hl.submit([((cb, 8), 0)]),
        lambda: hl.export(va, PAGE_SIZE),
        lambda: owner.mmap(hl.fd, cb.size, cb.mmap_offset),
        lambda: owner.ioctl(hl.fd, CORE.DRM_IOCTL_SET_MASTER),
        lambda: owner.ioctl(hl.fd, CORE.DRM_IOCTL_VERSION, CORE.new("struct drm_version")),
        lambda: mon.ioctl(mfd, CORE.DRM_IOCTL_GET_CAP, CORE.new("struct drm_get_cap")),
    ]
    for call in refused:
        assert _errno(call) == errno.ENODEV
        checks += 1
    assert cpu.zapped  # the mapping is torn down, not dangling
    cpu.view[:4] = b"dead"  # writes go nowhere, and do not crash
    # the exported buffer is still a valid object for its importer
    bo = _vaccel(machine).files[0].handles.lookup(imp.handle)
    assert bo.size == PAGE_SIZE
    assert _errno(lambda: owner.open(dev.node_path)) == errno.ENOENT
    checks += 3
    owner.munmap(cpu)
    owner.exit()
    assert dev.state.value != "released"  # the importer still holds the dma-buf
    importer.exit()
    mon.exit()
    return checks


def _surprise_cycles(machine: Machine, cycles: int) -> int:
    sub = machine.subsystem
    base = sub.accounting()
    minors = sub.minors.in_use
    checks = 0
    for _ in range(cycles):
        checks += _surprise_cycle(machine)
        machine.clock.run_until_idle()
        assert sub.accounting() == base, {
            k: (base[k], v) for k, v in sub.accounting().items() if base[k] != v
        }
        assert sub.minors.in_use == minors
    assert sub.oopses == []
    return checks


def test_surprise_removal_with_everything_open_100_cycles(
    machine: Machine, summary: Summary
) -> None:
    checks = _surprise_cycles(machine, 100)
    summary(f"surprise removal: 100 cycles, 100 faults injected, {checks} ENODEV/INFO checks")


@pytest.mark.long
def test_surprise_removal_soak(machine: Machine, summary: Summary) -> None:
    checks = _surprise_cycles(machine, 1000)
    summary(f"surprise removal soak: 1000 cycles, {checks} checks")


# -- reset while a dma-buf is exported to another device ----------------------------------

RESETS: dict[str, Callable[[Machine], None]] = {
    "driver": lambda m: m.subsystem.device(0).reset("test"),
    "sysfs": lambda m: m.subsystem.device(0).sysfs.write("hard_reset", "1"),
    "flr": lambda m: m.bus.reset(m.subsystem.device(0).parent, ResetKind.FLR),
    "hot": lambda m: m.bus.reset(m.subsystem.device(0).parent, ResetKind.HOT),
}


@pytest.mark.parametrize("how", RESETS)
def test_reset_under_exported_dmabuf_keeps_the_memory(
    machine: Machine, how: str, summary: Summary
) -> None:
    sub = machine.subsystem
    dev = sub.device(0)
    base = sub.accounting()
    owner, importer = Process(sub), Process(sub)
    hl = HlkClient(owner, owner.open(dev.node_path))
    va = hl.map_device(hl.mem_alloc(2 * PAGE_SIZE))
    cb = hl.cb_with(encode_lin_dma(0x5C, va, 2 * PAGE_SIZE, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    assert hl.wait(hl.submit([(cb, 0)])) == 0
    dmabuf = hl.export(va, 2 * PAGE_SIZE)
    vfd = importer.open(_vaccel(machine).node_path)
    imp = CORE.new("struct drm_prime_handle", fd=owner.send_fd(dmabuf, importer))
    importer.ioctl(vfd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, imp)
    owner.close(dmabuf)
    used = dev.private.allocator.used

    RESETS[how](machine)
    machine.clock.run_until_idle()

    assert dev.status.name == "OPERATIONAL" and dev.reset_count == 1
    assert dev.private.allocator.used == used  # exported memory stays allocated
    bo = _vaccel(machine).files[0].handles.lookup(imp.handle)
    assert bytes(bo.view(0, 2 * PAGE_SIZE)) == b"\x5c" * 2 * PAGE_SIZE
    # the importer's engine can still write it, and the exporter's new context works
    job = V.new("struct vaccel_submit", handle=imp.handle, fill=0x21, delay_ns=1000)
    importer.ioctl(vfd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
    importer.ioctl(
        vfd, V.DRM_IOCTL_VACCEL_WAIT, V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=-1)
    )
    assert bytes(bo.view(0, 4)) == b"\x21" * 4
    assert _memset_and_read(hl, 0x42) == b"\x42" * PAGE_SIZE
    # ownership stays pinned by the export after the owner leaves
    owner.exit()
    nxt = Process(sub)
    nhl = HlkClient(nxt, nxt.open(dev.node_path))
    assert _errno(lambda: nhl.mem_alloc(PAGE_SIZE)) == errno.EBUSY
    importer.exit()
    assert dev.private.allocator.used == 0
    assert nhl.mem_alloc(PAGE_SIZE) == 1
    nxt.exit()
    assert sub.oopses == []
    assert sub.accounting() == base
    summary(f"reset under export ({how}): 1 reset, {2 * PAGE_SIZE + 4 + PAGE_SIZE} bytes checked")


def test_importer_job_on_buffer_of_surprise_removed_exporter(machine: Machine) -> None:
    sub = machine.subsystem
    dev = sub.device(0)
    base = sub.accounting()
    owner, importer = Process(sub), Process(sub)
    hl = HlkClient(owner, owner.open(dev.node_path))
    va = hl.map_device(hl.mem_alloc(PAGE_SIZE))
    dmabuf = hl.export(va, PAGE_SIZE)
    vfd = importer.open(_vaccel(machine).node_path)
    imp = CORE.new("struct drm_prime_handle", fd=owner.send_fd(dmabuf, importer))
    importer.ioctl(vfd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, imp)
    machine.bus.remove(dev.parent, surprise=True)
    job = V.new("struct vaccel_submit", handle=imp.handle, fill=0x21, delay_ns=1000)
    importer.ioctl(vfd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
    wait = V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=10**6)
    importer.ioctl(vfd, V.DRM_IOCTL_VACCEL_WAIT, wait)  # completes (or aborts), no EFAULT
    owner.exit()
    importer.exit()
    machine.clock.run_until_idle()
    assert sub.oopses == []
    # The removed device is gone for good: its minor, and its DRAM allocation (the
    # memory the dma-buf kept alive until the importer let go), are freed; nothing
    # else leaks (DRAM is one memfd per allocation: none existed at the baseline).
    expected = dict(base, devices=base["devices"] - 1, minors=base["minors"] - 1)
    assert wait.status == V.VACCEL_WAIT_COMPLETED
    assert sub.accounting() == expected
