"""PRIME and dma-buf lifetime, udmabuf, ownership pinning, INFO, sysfs, public API."""

from __future__ import annotations

import errno
import fcntl

import pytest

from accelcore import CORE, Process
from accelcore.testing.vaccel import VACCEL_UAPI as V

from .conftest import Rig


def _export(p: Process, fd: int, handle: int, flags: int = 0) -> int:
    a = CORE.new("struct drm_prime_handle", handle=handle, flags=flags)
    p.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, a)
    return int(a.fd)


def _import(p: Process, fd: int, buf_fd: int) -> int:
    a = CORE.new("struct drm_prime_handle", fd=buf_fd)
    p.ioctl(fd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, a)
    return int(a.handle)


def test_self_import_returns_original_handle(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    buf = _export(p, fd, h)
    assert _import(p, fd, buf) == h


def test_same_buffer_imported_twice_gets_same_handle(rig: Rig) -> None:
    a, b = rig.process(), rig.process()
    fa, fb = a.open("/dev/accel/accel0"), b.open("/dev/accel/accel1")
    h, _ = rig.create_bo(a, fa)
    buf = a.send_fd(_export(a, fa, h), b)
    assert _import(b, fb, buf) == _import(b, fb, buf)


def test_cross_device_share_sees_same_bytes(rig: Rig) -> None:
    a, b = rig.process(), rig.process()
    fa, fb = a.open("/dev/accel/accel0"), b.open("/dev/accel/accel1")
    h, off = rig.create_bo(a, fa)
    buf = a.send_fd(_export(a, fa, h), b)
    hb = _import(b, fb, buf)
    bo_b = rig.dev1.files[0].handles.lookup(hb)
    ma = a.mmap(fa, 4096, off)
    ma.view[:5] = b"hello"
    assert bytes(bo_b.view(0, 5)) == b"hello"
    mb = b.mmap(buf, 4096, write=False)  # exported without DRM_RDWR: read-only
    assert bytes(mb.view[:5]) == b"hello"
    b.munmap(mb)
    a.munmap(ma)


def test_handle_to_fd_rejects_unknown_flags(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    with pytest.raises(OSError) as e:
        _export(p, fd, h, flags=0x1)
    assert e.value.errno == errno.EINVAL


def test_handle_to_fd_unknown_handle_is_enoent(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    rig.create_bo(p, fd)
    with pytest.raises(OSError) as e:
        _export(p, fd, 77)
    assert e.value.errno == errno.ENOENT


def test_fd_to_handle_bad_fd_is_ebadf(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    rig.create_bo(p, fd)
    with pytest.raises(OSError) as e:
        _import(p, fd, 999)
    assert e.value.errno == errno.EBADF


def test_fd_to_handle_non_dmabuf_is_einval(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    rig.create_bo(p, fd)
    with pytest.raises(OSError) as e:
        _import(p, fd, fd)
    assert e.value.errno == errno.EINVAL


def test_gem_close_twice_is_einval(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    p.ioctl(fd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=h))
    with pytest.raises(OSError) as e:
        p.ioctl(fd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=h))
    assert e.value.errno == errno.EINVAL


def test_handles_are_private_to_their_file(rig: Rig) -> None:
    p = rig.process()
    f1 = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, f1)
    p.ioctl(f1, CORE.DRM_IOCTL_DROP_MASTER)  # let another file own
    f2 = p.open("/dev/accel/accel0")
    with pytest.raises(OSError) as e:
        p.ioctl(f2, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=h))
    assert e.value.errno == errno.EINVAL


def test_dmabuf_outlives_exporting_file_until_last_fd(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    buf = _export(p, fd, h)
    p.close(fd)
    assert rig.sub.accounting()["dmabufs"] == 1 and len(rig.dev.buffers) == 1
    p.close(buf)
    assert rig.sub.accounting()["dmabufs"] == 0 and len(rig.dev.buffers) == 0


def test_exported_buffer_pins_ownership_until_released(rig: Rig) -> None:
    owner, other, holder = rig.process(), rig.process(), rig.process()
    fo = owner.open("/dev/accel/accel0")
    h, _ = rig.create_bo(owner, fo)
    held = owner.send_fd(_export(owner, fo, h), holder)
    owner.exit()
    fx = other.open("/dev/accel/accel0")
    with pytest.raises(OSError) as e:
        rig.create_bo(other, fx)
    assert e.value.errno == errno.EBUSY and "pinned by 1 dma-buf" in str(e.value)
    info = _info(other, fx, CORE.ACCEL_INFO_OWNERSHIP, "struct accel_info_ownership")
    assert (info.state, info.pin_count) == (CORE.ACCEL_OWNER_PINNED, 1)
    assert rig.sub.holders(holder.task.files.get(held)) == [(holder.pid, held)]
    holder.close(held)
    rig.create_bo(other, fx)  # free again


def test_dmabuf_sync_flags(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    buf = _export(p, fd, h)
    ok = CORE.new("struct dma_buf_sync", flags=CORE.DMA_BUF_SYNC_RW)
    p.ioctl(buf, CORE.DMA_BUF_IOCTL_SYNC, ok)
    for bad in (0, 0x80):
        with pytest.raises(OSError) as e:
            p.ioctl(buf, CORE.DMA_BUF_IOCTL_SYNC, CORE.new("struct dma_buf_sync", flags=bad))
        assert e.value.errno == errno.EINVAL


def test_dmabuf_mmap_out_of_range_is_einval(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    buf = _export(p, fd, h)
    with pytest.raises(OSError) as e:
        p.mmap(buf, 8192, write=False)
    assert e.value.errno == errno.EINVAL


def _udmabuf(p: Process, memfd: int, offset: int, size: int, flags: int = 0) -> int:
    u = p.open("/dev/udmabuf")
    try:
        a = CORE.new("struct udmabuf_create", memfd=memfd, offset=offset, size=size, flags=flags)
        return p.ioctl(u, CORE.UDMABUF_CREATE, a)
    finally:
        p.close(u)


def test_udmabuf_wraps_memfd_pages(rig: Rig) -> None:
    p = rig.process()
    mfd = p.memfd_create("user", 2 * 4096)
    p.add_seals(mfd, fcntl.F_SEAL_SHRINK)
    buf = _udmabuf(p, mfd, 4096, 4096)
    p.task.files.get(mfd).memory.write(4096, b"seed003")  # type: ignore[attr-defined]
    m = p.mmap(buf, 4096)
    assert bytes(m.view[:7]) == b"seed003"
    p.munmap(m)


@pytest.mark.parametrize(
    ("offset", "size", "seal", "flags"),
    [
        (1, 4096, True, 0),
        (0, 100, True, 0),
        (0, 0, True, 0),
        (0, 4096, False, 0),
        (0, 4096, True, 0x2),
        (4096, 8192, True, 0),
    ],
    ids=[
        "unaligned-offset",
        "unaligned-size",
        "zero-size",
        "no-shrink-seal",
        "bad-flags",
        "past-end",
    ],
)
def test_udmabuf_rejects(rig: Rig, offset: int, size: int, seal: bool, flags: int) -> None:
    p = rig.process()
    mfd = p.memfd_create("user", 2 * 4096)
    if seal:
        p.add_seals(mfd, fcntl.F_SEAL_SHRINK)
    with pytest.raises(OSError) as e:
        _udmabuf(p, mfd, offset, size, flags)
    assert e.value.errno == errno.EINVAL


def test_udmabuf_non_memfd_is_ebadfd(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    with pytest.raises(OSError) as e:
        _udmabuf(p, fd, 0, 4096)
    assert e.value.errno == errno.EBADFD


def _info(p: Process, fd: int, op: int, ctype: str, index: int = 0, size: int = 4096) -> object:
    out = p.alloc(size)
    a = CORE.new("struct accel_info", op=op, return_pointer=out.addr, return_size=size, index=index)
    p.ioctl(fd, CORE.ACCEL_IOCTL_INFO, a)
    uapi = V if "vaccel" in ctype else CORE
    return uapi.from_bytes(ctype, bytes(out.view[: uapi.sizeof(ctype)]))


def test_info_device_identity(rig: Rig) -> None:
    p = rig.process(uid=1000)
    fd = p.open("/dev/accel/accel1")
    d = _info(p, fd, CORE.ACCEL_INFO_DEVICE, "struct accel_info_device")
    assert CORE.ffi.string(d.driver) == b"vaccel" and d.minor == 1  # type: ignore[attr-defined]
    assert CORE.ffi.string(d.bus_id) == b"virtual"  # type: ignore[attr-defined]


def test_info_clients_lists_owner_and_monitor(rig: Rig) -> None:
    owner, mon = rig.process(comm="train"), rig.process(uid=1000, comm="smi")
    fo, fm = owner.open("/dev/accel/accel0"), mon.open("/dev/accel/accel0")
    rig.create_bo(owner, fo)
    c0 = _info(mon, fm, CORE.ACCEL_INFO_CLIENTS, "struct accel_info_client")
    c1 = _info(mon, fm, CORE.ACCEL_INFO_CLIENTS, "struct accel_info_client", index=1)
    assert (c0.pid, c0.flags & CORE.ACCEL_CLIENT_OWNER, c0.handles) == (owner.pid, 1, 1)  # type: ignore[attr-defined]
    assert (c1.pid, CORE.ffi.string(c1.comm)) == (mon.pid, b"smi")  # type: ignore[attr-defined]


def test_info_clients_window_of_one_entry(rig: Rig) -> None:
    """An array query answers the elements from ``index`` that the buffer takes;
    ``actual_size`` counts all of them from ``index`` on; past the end is empty."""
    p = rig.process()
    fds = [p.open("/dev/accel/accel0") for _ in range(5)]
    size = CORE.sizeof("struct accel_info_client")
    out = p.alloc(2 * size)
    out.view[:] = b"\xff" * (2 * size)
    a = CORE.new(
        "struct accel_info",
        op=CORE.ACCEL_INFO_CLIENTS,
        return_pointer=out.addr,
        return_size=size + 8,  # one element and a bit: only the whole element is written
        index=3,
    )
    p.ioctl(fds[0], CORE.ACCEL_IOCTL_INFO, a)
    assert a.actual_size == 2 * size
    entry = CORE.from_bytes("struct accel_info_client", bytes(out.view[:size]))
    assert entry.client_id == p.task.files.get(fds[3]).client_id  # type: ignore[attr-defined]
    assert bytes(out.view[size:]) == b"\xff" * size
    a.index = 9
    p.ioctl(fds[0], CORE.ACCEL_IOCTL_INFO, a)
    assert a.actual_size == 0


def test_info_size_negotiation(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    a = CORE.new("struct accel_info", op=CORE.ACCEL_INFO_STATUS)
    p.ioctl(fd, CORE.ACCEL_IOCTL_INFO, a)
    assert a.actual_size == CORE.sizeof("struct accel_info_status")
    out = p.alloc(64)
    out.view[:] = b"\xff" * 64
    a = CORE.new(
        "struct accel_info", op=CORE.ACCEL_INFO_STATUS, return_pointer=out.addr, return_size=4
    )
    p.ioctl(fd, CORE.ACCEL_IOCTL_INFO, a)
    assert bytes(out.view[4:8]) == b"\xff" * 4  # nothing past return_size


@pytest.mark.parametrize("field", ["flags", "pad"])
def test_info_nonzero_reserved_is_einval(rig: Rig, field: str) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    a = CORE.new("struct accel_info", op=CORE.ACCEL_INFO_STATUS, **{field: 1})
    with pytest.raises(OSError) as e:
        p.ioctl(fd, CORE.ACCEL_IOCTL_INFO, a)
    assert e.value.errno == errno.EINVAL


def test_info_unknown_op_is_einval(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    with pytest.raises(OSError) as e:
        p.ioctl(fd, CORE.ACCEL_IOCTL_INFO, CORE.new("struct accel_info", op=0x77))
    assert e.value.errno == errno.EINVAL


def test_info_bad_return_pointer_is_efault(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    a = CORE.new(
        "struct accel_info", op=CORE.ACCEL_INFO_STATUS, return_pointer=0x1000, return_size=32
    )
    with pytest.raises(OSError) as e:
        p.ioctl(fd, CORE.ACCEL_IOCTL_INFO, a)
    assert e.value.errno == errno.EFAULT


def test_info_driver_query(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    c = _info(p, fd, V.VACCEL_INFO_COUNTERS, "struct vaccel_info_counters")
    assert (c.submitted, c.completed) == (0, 0)  # type: ignore[attr-defined]


def test_info_status_answers_after_unplug(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    rig.sub.remove_device(rig.dev)
    rig.expect.update(minors=-1, devices=-1)
    s = _info(p, fd, CORE.ACCEL_INFO_STATUS, "struct accel_info_status")
    assert s.status == CORE.ACCEL_STATUS_UNPLUGGED  # type: ignore[attr-defined]
    with pytest.raises(OSError) as e:
        _info(p, fd, CORE.ACCEL_INFO_CLIENTS, "struct accel_info_client")
    assert e.value.errno == errno.ENODEV


def test_sysfs_paths_and_attributes(rig: Rig) -> None:
    tree = rig.sub.sysfs
    assert tree.read("/sys/class/accel/accel0/dev") == "261:0\n"
    assert tree.find("/sys/class/accel/accel1").devpath == "/devices/virtual/accel/accel1"
    assert tree.read("/sys/class/accel/accel0/jobs_submitted") == "0\n"
    with pytest.raises(OSError) as e:
        tree.write("/sys/class/accel/accel0/dev", "1:1")
    assert e.value.errno == errno.EACCES
    tree.write("/sys/class/accel/accel0/reset", "1")
    assert rig.dev.reset_count == 1


def test_uevents_on_add_and_remove(rig: Rig) -> None:
    seen: list[tuple[str, str]] = []
    rig.sub.sysfs.subscribe(lambda ev: seen.append((ev.action, ev.env.get("DEVNAME", ""))))
    dev = rig.sub.create_device(rig.driver)
    rig.sub.remove_device(dev)
    assert seen[0] == ("add", "/dev/accel/accel2") and ("remove", "/dev/accel/accel2") in seen
