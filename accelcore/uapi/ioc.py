"""The Linux ``_IOC`` ioctl number codec (asm-generic layout: x86, arm64, riscv).

An ioctl number packs four fields::

    bits 31-30  direction (_IOC_NONE 0, _IOC_WRITE 1, _IOC_READ 2)
    bits 29-16  size of the argument struct (14 bits: at most 16 KiB - 1)
    bits 15-8   type (the "magic" byte: 'd' for DRM and accel)
    bits  7-0   number

``WRITE`` means user space writes and the kernel reads (copy in); ``READ`` means
the kernel writes back (copy out).

>>> from accelcore.uapi.ioc import IOWR, decode
>>> hex(IOWR(ord("d"), 0x00, 64))
'0xc0406400'
>>> decode(0xC0406400)
IocNumber(dir=3, type=100, nr=0, size=64)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgument

__all__ = [
    "IO",
    "IOC_IN",
    "IOC_INOUT",
    "IOC_NONE",
    "IOC_OUT",
    "IOC_READ",
    "IOC_SIZEMASK",
    "IOC_WRITE",
    "IOR",
    "IOW",
    "IOWR",
    "IocNumber",
    "decode",
    "ioc",
]

IOC_NRBITS = 8
IOC_TYPEBITS = 8
IOC_SIZEBITS = 14
IOC_DIRBITS = 2
IOC_NRSHIFT = 0
IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS
IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS
IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS
IOC_SIZEMASK = (1 << IOC_SIZEBITS) - 1

IOC_NONE = 0
IOC_WRITE = 1
IOC_READ = 2

#: Direction bits in place: user writes (kernel copies in) / kernel writes back.
IOC_IN = IOC_WRITE << IOC_DIRSHIFT
IOC_OUT = IOC_READ << IOC_DIRSHIFT
IOC_INOUT = IOC_IN | IOC_OUT


@dataclass(frozen=True, slots=True)
class IocNumber:
    """The four fields of an ioctl number."""

    dir: int
    type: int
    nr: int
    size: int

    @property
    def cmd(self) -> int:
        """The encoded number."""
        return ioc(self.dir, self.type, self.nr, self.size)


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """Encode an ioctl number; every field is range-checked.

    Raises:
        InvalidArgument: a field does not fit its bits (a struct of 16 KiB or more).
    """
    for name, value, bits in (
        ("direction", direction, IOC_DIRBITS),
        ("type", type_, IOC_TYPEBITS),
        ("nr", nr, IOC_NRBITS),
        ("size", size, IOC_SIZEBITS),
    ):
        if not 0 <= value < (1 << bits):
            raise InvalidArgument(f"ioctl {name} {value:#x} does not fit in {bits} bits")
    return (
        (direction << IOC_DIRSHIFT)
        | (type_ << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
        | (size << IOC_SIZESHIFT)
    )


def IO(type_: int, nr: int) -> int:  # noqa: N802 - the kernel's macro name
    """``_IO``: no argument."""
    return ioc(IOC_NONE, type_, nr, 0)


def IOR(type_: int, nr: int, size: int) -> int:  # noqa: N802
    """``_IOR``: the kernel writes ``size`` bytes back."""
    return ioc(IOC_READ, type_, nr, size)


def IOW(type_: int, nr: int, size: int) -> int:  # noqa: N802
    """``_IOW``: the kernel reads ``size`` bytes."""
    return ioc(IOC_WRITE, type_, nr, size)


def IOWR(type_: int, nr: int, size: int) -> int:  # noqa: N802
    """``_IOWR``: both directions."""
    return ioc(IOC_READ | IOC_WRITE, type_, nr, size)


def decode(cmd: int) -> IocNumber:
    """Split an ioctl number into its fields (no validation: any 32-bit value decodes)."""
    return IocNumber(
        dir=(cmd >> IOC_DIRSHIFT) & ((1 << IOC_DIRBITS) - 1),
        type=(cmd >> IOC_TYPESHIFT) & ((1 << IOC_TYPEBITS) - 1),
        nr=(cmd >> IOC_NRSHIFT) & ((1 << IOC_NRBITS) - 1),
        size=(cmd >> IOC_SIZESHIFT) & IOC_SIZEMASK,
    )
