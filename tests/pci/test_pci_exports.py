"""The public API of accelcore.pci does not change by accident."""

from __future__ import annotations

import accelcore.pci as pci

EXPECTED = {
    "PCI_ANY_ID",
    "Bar",
    "BarKind",
    "BarSpec",
    "ConfigField",
    "ConfigSpace",
    "DmaDirection",
    "DmaError",
    "DmaFault",
    "DmaFaultReason",
    "DmaSpace",
    "EduDevice",
    "ErrorSeverity",
    "FaultKind",
    "InjectedFault",
    "IrqMode",
    "IrqType",
    "MmioFault",
    "MmioFaultReason",
    "MmioRegion",
    "PciAddress",
    "PciBus",
    "PciDeviceId",
    "PciDriver",
    "PciFunction",
    "ResetKind",
    "SimDevice",
    "register_device_model",
}


def test_all_is_stable() -> None:
    assert set(pci.__all__) == EXPECTED


def test_every_export_exists() -> None:
    assert all(hasattr(pci, name) for name in pci.__all__)
