"""Enumerations shared by the bus, functions and device models: resets and faults."""

from __future__ import annotations

import enum

__all__ = ["ErrorSeverity", "FaultKind", "ResetKind"]


class ResetKind(enum.Enum):
    """How a function is reset.

    ``FLR`` resets one function (PCIe function-level reset); ``HOT`` is a
    secondary-bus (hot) reset, which resets every function of the slot.
    """

    FLR = "flr"
    HOT = "hot"


class FaultKind(enum.Enum):
    """Faults :meth:`PciBus.inject_fault` can inject.

    * ``HANG``: the device's engines stop completing work (``SimDevice.hung``);
      a reset recovers it.
    * ``ERROR``: an AER-like error; the bound driver's ``error_detected`` runs.
    * ``SURPRISE_REMOVAL``: the card vanishes: MMIO reads all-ones, DMA faults,
      the driver's ``remove`` runs, the sysfs node goes.
    * ``SLOW_DMA``: DMA takes ``factor`` times longer (``SimDevice.dma_slowdown``).
    """

    HANG = "hang"
    ERROR = "error"
    SURPRISE_REMOVAL = "surprise_removal"
    SLOW_DMA = "slow_dma"


class ErrorSeverity(enum.Enum):
    """Severity of an injected error, as AER classifies it."""

    CORRECTABLE = "correctable"
    NONFATAL = "nonfatal"
    FATAL = "fatal"
