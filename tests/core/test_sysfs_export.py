"""sysfs as files, and as a umockdev description that real libudev consumers read."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from accelcore.machine import Machine
from accelcore.pci import PciDeviceId
from accelcore.sysfs_export import materialize, umockdev_description
from accelcore.testing import VAccelDriver


class EduAccel(VAccelDriver):
    name = "eduaccel"
    pci_ids = (PciDeviceId(0x1234, 0x11E8),)


def _machine() -> Machine:
    m = Machine()
    m.bus.populate([{"model": "edu", "address": "0000:00:10.0"}])
    m.add_driver(EduAccel())
    return m


def test_materialize_writes_attributes_and_views(tmp_path: Path) -> None:
    root = materialize(_machine().sysfs, tmp_path / "sys")
    node = root / "devices/pci0000:00/0000:00:10.0/accel/accel0"
    assert (node / "dev").read_text() == "261:0\n"
    assert (root / "class/accel/accel0/dev").read_text() == "261:0\n"
    assert (root / "bus/pci/devices/0000:00:10.0/vendor").read_text() == "0x1234\n"
    assert (node / "device").resolve() == (root / "devices/pci0000:00/0000:00:10.0").resolve()
    assert "DEVNAME=/dev/accel/accel0" in (node / "uevent").read_text()


def test_umockdev_description_has_accel_and_pci_paragraphs() -> None:
    text = umockdev_description(_machine().sysfs)
    assert "P: /devices/pci0000:00/0000:00:10.0/accel/accel0\nN: accel/accel0" in text
    assert "E: MAJOR=261" in text and "A: vendor=0x1234" in text


@pytest.mark.skipif(
    shutil.which("umockdev-run") is None,
    reason="umockdev-run is not installed (Debian package umockdev)",
)
def test_pyudev_sees_simulated_devices_under_umockdev(tmp_path: Path) -> None:
    desc = tmp_path / "machine.umockdev"
    desc.write_text(umockdev_description(_machine().sysfs))
    script = textwrap.dedent("""
        import pyudev
        ctx = pyudev.Context()
        for d in ctx.list_devices(subsystem="accel"):
            parent = d.find_parent("pci")
            print(d.sys_name, d.device_node, parent.sys_name,
                  parent.attributes.asstring("vendor"))
    """)
    out = subprocess.run(
        ["umockdev-run", "--device", str(desc), "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["accel0", "/dev/accel/accel0", "0000:00:10.0", "0x1234"]


def test_control_nodes_have_a_device_number_like_the_others() -> None:
    """A control node is a char device too (``accel_controlDN`` is major 511, minor
    N), so libudev consumers and ``accelctl run --udev`` see it with MAJOR/MINOR."""
    from accelcore import DriverFeature, Subsystem
    from accelcore.device import ACCEL_CONTROL_MAJOR
    from accelcore.testing import make_driver

    sub = Subsystem()
    drv = make_driver("ctl", features=DriverFeature.CONTROL_NODE)
    sub.register_driver(drv)
    dev = sub.create_device(drv)
    assert sub.sysfs.read("/sys/class/accel/accel_controlD0/dev") == f"{ACCEL_CONTROL_MAJOR}:0\n"
    assert sub.nodes[dev.control_path].devnum == (ACCEL_CONTROL_MAJOR, dev.minor)
    text = umockdev_description(sub.sysfs)
    para = next(p for p in text.split("\n\n") if "N: accel/accel_controlD0" in p)
    assert f"E: MAJOR={ACCEL_CONTROL_MAJOR}" in para and "E: MINOR=0" in para
