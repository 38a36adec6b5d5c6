"""PCI addresses: the ``dddd:bb:dd.f`` value type that names every function."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidArgument

__all__ = ["PciAddress"]

# Hex fields of any width; ranges are checked separately so the error names the field.
_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,4}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<device>[0-9a-fA-F]{1,2})\.(?P<function>[0-7])$"
)

_LIMITS = (("domain", 0xFFFF), ("bus", 0xFF), ("device", 0x1F), ("function", 0x7))


@dataclass(frozen=True, slots=True, order=True)
class PciAddress:
    """A PCI function address (segment/domain, bus, device, function).

    Orders as Linux enumerates: by domain, bus, device, then function.

    Args:
        domain: PCI segment, 0..0xffff.
        bus: Bus number, 0..255.
        device: Device (slot) number, 0..31.
        function: Function number, 0..7.

    Raises:
        InvalidArgument: a field is out of range.
    """

    domain: int
    bus: int
    device: int
    function: int

    def __post_init__(self) -> None:
        for name, limit in _LIMITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
                raise InvalidArgument(f"PCI {name} {value!r} is outside 0..{limit:#x}")

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        """Parse ``dddd:bb:dd.f`` (or ``bb:dd.f``, domain 0), as ``lspci -s`` accepts.

        Args:
            text: The address text.

        Returns:
            The address.

        Raises:
            InvalidArgument: the text is not a well-formed, in-range address.
        """
        if not isinstance(text, str):
            raise InvalidArgument(f"PCI address {text!r} is not a string")
        m = _RE.match(text.strip())
        if m is None:
            raise InvalidArgument(f"PCI address {text!r} is not of the form dddd:bb:dd.f")
        try:
            return cls(
                int(m["domain"] or "0", 16),
                int(m["bus"], 16),
                int(m["device"], 16),
                int(m["function"], 16),
            )
        except InvalidArgument as exc:
            raise InvalidArgument(f"PCI address {text!r}: {exc.strerror}") from None

    @classmethod
    def coerce(cls, value: PciAddress | str) -> PciAddress:
        """Return ``value`` as an address, parsing it if it is text."""
        return value if isinstance(value, PciAddress) else cls.parse(value)

    @property
    def slot(self) -> tuple[int, int, int]:
        """The ``(domain, bus, device)`` a hot reset acts on."""
        return (self.domain, self.bus, self.device)

    @property
    def root_name(self) -> str:
        """The sysfs name of the host bridge above this address (``pci0000:00``)."""
        return f"pci{self.domain:04x}:{self.bus:02x}"

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.device:02x}.{self.function:x}"
