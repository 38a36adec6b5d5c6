"""The kernel's "botching up ioctls" rules, checked on a driver's uAPI structs.

``Documentation/process/botching-up-ioctls.rst`` asks for structs that have the same
layout for 32-bit and 64-bit user space, so no compat layer is needed:

1. only fixed-width integer types (``__u8`` … ``__s64``), arrays of them, and
   nested structs that follow the same rules: no ``int``, ``long``, ``size_t``,
   pointers (use ``__u64``), ``bool``, enums or floating point;
2. every field at its natural alignment;
3. explicit padding: no hole the compiler would fill (its bytes may be garbage);
4. a struct with a 64-bit field padded to a multiple of 64 bits.

:func:`check_struct` returns the violations; registration refuses a driver with
any, and the message names the struct and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .header import Uapi

__all__ = ["UapiViolation", "check_struct", "check_uapi"]

_FIXED = {
    "uint8_t",
    "int8_t",
    "uint16_t",
    "int16_t",
    "uint32_t",
    "int32_t",
    "uint64_t",
    "int64_t",
    "char",
}


@dataclass(frozen=True, slots=True)
class UapiViolation:
    """One broken rule: which struct, which field, and what is wrong."""

    struct: str
    field: str | None
    rule: str
    message: str

    def __str__(self) -> str:
        where = f"{self.struct}.{self.field}" if self.field else self.struct
        return f"{where}: {self.message} ({self.rule})"


def _has_u64(ffi: Any, t: Any) -> str | None:
    """Name of a 64-bit field inside ``t`` (recursively), or ``None``."""
    for name, f in t.fields or []:
        ft = f.type
        while ft.kind == "array":
            ft = ft.item
        if ft.kind == "primitive" and ffi.sizeof(ft) == 8:
            return str(name)
        if ft.kind in {"struct", "union"}:
            inner = _has_u64(ffi, ft)
            if inner is not None:
                return f"{name}.{inner}"
    return None


def check_struct(uapi: Uapi, ctype: str) -> list[UapiViolation]:
    """Check one struct or union against the rules above.

    >>> from accelcore.uapi import CORE, check_struct
    >>> check_struct(CORE, "struct drm_gem_close")
    []
    """
    ffi = uapi.ffi
    t = ffi.typeof(ctype)
    out: list[UapiViolation] = []
    end = 0
    for name, f in t.fields or []:
        ft = f.type
        base = ft
        while base.kind == "array":
            base = base.item
        if base.kind == "primitive" and base.cname not in _FIXED:
            out.append(
                UapiViolation(
                    ctype,
                    name,
                    "fixed-width types",
                    f"type {ft.cname!r} has no fixed width; use __u32/__u64",
                )
            )
        elif base.kind == "pointer":
            out.append(
                UapiViolation(
                    ctype,
                    name,
                    "fixed-width types",
                    f"pointer type {ft.cname!r}; pass pointers as __u64",
                )
            )
        elif base.kind == "enum":
            out.append(
                UapiViolation(
                    ctype,
                    name,
                    "fixed-width types",
                    f"enum type {ft.cname!r} has no fixed size; use __u32",
                )
            )
        elif base.kind in ("struct", "union"):
            out.extend(check_struct(uapi, base.cname))
        align = ffi.alignof(base)
        if f.offset % align:
            out.append(
                UapiViolation(
                    ctype,
                    name,
                    "natural alignment",
                    f"offset {f.offset} is not a multiple of its alignment {align}",
                )
            )
        if t.kind == "struct" and f.offset > end:
            hole = f.offset - end
            fix = f"an explicit __u{8 * hole} pad field" if hole in (1, 2, 4, 8) else "padding"
            out.append(
                UapiViolation(
                    ctype,
                    name,
                    "explicit padding",
                    f"{hole} bytes of implicit padding before it (offset {end} to "
                    f"{f.offset}); add {fix}",
                )
            )
        end = (
            max(end, f.offset + ffi.sizeof(ft)) if t.kind == "struct" else max(end, ffi.sizeof(ft))
        )
    size = ffi.sizeof(t)
    wide = _has_u64(ffi, t)
    if wide is not None and end % 8:
        out.append(
            UapiViolation(
                ctype,
                None,
                "64-bit multiple",
                f"size {end} is not a multiple of 8 although field {wide!r} is 64-bit; "
                f"pad the struct explicitly to {(end + 7) // 8 * 8} bytes",
            )
        )
    elif size > end:
        out.append(
            UapiViolation(
                ctype,
                None,
                "explicit padding",
                f"{size - end} bytes of implicit tail padding (fields end at {end}, size {size})",
            )
        )
    return out


def check_uapi(uapi: Uapi) -> list[UapiViolation]:
    """Check every struct and union the header itself defines (not its includes)."""
    out: list[UapiViolation] = []
    for ctype in uapi.types:
        out.extend(check_struct(uapi, ctype))
    return out
