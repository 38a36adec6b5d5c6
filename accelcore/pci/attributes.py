"""A PCI function's sysfs directory: its attributes and its uevent properties.

The attribute set and formats follow ``drivers/pci/pci-sysfs.c``; the uevent
properties follow ``pci_uevent`` (``PCI_CLASS=%04X``, ``PCI_ID=%04X:%04X``,
``MODALIAS=pci:v%08Xd%08X…``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import InvalidArgument
from ..sysfs import Attribute, SysfsNode
from .bar import BarKind
from .kinds import ResetKind

if TYPE_CHECKING:
    from .bus import PciBus
    from .function import PciFunction

__all__ = ["build_node", "modalias", "resource_text", "uevent_env"]

# include/linux/ioport.h resource flags, as `resource` prints them.
_IORESOURCE_IO = 0x100
_IORESOURCE_MEM = 0x200
_IORESOURCE_PREFETCH = 0x2000
_IORESOURCE_SIZEALIGN = 0x40000
_IORESOURCE_MEM_64 = 0x100000
_RESOURCE_LINES = 7  # six BARs and the expansion ROM


def modalias(fn: PciFunction) -> str:
    """The ``pci:v…d…sv…sd…bc…sc…i…`` alias udev matches modules against."""
    cls = fn.class_code
    return (
        f"pci:v{fn.vendor:08X}d{fn.device:08X}sv{fn.subsystem_vendor:08X}"
        f"sd{fn.subsystem_device:08X}bc{cls >> 16:02X}sc{(cls >> 8) & 0xFF:02X}i{cls & 0xFF:02X}"
    )


def uevent_env(fn: PciFunction) -> dict[str, str]:
    """The PCI properties of every uevent of ``fn``."""
    return {
        "PCI_CLASS": f"{fn.class_code:04X}",
        "PCI_ID": f"{fn.vendor:04X}:{fn.device:04X}",
        "PCI_SUBSYS_ID": f"{fn.subsystem_vendor:04X}:{fn.subsystem_device:04X}",
        "PCI_SLOT_NAME": str(fn.address),
        "MODALIAS": modalias(fn),
    }


def resource_text(fn: PciFunction) -> str:
    """The ``resource`` file: ``start end flags`` per BAR and the ROM."""
    lines = []
    for index in range(_RESOURCE_LINES):
        bar = fn.bars.get(index)
        if bar is None or not bar.address:
            lines.append(f"0x{0:016x} 0x{0:016x} 0x{0:016x}")
            continue
        if bar.kind is BarKind.IO:
            flags = _IORESOURCE_IO | _IORESOURCE_SIZEALIGN | bar.spec.flags
        else:
            flags = _IORESOURCE_MEM | _IORESOURCE_SIZEALIGN | bar.spec.flags
            flags |= _IORESOURCE_PREFETCH if bar.spec.prefetchable else 0
            flags |= _IORESOURCE_MEM_64 if bar.kind is BarKind.MEM64 else 0
        start = bar.address
        lines.append(f"0x{start:016x} 0x{start + bar.size - 1:016x} 0x{flags:016x}")
    return "\n".join(lines)


def _parse_bool(attr: str, value: str) -> bool:
    try:
        return int(value.strip(), 0) != 0
    except ValueError:
        raise InvalidArgument(f"{attr}: {value!r} is not a number") from None


def build_node(fn: PciFunction, parent: SysfsNode, bus: PciBus) -> SysfsNode:
    """Create ``fn``'s node below the host-bridge node ``parent`` (not yet in a tree)."""
    node = SysfsNode(
        str(fn.address), parent=parent, subsystem="pci", kind="bus", env=uevent_env(fn)
    )

    def enable_store(value: str) -> None:
        if _parse_bool("enable", value):
            fn.enable_device()
        elif fn.is_enabled:
            fn.disable_device()

    def override_store(value: str) -> None:
        bus.set_driver_override(fn, value)

    def remove_store(value: str) -> None:
        if _parse_bool("remove", value):
            bus.remove(fn)

    def reset_store(value: str) -> None:
        if _parse_bool("reset", value):
            bus.reset(fn, ResetKind.FLR)

    hexes: tuple[tuple[str, Callable[[], str]], ...] = (
        ("vendor", lambda: f"0x{fn.vendor:04x}"),
        ("device", lambda: f"0x{fn.device:04x}"),
        ("subsystem_vendor", lambda: f"0x{fn.subsystem_vendor:04x}"),
        ("subsystem_device", lambda: f"0x{fn.subsystem_device:04x}"),
        ("class", lambda: f"0x{fn.class_code:06x}"),
        ("revision", lambda: f"0x{fn.revision:02x}"),
        ("numa_node", lambda: "-1"),
        ("resource", lambda: resource_text(fn)),
        ("irq", lambda: str(fn.irq_number)),
    )
    for name, show in hexes:
        node.add_attribute(Attribute.ro(name, show))
    node.add_attribute(Attribute.rw("enable", lambda: "1" if fn.is_enabled else "0", enable_store))
    node.add_attribute(
        Attribute.rw("driver_override", lambda: fn.driver_override or "(null)", override_store)
    )
    node.add_attribute(Attribute.wo("remove", remove_store))
    node.add_attribute(Attribute.wo("reset", reset_store))
    return node
