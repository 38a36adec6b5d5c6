"""Load a C uAPI header with cffi (ABI mode): the single source of truth.

A uAPI header is ordinary C that a C program can ``#include``. The loader takes
from it:

* **struct and union layouts**, from the region between ``/* cffi:begin */`` and
  ``/* cffi:end */`` (kept free of macros cffi cannot parse);
* **integer constants**, from every ``#define NAME expr`` whose value is an integer
  expression of literals and earlier constants;
* **ioctl numbers**, from every ``#define NAME DRM_IOWR(nr, struct x)`` (or
  ``DRM_IO/IOR/IOW``, or the generic ``_IO/_IOR/_IOW/_IOWR(type, nr, T)``), computed
  with :mod:`accelcore.uapi.ioc` from the cffi size of ``T``;
* **descriptor fields**: a 32-bit struct field whose comment holds ``accel:fd``
  carries a file descriptor the kernel reads (``__s32 fd; /* accel:fd */``), one
  whose comment holds ``accel:fd-out`` a descriptor it returns. Every ioctl
  records the offsets of the descriptors its argument carries (nested structs
  and unions included), so transports whose descriptors live in another
  process forward them with no per-driver code (:attr:`IoctlDef.fd_offsets`).

So the numbers in Python are the numbers a C compiler computes from the same
file; a test compiles the header with gcc and compares.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cffi

from ..errors import InvalidArgument
from . import ioc

__all__ = ["FieldLayout", "IoctlDef", "StructLayout", "Uapi", "load_uapi"]

#: Kernel integer types, as the uAPI headers spell them.
PRELUDE = """
typedef uint8_t __u8;   typedef int8_t __s8;
typedef uint16_t __u16; typedef int16_t __s16;
typedef uint32_t __u32; typedef int32_t __s32;
typedef uint64_t __u64; typedef int64_t __s64;
typedef uint64_t __aligned_u64;
typedef unsigned long __kernel_size_t;
"""

_REGION = re.compile(r"/\*\s*cffi:begin\s*\*/(.*?)/\*\s*cffi:end\s*\*/", re.S)
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+(.+?)[ \t]*$", re.M)
_PREPROC = re.compile(r"^[ \t]*#.*$", re.M)
_AGGREGATE = re.compile(r"\b(struct|union)\s+(\w+)\s*\{")
_ENUM = re.compile(r"\benum\s+(\w+)\s*\{")
_IOCTL = re.compile(r"^(DRM_IO|DRM_IOR|DRM_IOW|DRM_IOWR|_IO|_IOR|_IOW|_IOWR)\s*\((.*)\)$", re.S)
_INT_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")
_CHAR = re.compile(r"'(\\?.)'")
_OCTAL = re.compile(r"\b0([0-7]+)\b")
_FD_MARK = re.compile(r"\baccel:fd(-out)?\b")
_FIELD_NAME = re.compile(r"(\w+)\s*(?:\[[^\]]*\])?\s*;")

_DIRS = {
    "IO": ioc.IOC_NONE,
    "IOR": ioc.IOC_READ,
    "IOW": ioc.IOC_WRITE,
    "IOWR": ioc.IOC_READ | ioc.IOC_WRITE,
}

_BINOPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_,
    ast.BitXor: operator.xor,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.FloorDiv: operator.floordiv,
}


@dataclass(frozen=True, slots=True)
class IoctlDef:
    """An ioctl number defined in a header, with the type of its argument."""

    name: str
    cmd: int
    dir: int
    type: int
    nr: int
    size: int
    arg_type: str | None
    #: Offsets in the argument of the 32-bit descriptors the kernel reads
    #: (fields marked ``accel:fd``), for transports that must send them along.
    fd_offsets: tuple[int, ...] = ()
    #: Offsets of the descriptors the kernel returns (``accel:fd-out``).
    fd_out_offsets: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class FieldLayout:
    """One field of a struct: where it lies and what C type it has."""

    name: str
    offset: int
    size: int
    ctype: str


@dataclass(frozen=True, slots=True)
class StructLayout:
    """A struct's size, alignment and fields, as cffi lays it out for this ABI."""

    name: str
    size: int
    alignment: int
    fields: tuple[FieldLayout, ...]


