"""kfd_like memory lifetime (issue 15 §1): a CPU mapping holds what it maps, so
FREE_MEMORY_OF_GPU under a live mapping returns nothing to the allocator, and no
mapping ever reaches another process's memory; huge sizes are errors, not oopses."""

from __future__ import annotations

import errno

import pytest

from accelcore import BufferObject
from drivers.kfd_like.thunk import GTT, VRAM, Kfd, driver_of, make_machine

VA = 0x50_0000_0000
SECRET = b"B's secret bytes"


def _errno(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as exc:
        fn(*args, **kw)
    return exc.value.errno


@pytest.fixture
def machine():
    return make_machine(5_000)


def _free(k: Kfd, handle: int) -> None:
    k.ioctl("DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU", handle=handle)


@pytest.mark.parametrize("flags", [VRAM, GTT], ids=["vram", "gtt"])
def test_free_under_a_live_mapping_keeps_the_memory_until_munmap(
    machine, leak_check, flags, accel_process_factory
):
    check = leak_check(machine)
    drv = driver_of(machine)
    a = Kfd(machine, accel_process_factory(machine))
    a.acquire_all()
    gid = a.gpu_ids[0]
    base = (machine.subsystem.accounting(), drv.accounting())
    alloc = a.alloc(gid, 2 * 4096, VA, flags)
    view = a.cpu_map(gid, alloc, 2 * 4096)
    view[:5] = b"A own"
    alive = (machine.subsystem.accounting()["buffers"], drv.accounting()["vram_used"])
    _free(a, alloc.handle)
    # The handle is gone, the memory is not: it is still reserved and counted.
    assert drv.accounting()["kfd_mems"] == base[1]["kfd_mems"]
    assert (machine.subsystem.accounting()["buffers"], drv.accounting()["vram_used"]) == alive
    assert bytes(view[:5]) == b"A own"
    (mapping,) = a.mappings
    a.p.munmap(mapping)
    a.mappings.clear()
    assert (machine.subsystem.accounting(), drv.accounting()) == base
    a.close()
    accel_process_factory.close()  # every process exits (a server session too)
    check()


def test_freed_vram_under_a_mapping_never_shows_another_process_secret(
    machine, leak_check, accel_process_factory
):
    """The issue's example: A allocates VRAM, maps it, frees the handle; B
    allocates and writes a secret; A's old mapping must not read it."""
    check = leak_check(machine)
    a, b = (
        Kfd(machine, accel_process_factory(machine)),
        Kfd(machine, accel_process_factory(machine)),
    )
    a.acquire_all()
    b.acquire_all()
    gid = a.gpu_ids[0]
    vram = driver_of(machine).gpus[gid].gpu.vram
    alloc = a.alloc(gid, 4096, VA)
    old = a.cpu_map(gid, alloc, 4096)
    old[:5] = b"A own"
    _free(a, alloc.handle)
    balloc = b.alloc(gid, 4096, VA)
    bview = b.cpu_map(gid, balloc, 4096)
    assert bytes(bview[: len(SECRET)]) == bytes(len(SECRET))  # zeroed, nothing of A's
    bview[: len(SECRET)] = SECRET
    assert bytes(old[: len(SECRET)]) == b"A own" + bytes(len(SECRET) - 5)
    assert vram.used == 2 * 4096  # A's freed page is still reserved
    (mapping,) = a.mappings
    a.p.munmap(mapping)
    a.mappings.clear()
    assert vram.used == 4096
    a.close()
    b.close()
    accel_process_factory.close()  # every process exits (a server session too)
    check()


def test_a_mapping_of_freed_vram_keeps_it_from_every_other_process(
    machine, leak_check, accel_process_factory
):
    check = leak_check(machine)
    a, b = (
        Kfd(machine, accel_process_factory(machine)),
        Kfd(machine, accel_process_factory(machine)),
    )
    a.acquire_all()
    b.acquire_all()
    gid = a.gpu_ids[0]
    size = driver_of(machine).gpus[gid].gpu.vram_size  # all of VRAM
    alloc = a.alloc(gid, size, VA)
    a.cpu_map(gid, alloc, 4096)
    _free(a, alloc.handle)
    assert _errno(b.alloc, gid, 4096, VA) == errno.ENOMEM
    (mapping,) = a.mappings
    a.p.munmap(mapping)
    a.mappings.clear()
    b.alloc(gid, 4096, VA)  # the last munmap gave the VRAM back
    a.close()
    b.close()
    accel_process_factory.close()  # every process exits (a server session too)
    check()


def test_old_mapping_and_new_allocation_are_different_pages(
    machine, leak_check, accel_process_factory
):
    """VRAM reused at the same device address is a new memfd: a view the old
    owner kept past its munmap-less free cannot reach it."""
    check = leak_check(machine)
    a, b = (
        Kfd(machine, accel_process_factory(machine)),
        Kfd(machine, accel_process_factory(machine)),
    )
    a.acquire_all()
    b.acquire_all()
    gid = a.gpu_ids[0]
    vram = driver_of(machine).gpus[gid].gpu.vram
    alloc = a.alloc(gid, 4096, VA)
    old = a.cpu_map(gid, alloc, 4096)
    _free(a, alloc.handle)
    balloc = b.alloc(gid, 4096, VA)
    assert {blk.addr for blk in vram.blocks()} == {0, 4096}  # A's range is still reserved
    bview = b.cpu_map(gid, balloc, 4096)
    bview[: len(SECRET)] = SECRET
    assert bytes(old[: len(SECRET)]) == bytes(len(SECRET))
    a.close()
    b.close()
    accel_process_factory.close()  # every process exits (a server session too)
    check()


def test_doorbell_mapping_outlives_the_process_without_reaching_the_next(
    machine, leak_check, accel_process_factory
):
    check = leak_check(machine)
    a = Kfd(machine, accel_process_factory(machine))
    a.acquire_all()
    gid = a.gpu_ids[0]
    q = a.create_queue(gid)
    old = q.doorbell
    gpu = driver_of(machine).gpus[gid].gpu
    # A's process goes (every fd closed) but keeps its doorbell mapping.
    a.mappings.remove(old)
    a.p.close(a.fd)
    for fd in a.accel_fds.values():
        a.p.close(fd)
    assert gpu.doorbells.used == 4096  # still held by the mapping
    b = Kfd(machine, accel_process_factory(machine))
    b.acquire_all()
    bq = b.create_queue(gid)
    assert gpu.doorbells.used == 2 * 4096
    bq.doorbell.view[:8] = b"\xff" * 8
    assert bytes(old.view[:8]) != b"\xff" * 8
    a.p.munmap(old)
    assert gpu.doorbells.used == 4096
    a.close()
    b.close()
    accel_process_factory.close()  # every process exits (a server session too)
    check()


@pytest.mark.parametrize(
    "size",
    [1 << 63, (1 << 64) - 4096, (1 << 64) - 1, (1 << 62)],
    ids=["2^63", "2^64-page", "2^64-1", "2^62"],
)
@pytest.mark.parametrize("flags", [VRAM, GTT], ids=["vram", "gtt"])
def test_huge_alloc_sizes_are_errors_not_oopses(
    machine, leak_check, size, flags, accel_process_factory
):
    check = leak_check(machine)
    k = Kfd(machine, accel_process_factory(machine))
    k.acquire_all()
    code = _errno(k.alloc, k.gpu_ids[0], size, 0x1_0000, flags)
    assert code in (errno.EINVAL, errno.ENOMEM)
    assert machine.subsystem.oopses == []
    k.close()
    accel_process_factory.close()  # every process exits (a server session too)
    check()


@pytest.mark.parametrize("flags", [VRAM, GTT], ids=["vram", "gtt"])
def test_huge_alloc_inside_the_aperture_is_enomem(
    machine, leak_check, flags, accel_process_factory
):
    check = leak_check(machine)
    k = Kfd(machine, accel_process_factory(machine))
    k.acquire_all()
    # 64 TiB: inside the 2**47 GPUVM aperture, more VRAM and RAM than any host has.
    assert _errno(k.alloc, k.gpu_ids[0], 1 << 46, 0x1_0000, flags) == errno.ENOMEM
    assert machine.subsystem.oopses == []
    k.close()
    accel_process_factory.close()  # every process exits (a server session too)
    check()


def test_vram_buffer_objects_are_backed_by_their_own_memfd(
    machine, leak_check, accel_process_factory
):
    check = leak_check(machine)
    k = Kfd(machine, accel_process_factory(machine))
    k.acquire_all()
    gid = k.gpu_ids[0]
    k.alloc(gid, 3 * 4096, VA)
    dev = driver_of(machine).gpus[gid].dev
    (bo,) = [b for b in dev.buffers if isinstance(b, BufferObject)]
    assert bo.memory.size == bo.size == 3 * 4096 and bo.offset == 0
    k.close()
    accel_process_factory.close()  # every process exits (a server session too)
    check()
