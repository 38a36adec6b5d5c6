"""habana_like device memory (issue 15 §1): every allocation is its own memfd,
MEMORY FREE under a live CPU mapping (through an importer) returns nothing to the
DRAM allocator, a CB mapping holds its CB, and huge sizes are ENOMEM, not oopses."""

from __future__ import annotations

import errno

import pytest

from accelcore import CORE
from accelcore.memory import PAGE_SIZE
from accelcore.testing.vaccel import VAccelDriver
from drivers.habana_like import HLK
from drivers.habana_like.device import DRAM_BAR
from drivers.habana_like.packets import encode_lin_dma


def _errno(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as exc:
        fn(*args, **kw)
    return exc.value.errno


@pytest.fixture
def vaccel(machine):
    drv = machine.add_driver(VAccelDriver())
    dev = machine.subsystem.create_device(drv)
    yield dev
    machine.subsystem.remove_device(dev)


@pytest.mark.parametrize(
    "size",
    [1 << 63, (1 << 64) - PAGE_SIZE, (1 << 64) - 1, 1 << 40],
    ids=["2^63", "2^64-page", "2^64-1", "1TiB"],
)
def test_huge_alloc_is_enomem_not_an_oops(machine, client, size):
    owner = client()
    assert _errno(owner.mem_alloc, size) == errno.ENOMEM
    dev = machine.subsystem.device(0)
    assert dev.private.allocator.used == 0
    assert machine.subsystem.oopses == []


def test_each_allocation_is_its_own_memfd(machine, client):
    owner = client()
    va = owner.map_device(owner.mem_alloc(3 * PAGE_SIZE))
    fd = owner.export(va, 3 * PAGE_SIZE)
    buf = owner.proc.task.files.get(fd)
    dram = machine.subsystem.device(0).private.model.dram
    (block,) = dram.blocks()
    assert buf.memory is block.memory and block.memory.size == 3 * PAGE_SIZE
    owner.proc.close(fd)


def test_bar_window_shows_the_allocation_and_zeros_elsewhere(machine, client):
    owner = client()
    va = owner.map_device(owner.mem_alloc(PAGE_SIZE))
    cb = owner.cb_with(encode_lin_dma(0x7E, va, 16, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    assert owner.wait(owner.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)])) == 0
    bar = machine.subsystem.device(0).parent.bar(DRAM_BAR)
    assert bar.read32(0) == 0x7E7E7E7E
    assert bar.read32(PAGE_SIZE) == 0  # nothing allocated there


def test_free_under_an_importers_mapping_keeps_the_dram_until_munmap(
    machine, client, procs, vaccel
):
    owner = client()
    dev = machine.subsystem.device(0)
    handle = owner.mem_alloc(PAGE_SIZE)
    va = owner.map_device(handle)
    fd = owner.export(va, PAGE_SIZE)
    other = procs()
    vfd = other.open(vaccel.node_path)
    h = CORE.new("struct drm_prime_handle", fd=owner.proc.send_fd(fd, other))
    other.ioctl(vfd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, h)
    off = vaccel.mmap_offset(vaccel.files[0].handles.lookup(h.handle))
    m = other.mmap(vfd, PAGE_SIZE, off)
    m.view[:4] = b"keep"
    # The importer lets go of everything but its mapping; the owner's context goes.
    other.close(h.fd)
    other.ioctl(vfd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=h.handle))
    owner.proc.close(fd)
    owner.proc.close(owner.fd)
    assert dev.private.allocator.used == PAGE_SIZE  # still reserved: the mapping holds it
    assert bytes(m.view[:4]) == b"keep"
    other.munmap(m)
    assert dev.private.allocator.used == 0
    assert dev.private.model.dram.blocks() == []


def test_cb_mapping_holds_the_cb_after_destroy(machine, client):
    owner = client()
    cb = owner.cb_create(PAGE_SIZE)
    m = owner.proc.mmap(owner.fd, PAGE_SIZE, cb.mmap_offset)
    m.view[:3] = b"cb!"
    owner.cb_destroy(cb.handle)
    assert bytes(m.view[:3]) == b"cb!"
    owner.proc.munmap(m)
