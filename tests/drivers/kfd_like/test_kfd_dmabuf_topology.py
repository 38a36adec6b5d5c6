"""dma-buf import/export with the in-tree vaccel driver, and the sysfs topology."""

from __future__ import annotations

from accelcore import CORE
from accelcore.testing import VAccelDriver
from accelcore.testing.vaccel import VACCEL_UAPI as V
from drivers.kfd_like import KFD_UAPI as U
from drivers.kfd_like.thunk import VRAM, Kfd, driver_of, make_machine

VA = 0x70_0000_0000
SIZE = 2 * 4096


def machine_with_vaccel():
    m = make_machine(5_000, 5_000)
    vdrv = VAccelDriver()
    m.add_driver(vdrv)
    vdev = m.subsystem.create_device(vdrv)
    return m, vdev


def test_import_vaccel_buffer_map_on_all_gpus_and_write_it(leak_check, accel_process_factory):
    m, vdev = machine_with_vaccel()
    check = leak_check(m)
    k = Kfd(m, accel_process_factory(m))
    k.acquire_all()
    vfd = k.p.open(vdev.node_path)
    bo = V.new("struct vaccel_create_bo", size=SIZE)
    k.p.ioctl(vfd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    prime = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC)
    k.p.ioctl(vfd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, prime)
    imp = k.ioctl(
        "DRM_IOCTL_KFD_IMPORT_DMABUF", va_addr=VA, gpu_id=k.gpu_ids[0], dmabuf_fd=prime.fd
    )
    k.map(k.map_args(imp.handle, k.gpu_ids))
    events = []
    for i, gid in enumerate(k.gpu_ids):
        q = k.create_queue(gid)
        events.append(k.create_event())
        q.submit(U.KFD_LIKE_KERNEL_MEMSET, [VA + i * 4096, 1024, 0xA0 + i], event=events[-1])
    assert k.wait(events) == U.KFD_IOC_WAIT_RESULT_COMPLETE
    view = k.p.mmap(vfd, SIZE, bo.mmap_offset)
    assert bytes(view.view[:4]) == bytes([0xA0, 0, 0, 0])
    assert bytes(view.view[4096:4100]) == bytes([0xA1, 0, 0, 0])
    k.p.munmap(view)
    k.map(k.map_args(imp.handle, k.gpu_ids, unmap=True), unmap=True)
    k.ioctl("DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU", handle=imp.handle)
    k.close()
    accel_process_factory.close()  # every process exits (a server session too)
    check()


def test_export_vram_to_vaccel_which_fills_it(leak_check, accel_process_factory):
    m, vdev = machine_with_vaccel()
    check = leak_check(m)
    k = Kfd(m, accel_process_factory(m))
    k.acquire_all()
    gid = k.gpu_ids[0]
    a = k.alloc(gid, SIZE, VA, VRAM)
    exp = k.ioctl("DRM_IOCTL_KFD_EXPORT_DMABUF", handle=a.handle, flags=CORE.DRM_CLOEXEC)
    vfd = k.p.open(vdev.node_path)
    prime = CORE.new("struct drm_prime_handle", fd=exp.dmabuf_fd)
    k.p.ioctl(vfd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, prime)
    sub = V.new("struct vaccel_submit", handle=prime.handle, fill=0x5A, delay_ns=1000)
    k.p.ioctl(vfd, V.DRM_IOCTL_VACCEL_SUBMIT, sub)
    k.p.ioctl(
        vfd, V.DRM_IOCTL_VACCEL_WAIT, V.new("struct vaccel_wait", seqno=sub.seqno, timeout_ns=-1)
    )
    cpu = k.cpu_map(gid, a, SIZE)
    assert bytes(cpu[:2]) == b"\x5a\x5a"
    del cpu
    k.close()
    accel_process_factory.close()  # every process exits (a server session too)
    check()


def test_reimporting_own_export_shares_the_memory(kfd_both):
    g0, g1 = kfd_both.gpu_ids
    a = kfd_both.alloc(g0, SIZE, VA, VRAM)
    exp = kfd_both.ioctl("DRM_IOCTL_KFD_EXPORT_DMABUF", handle=a.handle, flags=CORE.DRM_CLOEXEC)
    imp = kfd_both.ioctl(
        "DRM_IOCTL_KFD_IMPORT_DMABUF", va_addr=VA + SIZE, gpu_id=g1, dmabuf_fd=exp.dmabuf_fd
    )
    kfd_both.cpu_map(g0, a, SIZE)[:4] = b"abcd"
    mem = kfd_both.drv.processes[kfd_both.p.pid].lookup_mem(imp.handle)
    assert mem is not None and bytes(mem.view()[:4]) == b"abcd"


def test_topology_lists_cpu_and_gpus(machine2):
    sysfs, drv = machine2.sysfs, driver_of(machine2)
    base = "/sys/class/kfd/kfd/topology"
    assert sysfs.read(f"{base}/nodes/0/gpu_id") == "0\n"
    ids = [int(sysfs.read(f"{base}/nodes/{i}/gpu_id")) for i in (1, 2)]
    assert ids == list(drv.gpus)
    props = dict(
        line.split() for line in sysfs.read(f"{base}/nodes/1/properties").split("\n") if line
    )
    assert int(props["vendor_id"]) == 0x1002 and int(props["device_id"]) == 0x74A1
    bank = sysfs.read(f"{base}/nodes/1/mem_banks/0/properties")
    assert f"size_in_bytes {64 << 20}" in bank
    assert "node_to 0" in sysfs.read(f"{base}/nodes/2/io_links/0/properties")


def test_generation_id_changes_when_a_gpu_goes(machine2):
    path = "/sys/class/kfd/kfd/topology/generation_id"
    before = int(machine2.sysfs.read(path))
    dev = machine2.subsystem.registered_devices()[1]
    machine2.subsystem.remove_device(dev)
    assert int(machine2.sysfs.read(path)) == before + 1
    assert len(driver_of(machine2).gpus) == 1


def test_dev_kfd_is_a_world_accessible_misc_node(machine2):
    node = machine2.subsystem.nodes["/dev/kfd"]
    assert node.mode == 0o666 and node.kind == "misc"


def test_get_version_and_apertures(kfd_both):
    v = kfd_both.ioctl("DRM_IOCTL_KFD_GET_VERSION")
    assert (v.major_version, v.minor_version) == (1, 12)
    n = kfd_both.ioctl("DRM_IOCTL_KFD_GET_PROCESS_APERTURES_NEW", num_of_nodes=0)
    assert n.num_of_nodes == 2
    old = kfd_both.ioctl("DRM_IOCTL_KFD_GET_PROCESS_APERTURES")
    assert [old.process_apertures[i].gpu_id for i in range(2)] == kfd_both.gpu_ids
