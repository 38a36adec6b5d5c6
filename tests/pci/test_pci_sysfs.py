"""sysfs nodes of PCI functions: attributes, uevent properties, the parent chain."""

from __future__ import annotations

import pytest

from accelcore.errors import InvalidArgument, PermissionDenied


def test_node_location_and_parent(scratch, tree) -> None:
    node = scratch.sysfs
    assert node.devpath == "/devices/pci0000:00/0000:00:03.0"
    assert [n.name for n in node.ancestry()] == ["0000:00:03.0", "pci0000:00"]
    assert tree.find("/sys/bus/pci/devices/0000:00:03.0") is node


@pytest.mark.parametrize(
    ("attr", "text"),
    [
        ("vendor", "0x1de5"),
        ("device", "0x0001"),
        ("subsystem_vendor", "0x1de5"),
        ("subsystem_device", "0x0100"),
        ("class", "0x120000"),
        ("revision", "0x02"),
        ("numa_node", "-1"),
        ("irq", "19"),
        ("enable", "1"),
        ("driver_override", "(null)"),
    ],
)
def test_attribute_values(scratch, attr: str, text: str) -> None:
    assert scratch.sysfs.read(attr) == text + "\n"


def test_resource_lists_bars_and_rom(scratch) -> None:
    lines = scratch.sysfs.read("resource").splitlines()
    assert len(lines) == 7
    start, end, flags = (int(x, 16) for x in lines[0].split())
    assert (start, end - start + 1, flags) == (scratch.bar(0).address, 0x1000, 0x40200)
    assert int(lines[2].split()[2], 16) == 0x14220C  # 64-bit prefetchable
    assert lines[3] == " ".join(["0x" + "0" * 16] * 3)  # upper half of BAR2


def test_uevent_properties_formatted_as_linux(scratch, tree) -> None:
    env = tree.emit("change", scratch.sysfs).env
    assert env["PCI_CLASS"] == "120000"
    assert env["PCI_ID"] == "1DE5:0001"
    assert env["PCI_SUBSYS_ID"] == "1DE5:0100"
    assert env["PCI_SLOT_NAME"] == "0000:00:03.0"
    assert env["MODALIAS"] == "pci:v00001DE5d00000001sv00001DE5sd00000100bc12sc00i00"
    assert env["SUBSYSTEM"] == "pci"


def test_driver_override_store_and_show(scratch) -> None:
    scratch.sysfs.write("driver_override", "vfio-pci\n")
    assert scratch.driver_override == "vfio-pci"
    assert scratch.sysfs.read("driver_override") == "vfio-pci\n"


def test_enable_store(bus, scratch_cls) -> None:
    fn = bus.hot_add(scratch_cls())
    fn.sysfs.write("enable", "1")
    assert fn.is_enabled


def test_enable_store_rejects_non_number(scratch) -> None:
    with pytest.raises(InvalidArgument, match="'yes'"):
        scratch.sysfs.write("enable", "yes")


def test_remove_store_removes_function(bus, scratch, tree) -> None:
    node = scratch.sysfs
    tree.write("/sys/bus/pci/devices/0000:00:03.0/remove", "1")
    assert node not in tree and not scratch.present


def test_remove_is_write_only(scratch) -> None:
    with pytest.raises(PermissionDenied):
        scratch.sysfs.read("remove")


def test_vendor_is_read_only(scratch) -> None:
    with pytest.raises(PermissionDenied):
        scratch.sysfs.write("vendor", "0x1")


def test_driver_attribute_of_node(bus, scratch, driver_cls) -> None:
    bus.register_driver(driver_cls())
    assert scratch.sysfs.uevent_env()["DRIVER"] == "rec"
