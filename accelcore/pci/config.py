"""Configuration space: bytes plus a table of field descriptors.

Every register is a :class:`ConfigField` (offset, width, which bits the host may
write, which are write-1-to-clear, its reset value). The table is folded into
per-byte masks once, so one generic :meth:`ConfigSpace.write` implements all of
them — no ``if reg == …`` ladders. Bytes that no field describes are read-only
zero, as reserved registers are on hardware.

Type-0 header (offsets in hex)::

    00 vendor id | 02 device id | 04 command | 06 status | 08 revision | 09 class
    0c cache line | 0d latency | 0e header type | 0f BIST | 10..27 BAR0..5
    2c subsystem vendor | 2e subsystem id | 30 ROM | 34 cap pointer
    3c interrupt line | 3d interrupt pin | 3e min grant | 3f max latency
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import InvalidArgument

__all__ = [
    "COMMAND",
    "CONFIG_SIZE",
    "EXT_CONFIG_SIZE",
    "STANDARD_HEADER",
    "STATUS",
    "CapId",
    "ConfigField",
    "ConfigSpace",
    "ExtCapId",
    "WriteHook",
]

CONFIG_SIZE = 256
EXT_CONFIG_SIZE = 4096
CAP_START = 0x40
EXT_CAP_START = 0x100


class COMMAND:
    """Command register (0x04) bits."""

    IO = 0x0001
    MEMORY = 0x0002
    MASTER = 0x0004
    PARITY = 0x0040
    SERR = 0x0100
    INTX_DISABLE = 0x0400


class STATUS:
    """Status register (0x06) bits."""

    INTERRUPT = 0x0008
    CAP_LIST = 0x0010
    SIG_TARGET_ABORT = 0x0800
    REC_TARGET_ABORT = 0x1000
    REC_MASTER_ABORT = 0x2000
    SIG_SYSTEM_ERROR = 0x4000
    DETECTED_PARITY = 0x8000
    #: Error bits software clears by writing 1.
    ERRORS = 0xF900


class CapId:
    """Standard capability ids (``PCI_CAP_ID_*``)."""

    PM = 0x01
    MSI = 0x05
    PCIE = 0x10
    MSIX = 0x11


class ExtCapId:
    """Extended capability ids (``PCI_EXT_CAP_ID_*``)."""

    AER = 0x0001


@dataclass(frozen=True, slots=True)
class ConfigField:
    """One register of config space.

    Args:
        name: Dotted name (``command``, ``msix.control``).
        offset: Byte offset (absolute, or relative inside a capability).
        width: 1, 2 or 4 bytes.
        rw: Bits the host may write.
        w1c: Bits the host clears by writing 1 (status bits).
        default: The reset value.
    """

    name: str
    offset: int
    width: int
    rw: int = 0
    w1c: int = 0
    default: int = 0

    def __post_init__(self) -> None:
        if self.width not in (1, 2, 4):
            raise InvalidArgument(f"config field {self.name!r} width {self.width} not 1, 2 or 4")
        limit = (1 << (8 * self.width)) - 1
        for what in ("rw", "w1c", "default"):
            if not 0 <= getattr(self, what) <= limit:
                raise InvalidArgument(f"config field {self.name!r} {what} exceeds {limit:#x}")
        if self.rw & self.w1c:
            raise InvalidArgument(f"config field {self.name!r} has bits both RW and W1C")

    def at(self, base: int, prefix: str) -> ConfigField:
        """This field moved to ``base`` and renamed ``prefix.name``."""
        return ConfigField(
            f"{prefix}.{self.name}", base + self.offset, self.width, self.rw, self.w1c, self.default
        )


def _f(name: str, offset: int, width: int, rw: int = 0, w1c: int = 0) -> ConfigField:
    return ConfigField(name, offset, width, rw, w1c)


#: The type-0 header except ids, BARs and pointers the owner fills in.
STANDARD_HEADER: tuple[ConfigField, ...] = (
    _f("vendor_id", 0x00, 2),
    _f("device_id", 0x02, 2),
    _f(
        "command",
        0x04,
        2,
        rw=COMMAND.IO
        | COMMAND.MEMORY
        | COMMAND.MASTER
        | COMMAND.PARITY
        | COMMAND.SERR
        | COMMAND.INTX_DISABLE,
    ),
    _f("status", 0x06, 2, w1c=STATUS.ERRORS),
    _f("revision", 0x08, 1),
    # The 24-bit class code is three 1-byte fields: fields are 1, 2 or 4 bytes wide.
    _f("prog_if", 0x09, 1),
    _f("subclass", 0x0A, 1),
    _f("base_class", 0x0B, 1),
    _f("cache_line_size", 0x0C, 1, rw=0xFF),
    _f("latency_timer", 0x0D, 1),
    _f("header_type", 0x0E, 1),
    _f("bist", 0x0F, 1),
    _f("subsystem_vendor_id", 0x2C, 2),
    _f("subsystem_id", 0x2E, 2),
    _f("rom_address", 0x30, 4),
    _f("cap_pointer", 0x34, 1),
    _f("interrupt_line", 0x3C, 1, rw=0xFF),
    _f("interrupt_pin", 0x3D, 1),
    _f("min_grant", 0x3E, 1),
    _f("max_latency", 0x3F, 1),
)

#: ``write_hook(offset, size)``: called after the host wrote ``[offset, offset+size)``.
WriteHook = Callable[[int, int], None]


class ConfigSpace:
    """A function's configuration space.

    Args:
        extended: 4 KiB PCI Express space when true, else the 256-byte PCI space.

    The device side (the function's owner) defines fields and sets values with
    :meth:`set`; the host side reads and writes through :meth:`read` and
    :meth:`write`, which apply the masks.
    """

    def __init__(self, *, extended: bool = True) -> None:
        size = EXT_CONFIG_SIZE if extended else CONFIG_SIZE
        self._data = bytearray(size)
        self._defaults = bytearray(size)
        self._wmask = bytearray(size)
        self._w1cmask = bytearray(size)
        self._owner: list[str | None] = [None] * size
        self._fields: dict[str, ConfigField] = {}
        self._hooks: list[tuple[int, int, WriteHook]] = []
        self._next_cap = CAP_START
        self._last_cap_next: int | None = None
        self._next_ext = EXT_CAP_START
        self._last_ext: int | None = None
        for field in STANDARD_HEADER:
            self.define(field)

    @property
    def size(self) -> int:
        """256 or 4096 bytes."""
        return len(self._data)

    # -- device side ------------------------------------------------------------
    def define(self, field: ConfigField) -> None:
        """Add ``field`` (absolute offset): its masks and its reset value.

        Raises:
            InvalidArgument: the field leaves config space or overlaps another one.
        """
        end = field.offset + field.width
        if field.offset < 0 or end > self.size:
            raise InvalidArgument(f"config field {field.name!r} at {field.offset:#x} is outside")
        if field.name in self._fields:
            raise InvalidArgument(f"config field {field.name!r} is already defined")
        for i in range(field.offset, end):
            if self._owner[i] is not None:
                raise InvalidArgument(
                    f"config field {field.name!r} at {field.offset:#x} overlaps {self._owner[i]!r}"
                )
        for i in range(field.offset, end):
            shift = 8 * (i - field.offset)
            self._owner[i] = field.name
            self._wmask[i] = (field.rw >> shift) & 0xFF
            self._w1cmask[i] = (field.w1c >> shift) & 0xFF
            self._defaults[i] = self._data[i] = (field.default >> shift) & 0xFF
        self._fields[field.name] = field

    def field(self, name: str) -> ConfigField:
        """The descriptor of field ``name``.

        Raises:
            InvalidArgument: no such field.
        """
        try:
            return self._fields[name]
        except KeyError:
            raise InvalidArgument(f"no config field {name!r}") from None

    def fields(self) -> Iterator[ConfigField]:
        """All fields, in definition order."""
        return iter(self._fields.values())

    def get(self, name: str) -> int:
        """The current value of field ``name``."""
        f = self.field(name)
        return int.from_bytes(self._data[f.offset : f.offset + f.width], "little")

    def set(self, name: str, value: int, *, default: bool = False) -> None:
        """Set field ``name`` as the hardware does (no masks); also its reset value if asked."""
        f = self.field(name)
        raw = (value & ((1 << (8 * f.width)) - 1)).to_bytes(f.width, "little")
        self._data[f.offset : f.offset + f.width] = raw
        if default:
            self._defaults[f.offset : f.offset + f.width] = raw

    def update_bits(self, name: str, bits: int, on: bool) -> None:
        """Set or clear ``bits`` of field ``name`` (hardware-side status updates)."""
        value = self.get(name)
        self.set(name, value | bits if on else value & ~bits)

    def on_write(self, offset: int, width: int, hook: WriteHook) -> None:
        """Call ``hook`` after every host write touching ``[offset, offset+width)``."""
        self._hooks.append((offset, offset + width, hook))

    def reset(self) -> None:
        """Return every byte to its reset value (what FLR and hot reset do)."""
        self._data[:] = self._defaults

    # -- capabilities -------------------------------------------------------------
    def add_capability(
        self, cap_id: int, size: int, fields: tuple[ConfigField, ...], name: str
    ) -> int:
        """Append a capability to the list at the capabilities pointer.

        Args:
            cap_id: The capability id (:class:`CapId`).
            size: Bytes it occupies, including the 2-byte id/next header.
            fields: Its registers, offsets relative to the capability start.
            name: Prefix of the field names (``msix`` gives ``msix.control``).

        Returns:
            The capability's offset.

        Raises:
            InvalidArgument: no room left below 0x100.
        """
        base = self._next_cap
        if base + size > CONFIG_SIZE:
            raise InvalidArgument(f"no room for capability {name!r} ({size} bytes) at {base:#x}")
        self._next_cap = (base + size + 3) & ~3
        self.define(ConfigField(f"{name}.id", base, 1, default=cap_id))
        self.define(ConfigField(f"{name}.next", base + 1, 1))
        for field in fields:
            self.define(field.at(base, name))
        if self._last_cap_next is None:
            self.set("cap_pointer", base, default=True)
            self.update_bits("status", STATUS.CAP_LIST, True)
            self._defaults[0x06] |= STATUS.CAP_LIST
        else:
            self._data[self._last_cap_next] = self._defaults[self._last_cap_next] = base
        self._last_cap_next = base + 1
        return base

    def add_ext_capability(
        self, cap_id: int, version: int, size: int, fields: tuple[ConfigField, ...], name: str
    ) -> int:
        """Append a PCI Express extended capability starting at 0x100.

        Returns:
            The capability's offset.

        Raises:
            InvalidArgument: config space is the 256-byte kind, or it is full.
        """
        base = self._next_ext
        if base + size > self.size:
            raise InvalidArgument(f"no room for extended capability {name!r} at {base:#x}")
        self._next_ext = (base + size + 3) & ~3
        self.define(ConfigField(f"{name}.header", base, 4, default=cap_id | (version << 16)))
        for field in fields:
            self.define(field.at(base, name))
        if self._last_ext is not None:
            prev = int.from_bytes(self._defaults[self._last_ext : self._last_ext + 4], "little")
            prev = (prev & 0x000F_FFFF) | (base << 20)
            raw = prev.to_bytes(4, "little")
            self._data[self._last_ext : self._last_ext + 4] = raw
            self._defaults[self._last_ext : self._last_ext + 4] = raw
        self._last_ext = base
        return base

    def capabilities(self) -> list[tuple[int, int]]:
        """Walk the capability list as software does: ``[(cap_id, offset), …]``."""
        found: list[tuple[int, int]] = []
        if not self.read(0x06, 2) & STATUS.CAP_LIST:
            return found
        pos = self.read(0x34, 1) & ~3
        while pos and len(found) < 48:  # 48 bounds a corrupt (cyclic) list, as Linux does
            found.append((self.read(pos, 1), pos))
            pos = self.read(pos + 1, 1) & ~3
        return found

    def ext_capabilities(self) -> list[tuple[int, int]]:
        """Walk the extended capability list from 0x100: ``[(cap_id, offset), …]``."""
        found: list[tuple[int, int]] = []
        if self.size <= EXT_CAP_START:
            return found
        pos = EXT_CAP_START
        while pos and len(found) < 480:
            header = self.read(pos, 4)
            if header in (0, 0xFFFF_FFFF):
                break
            found.append((header & 0xFFFF, pos))
            pos = (header >> 20) & 0xFFC
        return found

    def find_capability(self, cap_id: int) -> int | None:
        """The offset of the first capability ``cap_id`` (``pci_find_capability``)."""
        return next((pos for cid, pos in self.capabilities() if cid == cap_id), None)

    def find_ext_capability(self, cap_id: int) -> int | None:
        """The offset of extended capability ``cap_id`` (``pci_find_ext_capability``)."""
        return next((pos for cid, pos in self.ext_capabilities() if cid == cap_id), None)

    # -- host side ---------------------------------------------------------------
    def _check(self, offset: int, size: int) -> None:
        if size not in (1, 2, 4):
            raise InvalidArgument(f"config access size {size} is not 1, 2 or 4")
        if offset < 0 or offset + size > self.size:
            raise InvalidArgument(f"config offset {offset:#x} is outside {self.size:#x} bytes")
        if offset % size:
            raise InvalidArgument(f"config offset {offset:#x} is not aligned to size {size}")

    def read(self, offset: int, size: int) -> int:
        """Read ``size`` bytes (1, 2, 4; naturally aligned) as a little-endian integer.

        Raises:
            InvalidArgument: bad size, alignment or offset.
        """
        self._check(offset, size)
        return int.from_bytes(self._data[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """Host write: RW bits take ``value``, W1C bits clear where ``value`` has ones.

        Raises:
            InvalidArgument: bad size, alignment or offset.
        """
        self._check(offset, size)
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            pos = offset + i
            wm, cm = self._wmask[pos], self._w1cmask[pos]
            self._data[pos] = ((self._data[pos] & ~wm) | (byte & wm)) & ~(byte & cm) & 0xFF
        end = offset + size
        for start, stop, hook in list(self._hooks):
            if start < end and offset < stop:
                hook(offset, size)

    def snapshot(self) -> bytes:
        """A copy of the current bytes (for ``lspci -x``-like dumps and tests)."""
        return bytes(self._data)
