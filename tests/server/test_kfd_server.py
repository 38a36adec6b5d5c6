"""kfd_like's whole API through the devfs server: ioctls that take descriptors in
their arguments (ACQUIRE_VM's ``drm_fd``, IMPORT_DMABUF's ``dmabuf_fd``) work
because the header marks those fields ``accel:fd`` and the client sends them, with
no per-driver code in the transport."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from accelcore.machine import Machine
from accelcore.server import Server, connect
from accelcore.server.client import ClientProcess
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import CORE
from drivers.kfd_like import KFD_UAPI as U
from drivers.kfd_like.thunk import VRAM, Kfd

from .conftest import connected, loaded, serving, wait_for

KFD_MACHINE = {
    "machine": {"clock": "real", "drivers": ["vaccel", "kfd_like"]},
    "virtual": [{"driver": "vaccel", "count": 1}],
    "pci": [
        {"model": "kfd_like", "options": {"vram_mb": 16}},
        {"model": "kfd_like", "options": {"vram_mb": 16}},
    ],
}
SIZE = 2 * 4096
VA = 0x10_0000_0000


@pytest.fixture
def kfd_machine() -> Iterator[Machine]:
    yield from loaded(KFD_MACHINE)


@pytest.fixture
def kfd_server(kfd_machine: Machine, rt: Path) -> Iterator[Server]:
    yield from serving(kfd_machine, rt, KFD_MACHINE)


@pytest.fixture
def kfd_client(kfd_server: Server) -> Iterator[ClientProcess]:
    yield from connected(kfd_server)


def _vaccel_node(m: Machine) -> str:
    return next(d.node_path for d in m.subsystem.devices if d.driver.name == "vaccel")


def test_the_client_learns_descriptor_fields_from_the_headers(
    kfd_client: ClientProcess,
) -> None:
    for name, field in (
        ("DRM_IOCTL_KFD_ACQUIRE_VM", "drm_fd"),
        ("DRM_IOCTL_KFD_IMPORT_DMABUF", "dmabuf_fd"),
    ):
        d = U.ioctls[name]
        assert d.arg_type is not None
        assert kfd_client.fd_fields[d.cmd & 0xFFFF] == (U.ffi.offsetof(d.arg_type, field),)
    # A returned descriptor is not one the client sends.
    assert U.DRM_IOCTL_KFD_EXPORT_DMABUF & 0xFFFF not in kfd_client.fd_fields


def test_kfd_compute_and_dmabuf_import_through_the_server(
    kfd_machine: Machine, kfd_server: Server
) -> None:
    base = kfd_machine.subsystem.accounting()
    kfd_client = connect(kfd_server.runtime_dir)
    k = Kfd(kfd_machine, kfd_client)
    k.acquire_all()  # ACQUIRE_VM with each GPU's accel fd
    vfd = kfd_client.open(_vaccel_node(kfd_machine))
    bo = V.new("struct vaccel_create_bo", size=SIZE)
    kfd_client.ioctl(vfd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    prime = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC)
    kfd_client.ioctl(vfd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, prime)
    imp = k.ioctl(
        "DRM_IOCTL_KFD_IMPORT_DMABUF", va_addr=VA, gpu_id=k.gpu_ids[0], dmabuf_fd=prime.fd
    )
    k.map(k.map_args(imp.handle, k.gpu_ids))
    events = []
    for i, gid in enumerate(k.gpu_ids):
        q = k.create_queue(gid)
        events.append(k.create_event())
        q.submit(U.KFD_LIKE_KERNEL_MEMSET, [VA + i * 4096, 1024, 0xA0 + i], event=events[-1])
    assert k.wait(events, timeout_ms=10_000) == U.KFD_IOC_WAIT_RESULT_COMPLETE
    view = kfd_client.mmap(vfd, SIZE, bo.mmap_offset)
    assert bytes(view.view[:4]) == bytes([0xA0, 0, 0, 0])
    assert bytes(view.view[4096:4100]) == bytes([0xA1, 0, 0, 0])
    kfd_client.munmap(view)
    k.map(k.map_args(imp.handle, k.gpu_ids, unmap=True), unmap=True)
    k.ioctl("DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU", handle=imp.handle)
    k.close()
    assert wait_for(lambda: kfd_machine.subsystem.accounting() == base)


def test_kfd_export_then_import_by_fd_through_the_server(
    kfd_machine: Machine, kfd_client: ClientProcess
) -> None:
    k = Kfd(kfd_machine, kfd_client)
    k.acquire_all()
    g0, g1 = k.gpu_ids
    a = k.alloc(g0, SIZE, VA, VRAM)
    exp = k.ioctl("DRM_IOCTL_KFD_EXPORT_DMABUF", handle=a.handle, flags=CORE.DRM_CLOEXEC)
    assert stat.S_ISSOCK(os.fstat(exp.dmabuf_fd).st_mode)  # a real descriptor of ours
    imp = k.ioctl(
        "DRM_IOCTL_KFD_IMPORT_DMABUF", va_addr=VA + SIZE, gpu_id=g1, dmabuf_fd=exp.dmabuf_fd
    )
    k.cpu_map(g0, a, SIZE)[:4] = b"abcd"
    proc = k.drv.processes[kfd_client.pid]
    with kfd_machine.clock.lock:
        mem = proc.lookup_mem(imp.handle)
        assert mem is not None and bytes(mem.view()[:4]) == b"abcd"
    k.close()


def test_acquire_vm_with_a_descriptor_that_is_not_open_is_einval_as_in_process(
    kfd_machine: Machine, kfd_client: ClientProcess
) -> None:
    k = Kfd(kfd_machine, kfd_client)
    afd = kfd_client.open(k.drv.gpus[k.gpu_ids[0]].dev.node_path)
    kfd_client.close(afd)  # the number is free again: nothing to send
    with pytest.raises(OSError) as info:
        k.ioctl("DRM_IOCTL_KFD_ACQUIRE_VM", drm_fd=afd, gpu_id=k.gpu_ids[0])
    # kfd_ioctl_acquire_vm: fget() fails -> -EINVAL, the same answer as in process.
    assert info.value.errno == errno.EINVAL
    assert f"drm_fd {afd} is not open" in str(info.value)
    k.close()