def _eval_int(expr: str, names: Mapping[str, int]) -> int | None:
    """Evaluate a C integer constant expression, or ``None`` if it is not one."""
    text = _CHAR.sub(lambda m: str(ord(m.group(1)[-1])), expr.strip())
    text = _INT_SUFFIX.sub(r"\1", text)
    text = _OCTAL.sub(r"0o\1", text)
    text = re.sub(r"\(\s*(?:unsigned\s+)?(?:int|long|__u\d+|__s\d+)\s*\)", "", text)
    text = text.replace("/", "//")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
            return ~ev(node.operand)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(node)

    try:
        return ev(tree)
    except (ValueError, KeyError, ZeroDivisionError):
        return None


def _split_args(text: str) -> list[str]:
    depth, cur, out = 0, "", []
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch in "(["
        depth -= ch in ")]"
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


class Uapi:
    """A loaded uAPI header: cffi types, constants and ioctl numbers.

    Constants and ioctl numbers are also attributes: ``uapi.DRM_IOCTL_VERSION``.

    Args:
        path: The header file.
        include: Headers this one builds on (their types, constants and ioctls
            are visible here, as ``#include`` makes them).

    Raises:
        InvalidArgument: the cffi region does not parse, or an ioctl names an
            unknown type.
    """

    def __init__(
        self, path: Path | str, include: Iterable[Uapi] = (), *, text: str | None = None
    ) -> None:
        self.path = Path(path)
        self.include = tuple(include)
        if text is None:
            text = self.path.read_text()
        self.text = text
        self.ffi = cffi.FFI()
        consts: dict[str, int] = {}
        ioctls: dict[str, IoctlDef] = {}
        marks: dict[tuple[str, str], bool] = {}
        for parent in self.include:
            self.ffi.include(parent.ffi)
            consts.update(parent.constants)
            ioctls.update(parent.ioctls)
            marks.update(parent.fd_marks)
        region = "\n".join(_REGION.findall(text))
        marks.update(_fd_marks(region))
        #: ``(struct or union, field) -> True`` for a descriptor the kernel reads,
        #: ``False`` for one it returns (the ``accel:fd`` comments).
        self.fd_marks: Mapping[tuple[str, str], bool] = marks
        cdef = _PREPROC.sub("", _COMMENT.sub("", region))
        try:
            self.ffi.cdef(cdef if self.include else PRELUDE + cdef)
        except cffi.CDefError as exc:
            raise InvalidArgument(
                f"{self.path.name}: cffi cannot parse the uAPI region: {exc}"
            ) from exc
        self.types: tuple[str, ...] = tuple(f"{k} {n}" for k, n in _AGGREGATE.findall(cdef))
        for enum in _ENUM.findall(cdef):
            consts.update(self.ffi.typeof(f"enum {enum}").relements)
        body = _COMMENT.sub("", text)
        for name, expr in _DEFINE.findall(body):
            m = _IOCTL.match(expr.strip())
            if m is not None:
                ioctls[name] = self._ioctl(name, m.group(1), m.group(2), consts)
                consts[name] = ioctls[name].cmd
                continue
            value = _eval_int(expr, consts)
            if value is not None:
                consts[name] = value
        self.constants: Mapping[str, int] = consts
        self.ioctls: Mapping[str, IoctlDef] = ioctls
        # Constants are plain attributes (``CORE.X`` is one dict lookup on the hot
        # path); names the class already uses (methods) stay reachable only
        # through :attr:`constants`. :meth:`__getattr__` only reports a miss.
        for cname, value in consts.items():
            if cname not in self.__dict__ and not hasattr(Uapi, cname):
                self.__dict__[cname] = value

    def _ioctl(self, name: str, macro: str, args: str, consts: Mapping[str, int]) -> IoctlDef:
        parts = _split_args(args)
        if macro.startswith("DRM_"):
            kind, type_expr, rest = macro[4:], "DRM_IOCTL_BASE", parts
        else:
            kind, type_expr, rest = macro[1:], parts[0], parts[1:]
        type_ = _eval_int(type_expr, consts)
        nr = _eval_int(rest[0], consts) if rest else None
        if type_ is None or nr is None:
            raise InvalidArgument(f"{self.path.name}: cannot evaluate the number of ioctl {name}")
        arg_type = rest[1] if len(rest) > 1 else None
        size = 0
        if arg_type is not None:
            try:
                size = self.ffi.sizeof(arg_type)
            except (cffi.FFIError, TypeError, ValueError) as exc:
                raise InvalidArgument(
                    f"{self.path.name}: ioctl {name} names unknown type {arg_type!r}"
                ) from exc
        direction = _DIRS[kind]
        fd_in: tuple[int, ...] = ()
        fd_out: tuple[int, ...] = ()
        if arg_type is not None:
            fd_in = self._fd_offsets(arg_type, reads=True)
            fd_out = self._fd_offsets(arg_type, reads=False)
        return IoctlDef(
            name,
            ioc.ioc(direction, type_, nr, size),
            direction,
            type_,
            nr,
            size,
            arg_type,
            fd_in,
            fd_out,
        )

    def _fd_offsets(self, ctype: str, *, reads: bool, base: int = 0) -> tuple[int, ...]:
        """Offsets of the marked descriptor fields of ``ctype``, nested ones too."""
        t = self.ffi.typeof(ctype)
        if t.kind not in ("struct", "union"):
            return ()
        out: list[int] = []
        for fname, f in t.fields or []:
            mark = self.fd_marks.get((t.cname, fname))
            if mark is not None:
                if self.ffi.sizeof(f.type) != 4 or f.type.kind != "primitive":
                    raise InvalidArgument(
                        f"{self.path.name}: descriptor field {t.cname}.{fname} must be a "
                        f"32-bit integer, not {f.type.cname}"
                    )
                if mark == reads:
                    out.append(base + f.offset)
            elif f.type.kind in ("struct", "union"):
                out.extend(self._fd_offsets(f.type.cname, reads=reads, base=base + f.offset))
        return tuple(sorted(set(out)))

    def __getattr__(self, name: str) -> int:
        # Reached only for a name that is not a constant (constants are instance
        # attributes), or while __init__ runs.
        try:
            return self.__dict__["constants"][name]  # type: ignore[no-any-return]
        except KeyError:
            raise AttributeError(f"{self.path.name} defines no constant {name!r}") from None

    # -- structs ---------------------------------------------------------------
    def sizeof(self, ctype: str) -> int:
        """``sizeof(ctype)`` on this ABI."""
        return int(self.ffi.sizeof(ctype))

    def new(self, ctype: str, init: Mapping[str, Any] | None = None, **fields: Any) -> Any:
        """A zeroed ``ctype`` (a cffi pointer to it), with ``fields`` set.

        Raises:
            InvalidArgument: ``ctype`` is not a type of this header, it has no
                field of one of the given names, or a value does not fit its field
                (the message names the struct, the field and the value).

        >>> from accelcore.uapi import CORE
        >>> v = CORE.new("struct drm_gem_close", handle=3)
        >>> v.handle, v.pad
        (3, 0)
        """
        data = dict(init or {})
        data.update(fields)
        try:
            return self.ffi.new(f"{ctype} *", data or None)
        except (KeyError, TypeError, ValueError, OverflowError, cffi.FFIError) as exc:
            raise self._new_error(ctype, data, exc) from None

    def _new_error(self, ctype: str, data: Mapping[str, Any], exc: Exception) -> InvalidArgument:
        """Which argument of :meth:`new` was wrong, and how."""
        try:
            fields = self.ffi.typeof(ctype).fields
        except (cffi.FFIError, TypeError, ValueError, KeyError, AttributeError):
            fields = None
        if fields is None:
            return InvalidArgument(f"{ctype!r} is not a struct of {self.path.name}: {exc}")
        known = dict(fields)
        for name, value in data.items():
            if name not in known:
                return InvalidArgument(
                    f"{ctype} has no field {name!r} (its fields: {', '.join(known)})"
                )
            try:
                self.ffi.new(f"{ctype} *", {name: value})
            except (KeyError, TypeError, ValueError, OverflowError, cffi.FFIError) as one:
                return InvalidArgument(f"{ctype}.{name} = {value!r}: {one}")
        return InvalidArgument(f"{ctype} with {dict(data)!r}: {exc}")

    def to_bytes(self, cdata: Any) -> bytes:
        """The raw bytes of a struct (what the kernel copies): a pointer to one, or a
        struct or union member nested in another."""
        if self.ffi.typeof(cdata).kind in ("struct", "union"):
            cdata = self.ffi.addressof(cdata)
        return bytes(self.ffi.buffer(cdata))

    def from_bytes(self, ctype: str, data: bytes | bytearray | memoryview) -> Any:
        """A new ``ctype`` filled from ``data`` (zero-extended or cut to size)."""
        out = self.ffi.new(f"{ctype} *")
        n = min(len(data), self.ffi.sizeof(ctype))
        self.ffi.memmove(out, bytes(data[:n]), n)
        return out

    def view(self, ctype: str, buf: bytearray | memoryview) -> Any:
        """A zero-copy ``ctype *`` over a writable buffer at least that large.

        Raises:
            InvalidArgument: the buffer is smaller than the type.
        """
        size = self.ffi.sizeof(ctype)
        if len(buf) < size:
            raise InvalidArgument(f"buffer of {len(buf)} bytes is smaller than {ctype} ({size})")
        return self.ffi.from_buffer(f"{ctype} *", buf, require_writable=True)

    def layout(self, ctype: str) -> StructLayout:
        """The layout of a struct or union, field by field."""
        t = self.ffi.typeof(ctype)
        fields = tuple(
            FieldLayout(name, f.offset, self.ffi.sizeof(f.type), f.type.cname)
            for name, f in (t.fields or [])
        )
        return StructLayout(ctype, self.ffi.sizeof(t), self.ffi.alignof(t), fields)

    def __repr__(self) -> str:
        return f"Uapi({self.path.name!r}, {len(self.types)} types, {len(self.ioctls)} ioctls)"


