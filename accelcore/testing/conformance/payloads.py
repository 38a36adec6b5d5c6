"""Argument payloads built from a driver's declarations: examples and their mutations.

The negative matrix and the fuzzer start from a driver's ``examples`` (a valid
argument per ioctl, as field → value) and change one thing at a time, as the
"botching up ioctls" rules ask: "only test for one single error path in each
subtest by submitting otherwise perfectly valid data".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ...uapi import Uapi

__all__ = [
    "Field",
    "decode_fields",
    "example_bytes",
    "fields_of",
    "flag_fields",
    "pad_fields",
    "set_fields",
]

_PAD = re.compile(r"^(pad|reserved|rsvd)", re.I)


@dataclass(frozen=True, slots=True)
class Field:
    """A leaf field (or array) of a struct: dotted name, byte offset and size."""

    name: str
    offset: int
    size: int


def fields_of(uapi: Uapi, ctype: str) -> Iterator[Field]:
    """Every leaf field of ``ctype``, nested structs flattened with dotted names."""

    def walk(t: Any, prefix: str, base: int) -> Iterator[Field]:
        for name, f in t.fields or []:
            ft = f.type
            if ft.kind in {"struct", "union"}:
                yield from walk(ft, f"{prefix}{name}.", base + f.offset)
            else:
                yield Field(f"{prefix}{name}", base + f.offset, uapi.ffi.sizeof(ft))

    yield from walk(uapi.ffi.typeof(ctype), "", 0)


def decode_fields(uapi: Uapi, ctype: str, data: bytes) -> dict[str, int | str]:
    """``data`` (one ``ctype``) as ``{dotted field: value}``, for reports by name.

    Integers (1, 2, 4, 8 bytes) read little-endian; ``char`` arrays as text; other
    arrays as a list of their bytes' hex. Unions show every member.
    """
    out: dict[str, int | str] = {}
    for f in fields_of(uapi, ctype):
        raw = data[f.offset : f.offset + f.size]
        if len(raw) < f.size:
            continue
        if f.size in (1, 2, 4, 8):
            out[f.name] = int.from_bytes(raw, "little")
        elif raw.rstrip(b"\0").isascii() and all(32 <= c < 127 for c in raw.rstrip(b"\0")):
            out[f.name] = raw.rstrip(b"\0").decode()
        else:
            out[f.name] = raw.hex()
    return out


def pad_fields(uapi: Uapi, ctype: str) -> list[Field]:
    """Fields that must be zero by name: ``pad*``, ``reserved*``, ``rsvd*``."""
    return [f for f in fields_of(uapi, ctype) if _PAD.match(f.name.rsplit(".", 1)[-1])]


def flag_fields(uapi: Uapi, ctype: str) -> list[Field]:
    """Fields named ``flags`` (at any depth): all-ones there must be refused."""
    return [f for f in fields_of(uapi, ctype) if f.name.rsplit(".", 1)[-1] == "flags"]


def set_fields(uapi: Uapi, value: Any, fields: Mapping[str, int]) -> None:
    """Assign ``field → int`` (dotted names reach nested structs) on a cffi struct.

    Raises:
        KeyError: a field the struct does not have (the message names it).
    """
    for name, v in fields.items():
        target = value
        *path, last = name.split(".")
        try:
            for part in path:
                target = getattr(target, part)
            setattr(target, last, v)
        except AttributeError:
            raise KeyError(f"{uapi.ffi.typeof(value).item.cname} has no field {name!r}") from None


def example_bytes(uapi: Uapi, ctype: str, fields: Mapping[str, int]) -> bytes:
    """The bytes of ``ctype`` with ``fields`` set and everything else zero."""
    value = uapi.new(ctype)
    set_fields(uapi, value, fields)
    return uapi.to_bytes(value)


def poke(data: bytes, field: Field, byte: int) -> bytearray:
    """``data`` with every byte of ``field`` set to ``byte`` (0x01 sets only the first)."""
    out = bytearray(data)
    if byte == 0x01:
        out[field.offset] = 1  # little-endian: the field reads as 1
    else:
        out[field.offset : field.offset + field.size] = bytes([byte]) * field.size
    return out
