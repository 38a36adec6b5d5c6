"""Capability layouts: power management, PCI Express, MSI-X and AER, as field tables.

Each function returns ``(size, fields)`` with offsets relative to the capability,
ready for :meth:`ConfigSpace.add_capability`. Only the registers a driver or a
tool touches are described; the rest of each structure reads as zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ConfigField

__all__ = [
    "AER",
    "MSIX",
    "PCIE",
    "PM",
    "CapLayout",
    "aer_capability",
    "msix_capability",
    "pcie_capability",
    "pm_capability",
]


@dataclass(frozen=True, slots=True)
class CapLayout:
    """A capability's size and its registers (relative offsets)."""

    size: int
    fields: tuple[ConfigField, ...]


class PM:
    """Power-management control/status bits."""

    STATE_MASK = 0x0003
    PME_ENABLE = 0x0100
    PME_STATUS = 0x8000


class PCIE:
    """PCI Express capability bits."""

    DEVCAP_FLR = 0x1000_0000
    DEVCTL_BCR_FLR = 0x8000
    #: Device status: correctable / non-fatal / fatal / unsupported request detected.
    DEVSTA_CED = 0x0001
    DEVSTA_NFED = 0x0002
    DEVSTA_FED = 0x0004
    DEVSTA_URD = 0x0008


class MSIX:
    """MSI-X message control bits and table layout."""

    TABLE_SIZE_MASK = 0x07FF
    FUNCTION_MASK = 0x4000
    ENABLE = 0x8000
    ENTRY_SIZE = 16
    VECTOR_CTRL_MASKBIT = 0x1


class AER:
    """AER uncorrectable/correctable status bits used by fault injection."""

    UNCOR_COMPLETION_TIMEOUT = 0x0000_4000
    UNCOR_UNSUPPORTED_REQUEST = 0x0010_0000
    UNCOR_INTERNAL = 0x0040_0000
    COR_RECEIVER_ERROR = 0x0000_0001
    COR_INTERNAL = 0x0000_4000


def pm_capability() -> CapLayout:
    """Power management capability (id 0x01), version 3, D0..D3hot."""
    return CapLayout(
        8,
        (
            ConfigField("pmc", 0x02, 2, default=0x0003),
            ConfigField(
                "pmcsr",
                0x04,
                2,
                rw=PM.STATE_MASK | PM.PME_ENABLE,
                w1c=PM.PME_STATUS,
                default=0x0008,
            ),
        ),
    )


def pcie_capability(*, flr: bool = True) -> CapLayout:
    """PCI Express capability (id 0x10), version 2, endpoint.

    Args:
        flr: Whether the function advertises function-level reset.
    """
    devcap = 0x0000_0000 | (PCIE.DEVCAP_FLR if flr else 0)
    status_w1c = PCIE.DEVSTA_CED | PCIE.DEVSTA_NFED | PCIE.DEVSTA_FED | PCIE.DEVSTA_URD
    return CapLayout(
        0x3C,
        (
            ConfigField("flags", 0x02, 2, default=0x0002),  # version 2, PCI Express endpoint
            ConfigField("devcap", 0x04, 4, default=devcap),
            # Bits 0-3 error reporting enables, 4 relaxed ordering, 5-7 payload, 8-11
            # ext tag/phantom/aux/nosnoop, 12-14 read request size; 15 initiates FLR.
            ConfigField("devctl", 0x08, 2, rw=0xFFFF, default=0x2810),
            ConfigField("devsta", 0x0A, 2, w1c=status_w1c),
            ConfigField("lnkcap", 0x0C, 4, default=0x0000_0481),  # 2.5 GT/s x8
            ConfigField("lnkctl", 0x10, 2, rw=0x0FFB),
            ConfigField("lnksta", 0x12, 2, default=0x1081),
            ConfigField("devcap2", 0x24, 4),
            ConfigField("devctl2", 0x28, 2, rw=0x041F),
        ),
    )


def msix_capability(vectors: int, table_bar: int, table_offset: int, pba_offset: int) -> CapLayout:
    """MSI-X capability (id 0x11) with table and PBA in BAR ``table_bar``.

    Args:
        vectors: Table entries (1..2048).
        table_bar: BAR index holding the table and the pending-bit array.
        table_offset: Table offset in that BAR (8-byte aligned).
        pba_offset: PBA offset in that BAR (8-byte aligned).
    """
    return CapLayout(
        12,
        (
            ConfigField(
                "control", 0x02, 2, rw=MSIX.ENABLE | MSIX.FUNCTION_MASK, default=vectors - 1
            ),
            ConfigField("table", 0x04, 4, default=table_offset | table_bar),
            ConfigField("pba", 0x08, 4, default=pba_offset | table_bar),
        ),
    )


def aer_capability() -> CapLayout:
    """Advanced Error Reporting extended capability (id 0x0001), version 2."""
    uncor = 0x03FF_F030  # the defined uncorrectable error bits
    cor = 0x0000_F1C1
    return CapLayout(
        0x48,
        (
            ConfigField("uncor_status", 0x04, 4, w1c=uncor),
            ConfigField("uncor_mask", 0x08, 4, rw=uncor),
            ConfigField("uncor_severity", 0x0C, 4, rw=uncor, default=0x0046_2030),
            ConfigField("cor_status", 0x10, 4, w1c=cor),
            ConfigField("cor_mask", 0x14, 4, rw=cor, default=0x0000_2000),
            ConfigField("cap_control", 0x18, 4, rw=0x0000_0140),
        ),
    )
