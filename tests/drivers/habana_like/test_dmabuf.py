"""dma-buf export of device memory: importable elsewhere, pinned for life."""

from __future__ import annotations

import errno

import pytest

from accelcore import CORE
from accelcore.memory import PAGE_SIZE
from accelcore.testing.transports import file_of
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.testing.vaccel import VAccelDriver
from drivers.habana_like import HLK
from drivers.habana_like.packets import encode_lin_dma


@pytest.fixture
def vaccel(machine):
    drv = machine.add_driver(VAccelDriver())
    dev = machine.subsystem.create_device(drv)
    yield dev
    machine.subsystem.remove_device(dev)


def _fill(owner, va, byte, size):
    cb = owner.cb_with(encode_lin_dma(byte, va, size, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    assert owner.wait(owner.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)])) == 0


def test_export_is_imported_by_another_driver(machine, client_both, procs_both, vaccel):
    owner = client_both()
    va = owner.map_device(owner.mem_alloc(4 * PAGE_SIZE))
    _fill(owner, va, 0xAB, 4 * PAGE_SIZE)
    fd = owner.export(va, 2 * PAGE_SIZE, offset=PAGE_SIZE)
    other = procs_both()
    vfd = other.open(vaccel.node_path)
    theirs = owner.proc.send_fd(fd, other)
    owner.proc.close(fd)
    h = CORE.new("struct drm_prime_handle", fd=theirs)
    other.ioctl(vfd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, h)
    bo = vaccel.files[0].handles.lookup(h.handle)
    assert bo.size == 2 * PAGE_SIZE
    assert bytes(bo.view(0, 16)) == b"\xab" * 16
    _fill(owner, va + PAGE_SIZE, 0x11, PAGE_SIZE)  # shared, not copied
    assert bytes(bo.view(0, 4)) == b"\x11" * 4
    other.close(theirs)


def test_export_pins_ownership_until_released(machine, client_both, procs_both, vaccel):
    owner = client_both()
    va = owner.map_device(owner.mem_alloc(PAGE_SIZE))
    fd = owner.export(va, PAGE_SIZE)
    keeper = procs_both()
    kept = owner.proc.send_fd(fd, keeper)
    owner.proc.close(fd)
    owner.proc.close(owner.fd)
    nxt = client_both()
    with pytest.raises(OSError) as exc:
        nxt.mem_alloc(PAGE_SIZE)
    assert exc.value.errno == errno.EBUSY
    keeper.close(kept)
    assert nxt.mem_alloc(PAGE_SIZE) == 1


def test_exported_memory_survives_reset(machine, client_both, procs_both):
    owner = client_both()
    va = owner.map_device(owner.mem_alloc(PAGE_SIZE))
    _fill(owner, va, 0x5C, PAGE_SIZE)
    fd = owner.export(va, PAGE_SIZE)
    dev = machine.subsystem.device(0)
    dev.reset("test")
    buf = file_of(owner.proc, fd)
    assert bytes(buf.memory.read(buf.offset, 4)) == b"\x5c" * 4
    assert dev.private.allocator.used == PAGE_SIZE
    owner.proc.close(fd)
    assert dev.private.allocator.used == 0


def test_unmap_of_exported_mapping_is_einval(client_both):
    owner = client_both()
    va = owner.map_device(owner.mem_alloc(PAGE_SIZE))
    fd = owner.export(va, PAGE_SIZE)
    with pytest.raises(OSError) as exc:
        owner.unmap(va)
    assert exc.value.errno == errno.EINVAL
    owner.proc.close(fd)
    owner.unmap(va)


def test_exported_buffer_has_no_cpu_mmap(client_both):
    owner = client_both()
    va = owner.map_device(owner.mem_alloc(PAGE_SIZE))
    fd = owner.export(va, PAGE_SIZE)
    with pytest.raises(OSError) as exc:
        owner.proc.mmap(fd, PAGE_SIZE)
    assert exc.value.errno == errno.EOPNOTSUPP
    owner.proc.close(fd)


def test_importer_on_another_driver_waits_for_the_cs_writing_the_memory(
    machine, client_both, procs_both, vaccel
):
    """Implicit sync across two drivers and two processes, no fence passed: a
    habana_like CS writes device memory; another process imports the exported
    range into a vaccel device and copies it; the copy runs after the CS."""
    owner = client_both()
    va = owner.map_device(owner.mem_alloc(PAGE_SIZE))
    fd = owner.export(va, PAGE_SIZE)
    reader = procs_both()
    vfd = reader.open(vaccel.node_path)
    src = CORE.new("struct drm_prime_handle", fd=owner.proc.send_fd(fd, reader))
    reader.ioctl(vfd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, src)
    dst = V.new("struct vaccel_create_bo", size=PAGE_SIZE)
    reader.ioctl(vfd, V.DRM_IOCTL_VACCEL_CREATE_BO, dst)
    cb = owner.cb_with(encode_lin_dma(0xC3, va, PAGE_SIZE, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    seq = owner.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)])  # not waited for
    buf = file_of(owner.proc, fd)
    assert buf.poll() == 0  # the CS's fence is on the exported memory
    cp = V.new("struct vaccel_copy", src_handle=src.handle, dst_handle=dst.handle, delay_ns=1)
    reader.ioctl(vfd, V.DRM_IOCTL_VACCEL_COPY, cp)
    w = V.new("struct vaccel_wait", seqno=cp.seqno, timeout_ns=-1)
    reader.ioctl(vfd, V.DRM_IOCTL_VACCEL_WAIT, w)
    assert w.status == V.VACCEL_WAIT_COMPLETED
    m = reader.mmap(vfd, PAGE_SIZE, dst.mmap_offset)
    assert bytes(m.view[:8]) == b"\xc3" * 8
    assert owner.wait(seq) == HLK.HLK_WAIT_CS_STATUS_COMPLETED
    reader.munmap(m)
