"""The structural interface a PCI driver implements (``struct pci_driver``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from .ids import PciDeviceId

if TYPE_CHECKING:
    from .function import PciFunction

__all__ = ["PciDriver"]


class PciDriver(Protocol):
    """A PCI driver, matched to functions by its id table.

    Only ``name``, ``id_table``, ``probe`` and ``remove`` are required. The bus
    looks the optional callbacks up with ``getattr``:

    * ``reset_prepare(fn)`` / ``reset_done(fn)``: around an FLR or hot reset;
    * ``error_detected(fn, severity)``: an AER-like error was reported
      (severity is an :class:`~accelcore.pci.kinds.ErrorSeverity`).
    """

    @property
    def name(self) -> str:
        """The driver's unique name (what ``driver_override`` names)."""
        ...

    @property
    def id_table(self) -> Sequence[PciDeviceId]:
        """The functions it drives."""
        ...

    def probe(self, fn: PciFunction) -> None:
        """Take over ``fn``; raise an ``AccelError`` to refuse it (it stays unbound)."""
        ...

    def remove(self, fn: PciFunction) -> None:
        """Release ``fn`` (unbind, orderly or surprise removal)."""
        ...
