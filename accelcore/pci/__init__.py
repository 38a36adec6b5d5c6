"""Simulated PCI: addresses, config space, BARs, MSI-X/INTx, DMA, hotplug, resets, faults.

The pieces, bottom up:

* :class:`PciAddress`, :class:`PciDeviceId` — value types;
* :class:`ConfigSpace` — config space from a table of field descriptors;
* :class:`Bar` / :class:`MmioRegion` — BARs backed by shared memory, register windows;
* :class:`DmaSpace` — the IOMMU-like address space device DMA goes through;
* :class:`SimDevice` — base class of device models (:class:`EduDevice` is one);
* :class:`PciFunction` — one function, with a Linux-shaped driver API;
* :class:`PciBus` — enumeration, hotplug, binding of :class:`PciDriver`\\ s,
  resets and fault injection, and machine descriptions (:meth:`PciBus.populate`).
"""

from __future__ import annotations

from .address import PciAddress
from .bar import Bar, BarKind, BarSpec, MmioFault, MmioFaultReason, MmioRegion
from .bus import InjectedFault, PciBus
from .config import ConfigField, ConfigSpace
from .device import SimDevice
from .dma import DmaDirection, DmaError, DmaFault, DmaFaultReason, DmaSpace
from .driver import PciDriver
from .edu import EduDevice
from .function import PciFunction
from .ids import PCI_ANY_ID, PciDeviceId
from .irq import IrqMode, IrqType
from .kinds import ErrorSeverity, FaultKind, ResetKind
from .machine import device_models, register_device_model

__all__ = [
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
    "device_models",
    "register_device_model",
]
