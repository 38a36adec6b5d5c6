"""Id-table matching with PCI_ANY_ID and class masks."""

from __future__ import annotations

import pytest

from accelcore.errors import InvalidArgument
from accelcore.pci import PCI_ANY_ID, PciDeviceId
from accelcore.pci.ids import DeviceIdentity, match_id_table

EDU = DeviceIdentity(0x1234, 0x11E8, 0x1AF4, 0x1100, 0x00FF00)


def test_exact_vendor_device_matches() -> None:
    assert PciDeviceId(0x1234, 0x11E8).matches(EDU)


def test_other_device_does_not_match() -> None:
    assert not PciDeviceId(0x1234, 0x11E9).matches(EDU)


def test_any_vendor_and_device_match() -> None:
    assert PciDeviceId(PCI_ANY_ID, PCI_ANY_ID).matches(EDU)


def test_subsystem_must_match_when_given() -> None:
    assert PciDeviceId(0x1234, 0x11E8, 0x1AF4, 0x1100).matches(EDU)
    assert not PciDeviceId(0x1234, 0x11E8, 0x1AF4, 0x1101).matches(EDU)


def test_class_mask_matches_base_class_only() -> None:
    entry = PciDeviceId.for_class(0x00AB00, 0xFF0000)  # only base class 0x00 compared
    assert entry.matches(EDU)


def test_class_mask_mismatch() -> None:
    assert not PciDeviceId.for_class(0x120000, 0xFFFF00).matches(EDU)


def test_zero_class_mask_ignores_class() -> None:
    assert PciDeviceId(0x1234, 0x11E8, class_=0x120000).matches(EDU)


def test_match_id_table_returns_first_matching_entry() -> None:
    table = [PciDeviceId(0x1111, 1), PciDeviceId(0x1234, PCI_ANY_ID, driver_data=7)]
    found = match_id_table(table, EDU)
    assert found is not None and found.driver_data == 7


def test_match_id_table_none() -> None:
    assert match_id_table([PciDeviceId(0x1111, 1)], EDU) is None


def test_rejects_vendor_wider_than_16_bits() -> None:
    with pytest.raises(InvalidArgument, match="vendor 65536"):
        PciDeviceId(0x10000, 1)


def test_rejects_class_wider_than_24_bits() -> None:
    with pytest.raises(InvalidArgument, match="class_"):
        PciDeviceId(1, 1, class_=0x1000000)
