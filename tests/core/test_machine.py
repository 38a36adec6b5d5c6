"""The machine: accel drivers bound to simulated PCI functions."""

from __future__ import annotations

import errno

import pytest

from accelcore import CORE, InvalidArgument, Process
from accelcore.machine import Machine
from accelcore.pci import PciDeviceId
from accelcore.testing import VAccelDriver


class EduAccel(VAccelDriver):
    """vaccel bound to QEMU's edu device (1234:11e8), to exercise PCI binding."""

    name = "eduaccel"
    pci_ids = (PciDeviceId(0x1234, 0x11E8),)


def _machine() -> Machine:
    m = Machine()
    m.bus.populate([{"model": "edu", "address": "0000:00:10.0"}])
    m.add_driver(EduAccel())
    return m


def test_probe_creates_accel_device_under_pci_parent() -> None:
    m = _machine()
    dev = m.accel_device("0000:00:10.0")
    assert dev.sysfs is not None
    assert dev.sysfs.devpath == "/devices/pci0000:00/0000:00:10.0/accel/accel0"
    assert m.sysfs.read("/sys/class/accel/accel0/dev") == "261:0\n"
    p = Process(m.subsystem)
    out = p.alloc(256)
    fd = p.open("/dev/accel/accel0")
    a = CORE.new(
        "struct accel_info", op=CORE.ACCEL_INFO_DEVICE, return_pointer=out.addr, return_size=256
    )
    p.ioctl(fd, CORE.ACCEL_IOCTL_INFO, a)
    info = CORE.from_bytes("struct accel_info_device", bytes(out.view[:104]))
    assert CORE.ffi.string(info.bus_id) == b"0000:00:10.0"
    assert (info.vendor, info.device) == (0x1234, 0x11E8)


def test_surprise_removal_gives_enodev_and_frees_at_last_close() -> None:
    m = _machine()
    p = Process(m.subsystem)
    fd = p.open("/dev/accel/accel0")
    m.bus.remove("0000:00:10.0", surprise=True)
    with pytest.raises(OSError) as e:
        p.ioctl(fd, CORE.DRM_IOCTL_VERSION, CORE.new("struct drm_version"))
    assert e.value.errno == errno.ENODEV
    p.exit()
    assert m.subsystem.accounting()["minors"] == 0


def test_flr_resets_the_accel_device() -> None:
    m = _machine()
    fn = m.bus.find("0000:00:10.0")
    events: list[str] = []
    m.sysfs.subscribe(lambda ev: events.append(ev.env.get("REASON", "")))
    m.bus.reset(fn)
    assert m.accel_device(fn).reset_count == 1
    assert "pci" in events  # announced like any other reset


def test_description_with_unknown_section_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown sections"):
        Machine.from_description({"machine": {"drivers": []}, "gpu": []})


def test_description_with_bad_clock_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="clock 'fast'"):
        Machine.from_description({"machine": {"clock": "fast", "drivers": []}})


def test_description_builds_bus_and_drivers() -> None:
    m = Machine.from_description(
        {"machine": {"drivers": ["vaccel"]}, "pci": [{"model": "edu", "count": 2}]}
    )
    assert len(m.bus.functions()) == 2 and "vaccel" in m.subsystem.drivers


def test_cancelled_timers_do_not_accumulate() -> None:
    from accelcore import VirtualClock

    clock = VirtualClock()
    with clock.lock:
        for i in range(10_000):
            clock.call_later(10**9 + i, lambda: None).cancel()
    assert len(clock._timers) < 300 and clock.pending() == 0
