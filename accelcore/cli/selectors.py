"""Device selection, shared by every accelctl command.

Grammar (IGT's ``--device`` filters, plus accel names)::

    all                                   every device
    accel0 | 0                            by name, or by minor
    /dev/accel/accel0 | accel:/dev/accel/accel0
                                          by device node
    sys:/sys/class/accel/accel0           by sysfs path (its last component)
    0000:00:10.0 | 00:10.0                by PCI address (domain 0 when omitted)
    pci:vendor=0x1da3,device=0x0001,card=0,slot=0000:00:10.0
                                          PCI filters, hex ids with or without
                                          0x; card=N picks the Nth match

The default is the ``ACCEL_DEVICE`` environment variable (like ``IGT_DEVICE``).
A malformed selector is a usage error; one that matches nothing is a runtime
error whose message is ``no accel device '<selector>'``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .model import DeviceSummary

__all__ = [
    "ENV_VAR",
    "NoDeviceError",
    "Selector",
    "SelectorSyntaxError",
    "parse_selector",
    "select",
]

#: The environment variable holding the default selector.
ENV_VAR = "ACCEL_DEVICE"

_PCI_ADDRESS = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-1]?[0-9a-fA-F])"
    r"\.(?P<fn>[0-7])$"
)
_PCI_KEYS = frozenset({"vendor", "device", "card", "slot"})


class SelectorSyntaxError(ValueError):
    """The selector text does not follow the grammar (a usage error)."""


class NoDeviceError(LookupError):
    """The selector matched no device (a runtime error)."""

    def __init__(self, text: str) -> None:
        super().__init__(f"no accel device {text!r}")


def _normalize_pci(text: str) -> str | None:
    m = _PCI_ADDRESS.match(text)
    if m is None:
        return None
    domain = m["domain"] or "0000"
    return f"{domain}:{m['bus']}:{int(m['dev'], 16):02x}.{m['fn']}".lower()


def _hex_id(key: str, value: str) -> int:
    try:
        number = int(value, 16)
    except ValueError:
        raise SelectorSyntaxError(f"pci filter {key}={value!r} is not a hex id") from None
    if not 0 <= number <= 0xFFFF:
        raise SelectorSyntaxError(f"pci filter {key}={value!r} is not a 16-bit id")
    return number


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed selector. Unset fields match anything."""

    text: str
    every: bool = False
    name: str | None = None
    minor: int | None = None
    node: str | None = None
    pci_address: str | None = None
    vendor: int | None = None
    device: int | None = None
    card: int | None = None

    def matches(self, dev: DeviceSummary) -> bool:
        """Whether ``dev`` passes every field that is set."""
        checks = (
            (self.name, dev.name),
            (self.minor, dev.minor),
            (self.node, dev.node),
            (self.pci_address, dev.pci_address.lower() if dev.pci_address else None),
            (self.vendor, dev.vendor),
            (self.device, dev.device),
        )
        return all(want is None or want == have for want, have in checks)


def _parse_pci_filter(text: str, body: str) -> Selector:
    fields: dict[str, str] = {}
    for part in filter(None, body.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in _PCI_KEYS:
            raise SelectorSyntaxError(
                f"pci filter {part!r}: use key=value with keys {sorted(_PCI_KEYS)}"
            )
        fields[key] = value
    if not fields:
        raise SelectorSyntaxError(f"pci filter {text!r} has no keys")
    slot = None
    if "slot" in fields:
        slot = _normalize_pci(fields["slot"])
        if slot is None:
            raise SelectorSyntaxError(f"pci filter slot={fields['slot']!r} is not a PCI address")
    card = None
    if "card" in fields:
        if not fields["card"].isdigit():
            raise SelectorSyntaxError(f"pci filter card={fields['card']!r} is not a number")
        card = int(fields["card"])
    return Selector(
        text,
        pci_address=slot,
        vendor=_hex_id("vendor", fields["vendor"]) if "vendor" in fields else None,
        device=_hex_id("device", fields["device"]) if "device" in fields else None,
        card=card,
    )


def parse_selector(text: str) -> Selector:
    """Parse selector ``text`` (see the module docstring).

    Raises:
        SelectorSyntaxError: the text is empty or malformed.
    """
    text = text.strip()
    if not text:
        raise SelectorSyntaxError("empty device selector")
    if text == "all":
        return Selector(text, every=True)
    if text.startswith("pci:"):
        return _parse_pci_filter(text, text[4:])
    if text.startswith("accel:"):
        text_node = text[6:]
        if not text_node.startswith("/dev/"):
            raise SelectorSyntaxError(f"{text!r}: accel: takes a /dev path")
        return Selector(text, node=text_node)
    if text.startswith("/dev/"):
        return Selector(text, node=text)
    if text.startswith(("sys:", "/sys/")):
        path = text.removeprefix("sys:").rstrip("/")
        return Selector(text, name=path.rsplit("/", 1)[-1])
    if text.isdigit():
        return Selector(text, minor=int(text))
    address = _normalize_pci(text)
    if address is not None:
        return Selector(text, pci_address=address)
    if not re.fullmatch(r"[A-Za-z][\w.:-]*", text):
        raise SelectorSyntaxError(f"{text!r} is not a device selector")
    return Selector(text, name=text)


def select(devices: Sequence[DeviceSummary], selector: Selector | str) -> list[DeviceSummary]:
    """The devices ``selector`` picks, in the order given.

    Raises:
        SelectorSyntaxError: ``selector`` is malformed text.
        NoDeviceError: it matches nothing (``all`` matching nothing is an empty list).
    """
    sel = parse_selector(selector) if isinstance(selector, str) else selector
    found = [d for d in devices if sel.every or sel.matches(d)]
    if sel.card is not None:
        found = found[sel.card : sel.card + 1]
    if not found and not sel.every:
        raise NoDeviceError(sel.text)
    return found
