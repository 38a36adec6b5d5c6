"""Unregistering a driver (rmmod) is refused with EBUSY while anything of it is
in use — files, mappings, buffers, dma-bufs — and then succeeds; no open file is
ever left pointing at a driver that is gone."""

from __future__ import annotations

import errno

import pytest

from accelcore import CORE, Process, Subsystem, VirtualClock
from accelcore.device import DeviceState
from accelcore.testing import VAccelDriver
from accelcore.testing.vaccel import VACCEL_UAPI as V


@pytest.fixture
def sub() -> Subsystem:
    s = Subsystem(VirtualClock())
    return s


def _loaded(sub: Subsystem) -> tuple[VAccelDriver, dict[str, int]]:
    base = sub.accounting()
    drv = VAccelDriver()
    sub.register_driver(drv)
    sub.create_device(drv)
    return drv, base


def _refused(sub: Subsystem, drv: VAccelDriver) -> str:
    with pytest.raises(OSError) as e:
        sub.unregister_driver(drv)
    assert e.value.errno == errno.EBUSY
    assert sub.drivers.get(drv.name) is drv
    return str(e.value)


def _bo(p: Process, fd: int) -> tuple[int, int]:
    a = V.new("struct vaccel_create_bo", size=4096)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, a)
    return int(a.handle), int(a.mmap_offset)


def _unload_to_baseline(
    sub: Subsystem, drv: VAccelDriver, base: dict[str, int], p: Process
) -> None:
    sub.unregister_driver(drv)
    p.exit()  # its scratch memory
    assert drv.name not in sub.drivers
    assert sub.accounting() == base


def test_open_file_refuses_unregister_and_keeps_working(sub: Subsystem) -> None:
    drv, base = _loaded(sub)
    p = Process(sub)
    fd = p.open("/dev/accel/accel0")
    assert "1 open file(s) of accel0" in _refused(sub, drv)
    assert sub.device(0).state is DeviceState.REGISTERED  # nothing was torn down
    nop = V.new("struct vaccel_nop", value=41)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nop)
    assert nop.result == 42
    p.close(fd)
    _unload_to_baseline(sub, drv, base, p)


def test_mapping_holds_the_driver_after_its_file_is_closed(sub: Subsystem) -> None:
    drv, base = _loaded(sub)
    p = Process(sub)
    fd = p.open("/dev/accel/accel0")
    _, offset = _bo(p, fd)
    m = p.mmap(fd, 4096, offset)
    p.close(fd)
    _refused(sub, drv)
    p.munmap(m)
    _unload_to_baseline(sub, drv, base, p)


def test_dmabuf_holds_the_driver_after_its_exporter_closed(sub: Subsystem) -> None:
    drv, base = _loaded(sub)
    p = Process(sub)
    fd = p.open("/dev/accel/accel0")
    handle, _ = _bo(p, fd)
    ph = CORE.new("struct drm_prime_handle", handle=handle)
    p.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
    p.close(fd)
    assert "buffer or dma-buf" in _refused(sub, drv)
    p.close(ph.fd)
    _unload_to_baseline(sub, drv, base, p)


def test_unplugged_device_with_an_open_file_still_holds_the_driver(sub: Subsystem) -> None:
    drv, base = _loaded(sub)
    p = Process(sub)
    fd = p.open("/dev/accel/accel0")
    sub.remove_device(sub.device(0))
    _refused(sub, drv)
    p.close(fd)
    _unload_to_baseline(sub, drv, base, p)


# -- driver identity: what DRM_IOCTL_VERSION reports ---------------------------------


class _Named(VAccelDriver):
    name = "named"


@pytest.mark.parametrize(
    ("attr", "value"),
    [("name", None), ("name", ""), ("name", "two words"), ("desc", None), ("version", (1, 0))],
)
def test_registration_refuses_an_identity_the_core_cannot_report(
    sub: Subsystem, attr: str, value: object
) -> None:
    drv = _Named()
    setattr(drv, attr, value)
    with pytest.raises(OSError) as e:
        sub.register_driver(drv)
    assert e.value.errno == errno.EINVAL and attr in str(e.value)
    assert sub.drivers == {}


def test_version_reports_a_missing_description_as_empty(sub: Subsystem) -> None:
    drv, base = _loaded(sub)
    drv.desc = None  # type: ignore[assignment]  # a driver that loses it later
    p = Process(sub)
    fd = p.open("/dev/accel/accel0")
    buf = p.alloc(64)
    v = CORE.new("struct drm_version", name=buf.addr, name_len=64, desc=buf.addr, desc_len=64)
    p.ioctl(fd, CORE.DRM_IOCTL_VERSION, v)
    assert v.desc_len == 0 and v.name_len == len("vaccel")
    assert sub.oopses == []
    p.free(buf)
    p.close(fd)
    _unload_to_baseline(sub, drv, base, p)
