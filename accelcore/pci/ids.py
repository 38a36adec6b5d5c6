"""Driver id tables: :class:`PciDeviceId` and Linux's ``PCI_ANY_ID`` matching."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidArgument

__all__ = ["PCI_ANY_ID", "DeviceIdentity", "PciDeviceId", "match_id_table"]

#: Matches any vendor, device, subvendor or subdevice (``(u32)~0`` in Linux).
PCI_ANY_ID = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What a function says about itself in config space; matched against id tables."""

    vendor: int
    device: int
    subvendor: int
    subdevice: int
    class_: int
    revision: int = 0


@dataclass(frozen=True, slots=True)
class PciDeviceId:
    """One entry of a driver's id table (``struct pci_device_id``).

    Args:
        vendor: Vendor id, or :data:`PCI_ANY_ID`.
        device: Device id, or :data:`PCI_ANY_ID`.
        subvendor: Subsystem vendor id, or :data:`PCI_ANY_ID` (the default).
        subdevice: Subsystem device id, or :data:`PCI_ANY_ID` (the default).
        class_: 24-bit class code compared under ``class_mask``.
        class_mask: Which class bits must equal ``class_``; 0 ignores the class.
        driver_data: Opaque value for the driver (per-ASIC variant data).

    Raises:
        InvalidArgument: an id is neither 16-bit nor ``PCI_ANY_ID``, or a class
            value is wider than 24 bits.
    """

    vendor: int
    device: int
    subvendor: int = PCI_ANY_ID
    subdevice: int = PCI_ANY_ID
    class_: int = 0
    class_mask: int = 0
    driver_data: int = 0

    def __post_init__(self) -> None:
        for name in ("vendor", "device", "subvendor", "subdevice"):
            value = getattr(self, name)
            if not isinstance(value, int) or (value != PCI_ANY_ID and not 0 <= value <= 0xFFFF):
                raise InvalidArgument(f"PciDeviceId {name} {value!r} is not 16-bit or PCI_ANY_ID")
        for name in ("class_", "class_mask"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 0xFF_FFFF:
                raise InvalidArgument(f"PciDeviceId {name} {value!r} is not a 24-bit value")

    @classmethod
    def for_class(cls, class_: int, class_mask: int = 0xFF_FFFF) -> PciDeviceId:
        """Match every function of a class (``PCI_DEVICE_CLASS``)."""
        return cls(PCI_ANY_ID, PCI_ANY_ID, class_=class_, class_mask=class_mask)

    def matches(self, ident: DeviceIdentity) -> bool:
        """Whether this entry matches ``ident`` (``pci_match_one_device``)."""
        return (
            self.vendor in (PCI_ANY_ID, ident.vendor)
            and self.device in (PCI_ANY_ID, ident.device)
            and self.subvendor in (PCI_ANY_ID, ident.subvendor)
            and self.subdevice in (PCI_ANY_ID, ident.subdevice)
            and not (self.class_ ^ ident.class_) & self.class_mask
        )


def match_id_table(table: Iterable[PciDeviceId], ident: DeviceIdentity) -> PciDeviceId | None:
    """The first entry of ``table`` matching ``ident``, or ``None``."""
    return next((entry for entry in table if entry.matches(ident)), None)
