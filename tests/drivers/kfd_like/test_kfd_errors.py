"""Bad input on /dev/kfd: exact errnos, nothing leaks, no other process affected."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from accelcore import CORE
from accelcore.testing.transports import ServerProcess
from drivers.kfd_like import KFD_UAPI as U
from drivers.kfd_like.thunk import GTT, RW, VRAM, Kfd, make_machine

VA = 0x50_0000_0000
F = {
    name[len("KFD_IOC_ALLOC_MEM_FLAGS_") :]: v
    for name, v in U.constants.items()
    if name.startswith("KFD_IOC_ALLOC_MEM_FLAGS_")
}


def errno_of(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as exc:
        fn(*args, **kw)
    return exc.value.errno


@pytest.fixture
def env(leak_check, accel_process_factory):
    """An acquired /dev/kfd, in process and through a devfs server (one run each)."""
    m = make_machine(5_000, 5_000)
    check = leak_check(m)
    k = Kfd(m, accel_process_factory(m))
    k.acquire_all()
    yield k
    k.close()
    accel_process_factory.close()
    check()


@pytest.mark.parametrize(
    "flags",
    [
        0,
        F["VRAM"] | F["GTT"],
        F["USERPTR"] | F["DOORBELL"],
        F["GTT"] | F["PUBLIC"],
        F["USERPTR"] | F["NO_SUBSTITUTE"],
        F["GTT"] | F["CONTIGUOUS_BEST_EFFORT"],
        F["DOORBELL"] | F["EXECUTABLE"],
        F["MMIO_REMAP"],
        F["GTT"] | (1 << 10),
    ],
    ids=[
        "none",
        "vram+gtt",
        "userptr+doorbell",
        "gtt+public",
        "userptr+no_substitute",
        "gtt+contiguous",
        "doorbell+exec",
        "mmio_remap",
        "unknown-bit",
    ],
)
def test_senseless_alloc_flags_are_einval(env, flags):
    assert errno_of(env.alloc, env.gpu_ids[0], 4096, VA, flags) == errno.EINVAL


@pytest.mark.parametrize(
    ("size", "va"),
    [(0, VA), (100, VA), (4096, VA + 1), (4096, 0)],
    ids=["size-0", "unaligned-size", "unaligned-va", "va-0"],
)
def test_bad_alloc_ranges_are_einval(env, size, va):
    assert errno_of(env.alloc, env.gpu_ids[0], size, va, GTT) == errno.EINVAL


def test_alloc_on_unknown_gpu_is_einval(env):
    assert errno_of(env.alloc, 0xBEEF, 4096, VA, GTT) == errno.EINVAL


def test_overlapping_va_is_einval(env):
    env.alloc(env.gpu_ids[0], 2 * 4096, VA, GTT)
    assert errno_of(env.alloc, env.gpu_ids[1], 4096, VA + 4096, GTT) == errno.EINVAL


def test_vram_exhaustion_is_enomem(env):
    assert errno_of(env.alloc, env.gpu_ids[0], 128 << 20, VA, VRAM) == errno.ENOMEM


def test_userptr_outside_user_memory_is_efault(env):
    assert (
        errno_of(env.alloc, env.gpu_ids[0], 4096, VA, F["USERPTR"] | RW, mmap_offset=0x1000)
        == errno.EFAULT
    )


def test_alloc_without_acquired_vm_is_enodev(machine2):
    k = Kfd(machine2)
    assert errno_of(k.alloc, k.gpu_ids[0], 4096, VA, GTT) == errno.ENODEV
    k.close()


def test_map_with_zero_devices_is_einval(env):
    a = env.alloc(env.gpu_ids[0], 4096, VA, GTT)
    args = env.map_args(a.handle, [])
    args.n_devices = 0
    assert errno_of(env.map, args) == errno.EINVAL


def test_map_with_n_success_past_n_devices_is_einval(env):
    a = env.alloc(env.gpu_ids[0], 4096, VA, GTT)
    assert errno_of(env.map, env.map_args(a.handle, env.gpu_ids, n_success=3)) == errno.EINVAL


def test_map_array_longer_than_its_memory_is_efault(env):
    a = env.alloc(env.gpu_ids[0], 4096, VA, GTT)
    args = env.map_args(a.handle, env.gpu_ids)
    # Past every user-memory region of either transport (a server client's
    # arenas are 64 MiB, so a 4 MiB overrun may still land in mapped memory).
    args.n_devices = 0xFFFF_FFFF
    assert errno_of(env.map, args) == errno.EFAULT
    assert args.n_success == 0


def test_map_array_outside_user_memory_is_efault(env):
    a = env.alloc(env.gpu_ids[0], 4096, VA, GTT)
    args = env.map_args(a.handle, env.gpu_ids)
    args.device_ids_array_ptr = 0x10
    assert errno_of(env.map, args) == errno.EFAULT


def test_mapping_freed_memory_is_enomem(env):
    a = env.alloc(env.gpu_ids[0], 4096, VA, GTT)
    env.ioctl("DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU", handle=a.handle)
    assert errno_of(env.map, env.map_args(a.handle, env.gpu_ids)) == errno.ENOMEM


def test_freeing_mapped_memory_is_ebusy(env):
    a = env.alloc(env.gpu_ids[0], 4096, VA, GTT)
    env.map(env.map_args(a.handle, env.gpu_ids))
    assert errno_of(env.ioctl, "DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU", handle=a.handle) == errno.EBUSY


def test_freeing_unknown_handle_is_einval(env):
    assert (
        errno_of(env.ioctl, "DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU", handle=(env.gpu_ids[0] << 32) | 77)
        == errno.EINVAL
    )


def test_unmapping_unmapped_memory_is_einval(env):
    a = env.alloc(env.gpu_ids[0], 4096, VA, GTT)
    assert (
        errno_of(env.map, env.map_args(a.handle, env.gpu_ids, unmap=True), unmap=True)
        == errno.EINVAL
    )


def test_acquire_vm_with_closed_fd_is_einval(machine2):
    k = Kfd(machine2)
    assert (
        errno_of(k.ioctl, "DRM_IOCTL_KFD_ACQUIRE_VM", drm_fd=99, gpu_id=k.gpu_ids[0])
        == errno.EINVAL
    )
    k.close()


def test_acquire_vm_with_another_gpus_fd_is_einval(machine2):
    k = Kfd(machine2)
    afd = k.p.open(k.drv.gpus[k.gpu_ids[1]].dev.node_path)
    assert (
        errno_of(k.ioctl, "DRM_IOCTL_KFD_ACQUIRE_VM", drm_fd=afd, gpu_id=k.gpu_ids[0])
        == errno.EINVAL
    )
    k.close()


def test_second_acquire_vm_from_another_file_is_ebusy(env):
    gid = env.gpu_ids[0]
    afd = env.p.open(env.drv.gpus[gid].dev.node_path)
    assert errno_of(env.ioctl, "DRM_IOCTL_KFD_ACQUIRE_VM", drm_fd=afd, gpu_id=gid) == errno.EBUSY


def test_unknown_ioctl_is_enotty(env):
    cmd = U.DRM_IOCTL_KFD_GET_VERSION & ~0xFF | 0x7F
    assert errno_of(env.p.ioctl, env.fd, cmd, bytearray(8)) == errno.ENOTTY


def test_kfd_ioctl_on_accel_node_is_enotty(env):
    afd = env.accel_fds[env.gpu_ids[0]]
    args = U.new("struct kfd_ioctl_get_version_args")
    assert errno_of(env.p.ioctl, afd, U.DRM_IOCTL_KFD_GET_VERSION, args) == errno.ENOTTY


def test_forked_child_gets_ebadf(env):
    args = U.new("struct kfd_ioctl_get_version_args")
    if not isinstance(env.p, ServerProcess):
        child = env.p.fork()
        assert errno_of(child.ioctl, env.fd, U.DRM_IOCTL_KFD_GET_VERSION, args) == errno.EBADF
        child.exit()
        return
    # Through the server: a real fork; the child's first call opens its own
    # session (another task), and the inherited /dev/kfd file is its parent's.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through the pipe
        code = 255
        try:
            signal.alarm(20)
            code = errno_of(env.p.ioctl, env.fd, U.DRM_IOCTL_KFD_GET_VERSION, args)
        finally:
            os.write(w, bytes([code & 0xFF]))
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == bytes([errno.EBADF])


def test_short_struct_is_zero_extended(env):
    cmd = U.DRM_IOCTL_KFD_GET_VERSION
    small = (cmd & ~(0x3FFF << 16)) | (4 << 16)
    buf = bytearray(4)
    env.p.ioctl(env.fd, small, buf)
    assert int.from_bytes(buf, "little") == U.KFD_IOCTL_MAJOR_VERSION


@pytest.mark.parametrize(
    ("field", "value", "err"),
    [
        ("queue_type", U.KFD_IOC_QUEUE_TYPE_SDMA, errno.EOPNOTSUPP),
        ("queue_type", 9, errno.EOPNOTSUPP),
        ("queue_priority", 16, errno.EINVAL),
        ("queue_percentage", 101, errno.EINVAL),
        ("ring_size", 1000, errno.EINVAL),
        ("ring_base_address", 0x10, errno.EFAULT),
        ("read_pointer_address", 0x10, errno.EFAULT),
        ("gpu_id", 0xBEEF, errno.EINVAL),
    ],
)
def test_bad_create_queue(env, field, value, err):
    ring, ptrs = env.alloc_user(1024), env.alloc_user(16)
    fields = dict(
        gpu_id=env.gpu_ids[0],
        ring_base_address=ring.addr,
        ring_size=1024,
        read_pointer_address=ptrs.addr,
        write_pointer_address=ptrs.addr + 8,
        queue_type=U.KFD_IOC_QUEUE_TYPE_COMPUTE_AQL,
        queue_percentage=100,
    )
    fields[field] = value
    assert errno_of(env.ioctl, "DRM_IOCTL_KFD_CREATE_QUEUE", **fields) == err


def test_destroying_unknown_queue_is_einval(env):
    assert errno_of(env.ioctl, "DRM_IOCTL_KFD_DESTROY_QUEUE", queue_id=5) == errno.EINVAL


def test_unknown_event_is_einval(env):
    assert errno_of(env.ioctl, "DRM_IOCTL_KFD_SET_EVENT", event_id=42) == errno.EINVAL


def test_unsupported_event_type_is_einval(env):
    assert errno_of(env.create_event, U.KFD_IOC_EVENT_DEBUG_EVENT) == errno.EINVAL


def test_export_of_userptr_is_einval(env):
    buf = env.alloc_user(4096)
    a = env.alloc(env.gpu_ids[0], 4096, VA, F["USERPTR"] | RW, mmap_offset=buf.addr)
    assert (
        errno_of(env.ioctl, "DRM_IOCTL_KFD_EXPORT_DMABUF", handle=a.handle, flags=CORE.DRM_CLOEXEC)
        == errno.EINVAL
    )


def test_import_of_a_non_dmabuf_fd_is_einval(env):
    assert (
        errno_of(
            env.ioctl,
            "DRM_IOCTL_KFD_IMPORT_DMABUF",
            va_addr=VA,
            gpu_id=env.gpu_ids[0],
            dmabuf_fd=env.fd,
        )
        == errno.EINVAL
    )