def _fd_marks(region: str) -> dict[tuple[str, str], bool]:
    """The ``accel:fd`` / ``accel:fd-out`` comments of a cffi region, by (type, field).

    A comment marks the field it follows on the same line (``__s32 fd; /* accel:fd */``)
    or, on lines of its own, the field declared after it.
    """
    marks: dict[tuple[str, str], bool] = {}
    for m in _AGGREGATE.finditer(region):
        owner = f"{m.group(1)} {m.group(2)}"
        depth, end = 1, m.end()
        while depth and end < len(region):
            depth += {"{": 1, "}": -1}.get(region[end], 0)
            end += 1
        parts = region[m.end() : end - 1].split(";")
        for k, decl in enumerate(parts[:-1]):
            if "{" in decl:
                continue  # a nested definition: its own aggregate match reads it
            if k and "\n" in decl:
                own = lead = decl.split("\n", 1)[1]
            else:  # on the line where the previous field ended: its comments are that field's
                own, lead = decl, decl if not k else ""
            trailing = parts[k + 1].split("\n", 1)[0]
            mark = _FD_MARK.search(trailing) or _FD_MARK.search(lead)
            name = _FIELD_NAME.search(_COMMENT.sub("", own) + ";")
            if mark is not None and name is not None:
                marks[(owner, name.group(1))] = mark.group(1) is None
    return marks


def load_uapi(path: Path | str, include: Iterable[Uapi] = (), *, text: str | None = None) -> Uapi:
    """Load a uAPI header; see :class:`Uapi`. With ``text``, ``path`` only names it."""
    return Uapi(path, include, text=text)
