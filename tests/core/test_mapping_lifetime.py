"""Issue 15 §1 at the core: a CPU mapping holds the object it maps and reaches
nothing more; access modes and memfd seals hold on mmap; huge sizes are errors.
"""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from accelcore import CORE, BufferObject, Process
from accelcore.memory import (
    LIVE,
    MAX_LFS_FILESIZE,
    PAGE_SIZE,
    DeviceMemory,
    RangeAllocator,
    SharedMemory,
)
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.udmabuf import F_SEAL_FUTURE_WRITE

from .conftest import Rig


def _errno(fn, *args, **kw) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as exc:
        fn(*args, **kw)
    return exc.value.errno or 0


def _gem_close(p: Process, fd: int, handle: int) -> None:
    p.ioctl(fd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=handle))


def _export(p: Process, fd: int, handle: int, flags: int = 0) -> int:
    a = CORE.new("struct drm_prime_handle", handle=handle, flags=flags)
    p.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, a)
    return int(a.fd)


# -- a mapping holds its object --------------------------------------------------------------


def _warm(rig: Rig, p: Process, fd: int) -> None:
    """Create the compute context and the ioctl scratch memory before a baseline."""
    h, _ = rig.create_bo(p, fd)
    _gem_close(p, fd, h)


def test_gem_close_under_a_mapping_keeps_the_buffer_until_munmap(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    _warm(rig, p, fd)
    base = rig.sub.accounting()
    h, off = rig.create_bo(p, fd, 2 * PAGE_SIZE)
    m = p.mmap(fd, 2 * PAGE_SIZE, off)
    m.view[:4] = b"mine"
    alive = rig.sub.accounting()
    _gem_close(p, fd, h)
    after_close = rig.sub.accounting()
    assert after_close["handles"] == base["handles"]
    # The buffer and its memory are still alive, and readable through the mapping.
    assert (after_close["buffers"], after_close["shared_memory"]) == (
        alive["buffers"],
        alive["shared_memory"],
    )
    assert rig.driver.memory_regions(rig.dev)[0].used_bytes == 2 * PAGE_SIZE
    assert bytes(m.view[:4]) == b"mine"
    p.munmap(m)
    assert rig.sub.accounting() == base


def test_a_dmabuf_mapping_holds_the_buffer_after_every_fd_and_handle_is_gone(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    _warm(rig, p, fd)
    base = rig.sub.accounting()
    h, _ = rig.create_bo(p, fd)
    buf = _export(p, fd, h, CORE.DRM_RDWR)
    m = p.mmap(buf, PAGE_SIZE)
    m.view[:2] = b"ok"
    p.close(buf)
    _gem_close(p, fd, h)
    assert rig.sub.accounting()["buffers"] == base["buffers"] + 1
    assert bytes(m.view[:2]) == b"ok"
    p.munmap(m)
    assert rig.sub.accounting() == base


def test_a_freed_device_memory_range_reused_is_new_pages() -> None:
    vram = DeviceMemory(2 * PAGE_SIZE, name="VRAM")
    a = vram.alloc(PAGE_SIZE, "a")
    held = a.view()
    a.put()  # the range goes back; the view still holds the old memfd's pages
    b = vram.alloc(PAGE_SIZE, "b")
    assert b.addr == a.addr == 0
    b.memory.write(0, b"secret")
    assert bytes(held[:6]) == bytes(6)
    held.release()
    b.put()
    assert vram.used == 0 and vram.blocks() == []


def test_device_memory_engine_access_must_lie_in_one_allocation() -> None:
    vram = DeviceMemory(4 * PAGE_SIZE, name="VRAM")
    a, b = vram.alloc(PAGE_SIZE), vram.alloc(PAGE_SIZE)
    assert _errno(vram.read, PAGE_SIZE - 2, 4) == errno.EFAULT  # across two blocks
    assert _errno(vram.write, 3 * PAGE_SIZE, b"x") == errno.EFAULT  # unallocated
    vram.poke(PAGE_SIZE - 2, b"abcd")  # a BAR store lands in both
    assert vram.peek(PAGE_SIZE - 2, 4) == b"abcd"
    assert vram.peek(3 * PAGE_SIZE, 2) == b"\0\0"
    a.put()
    b.put()


# -- access modes ------------------------------------------------------------------------------


def test_dmabuf_exported_without_rdwr_refuses_a_writable_mapping(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    ro = _export(p, fd, h)
    assert _errno(p.mmap, ro, PAGE_SIZE) == errno.EACCES
    m = p.mmap(ro, PAGE_SIZE, write=False)
    assert m.view.readonly
    p.munmap(m)


def test_access_mode_is_checked_before_the_range(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    ro = _export(p, fd, h)
    assert _errno(p.mmap, ro, 8 * PAGE_SIZE) == errno.EACCES  # as do_mmap: mode first


def test_gem_file_opened_read_only_refuses_a_writable_mapping(rig: Rig) -> None:
    p = rig.process()
    ro = p.open("/dev/accel/accel0", os.O_RDONLY)
    _, off = rig.create_bo(p, ro)
    assert _errno(p.mmap, ro, PAGE_SIZE, off) == errno.EACCES
    m = p.mmap(ro, PAGE_SIZE, off, write=False)
    assert m.view.readonly
    with pytest.raises(TypeError):
        m.view[0] = 1
    p.munmap(m)


# -- memfd seals and udmabuf -------------------------------------------------------------------


@pytest.mark.parametrize(
    "seal", [fcntl.F_SEAL_WRITE, F_SEAL_FUTURE_WRITE], ids=["write", "future_write"]
)
def test_write_sealed_memfd_refuses_a_writable_shared_mapping(rig: Rig, seal: int) -> None:
    p = rig.process()
    memfd = p.memfd_create("sealed", PAGE_SIZE)
    p.add_seals(memfd, seal)
    assert _errno(p.mmap, memfd, PAGE_SIZE) == errno.EPERM
    m = p.mmap(memfd, PAGE_SIZE, write=False)
    p.munmap(m)


def test_f_seal_write_under_a_writable_mapping_is_ebusy(rig: Rig) -> None:
    p = rig.process()
    memfd = p.memfd_create("mapped", PAGE_SIZE)
    m = p.mmap(memfd, PAGE_SIZE)
    assert _errno(p.add_seals, memfd, fcntl.F_SEAL_WRITE) == errno.EBUSY
    p.munmap(m)
    p.add_seals(memfd, fcntl.F_SEAL_WRITE)  # no writable mapping left: allowed
    assert _errno(p.mmap, memfd, PAGE_SIZE) == errno.EPERM


def test_seal_after_f_seal_seal_is_eperm(rig: Rig) -> None:
    p = rig.process()
    memfd = p.memfd_create("final", PAGE_SIZE)
    p.add_seals(memfd, fcntl.F_SEAL_SEAL)
    assert _errno(p.add_seals, memfd, fcntl.F_SEAL_WRITE) == errno.EPERM


@pytest.mark.parametrize(
    "seal", [fcntl.F_SEAL_WRITE, F_SEAL_FUTURE_WRITE], ids=["write", "future_write"]
)
def test_udmabuf_refuses_a_write_sealed_memfd(rig: Rig, seal: int) -> None:
    p = rig.process()
    memfd = p.memfd_create("u", PAGE_SIZE)
    p.add_seals(memfd, fcntl.F_SEAL_SHRINK | seal)
    u = p.open("/dev/udmabuf")
    a = CORE.new("struct udmabuf_create", memfd=memfd, offset=0, size=PAGE_SIZE)
    assert _errno(p.ioctl, u, CORE.UDMABUF_CREATE, a) == errno.EINVAL


# -- huge sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1 << 63, (1 << 64) - 1, MAX_LFS_FILESIZE + 1])
def test_buffer_object_of_a_huge_size_is_einval(rig: Rig, size: int) -> None:
    assert _errno(BufferObject, rig.dev, size) == errno.EINVAL
    assert rig.sub.oopses == []


def test_buffer_object_just_under_the_file_limit_is_enomem_or_einval(rig: Rig) -> None:
    live = LIVE.regions
    assert _errno(BufferObject, rig.dev, MAX_LFS_FILESIZE) in (errno.ENOMEM, errno.EINVAL)
    assert LIVE.regions == live


@pytest.mark.parametrize("size", [1 << 63, (1 << 64) - 1, 1 << 40])
def test_shared_allocators_answer_huge_sizes_with_enomem(size: int) -> None:
    assert _errno(RangeAllocator(PAGE_SIZE * 4).alloc, size) == errno.ENOMEM
    vram = DeviceMemory(PAGE_SIZE * 4)
    assert _errno(vram.alloc, size) == errno.ENOMEM
    assert vram.used == 0


@pytest.mark.parametrize("size", [(1 << 63), (1 << 64) - 1])
def test_shared_memory_of_a_huge_size_is_einval(size: int) -> None:
    assert _errno(SharedMemory, size) == errno.EINVAL


@pytest.mark.parametrize("size", [1 << 63, (1 << 64) - 1, (1 << 64) - PAGE_SIZE])
def test_vaccel_create_bo_of_a_huge_size_is_einval(rig: Rig, size: int) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    a = V.new("struct vaccel_create_bo", size=size)
    assert _errno(p.ioctl, fd, V.DRM_IOCTL_VACCEL_CREATE_BO, a) == errno.EINVAL
    assert rig.sub.oopses == []
