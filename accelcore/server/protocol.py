"""The devfs server's wire protocol: a versioned, sans-I/O codec.

Every message is one ``SOCK_SEQPACKET`` record: a 24-byte header and a body.
File descriptors never appear in the bytes; they travel beside the record as
``SCM_RIGHTS`` ancillary data, and :meth:`Message.fd_count` says how many each
message must carry, so the receiver can check the count.

Header (little endian)::

    magic   4s  b"ACSV"
    version u16 PROTOCOL_VERSION
    type    u16 MsgType
    flags   u32 must be 0
    length  u32 body bytes (the record is exactly HEADER.size + length)
    rid     u64 request id, echoed in the reply

Every body is a fixed-layout ``struct`` part, then (for a few types) counted
arrays and text. Nothing here touches a socket: :func:`encode` turns a message
into bytes and :func:`decode` turns bytes (or a receive buffer's
``memoryview``) back into a :class:`Frame`, raising :class:`ProtocolError` for
anything malformed (bad magic or version, unknown type, wrong length, truncated
or oversized body, bad UTF-8 or JSON, a field out of range). The server closes
a connection that sends one; a HELLO of another protocol version is answered
``EPROTONOSUPPORT`` with a message naming both versions first.

**Handles (version 2).** A request aimed at a file (IOCTL, READ, POLL, MMAP)
names it by a *handle* of the session, proven once: OPEN's RESULT gives the
handle of the file it opened, and a request whose ``handle`` is 0 carries its
target as its first ``SCM_RIGHTS`` descriptor, the server resolves it, and the
RESULT names the target's handle for later calls. A handle is valid only in
the session that proved it, lapses when the client says it closed its last
descriptor of the file (CLOSE with ``forget``) and when the file is released;
a request naming a lapsed or unknown handle fails ``EBADF``. Descriptors the
*arguments* name still travel with each call (``fd_numbers``).
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

__all__ = [
    "ARENA_BIT",
    "HEADER",
    "MAGIC",
    "MAX_BATCH",
    "MAX_FDS",
    "MAX_MESSAGE",
    "PROTOCOL_VERSION",
    "AddArena",
    "Batch",
    "BatchResult",
    "Close",
    "Control",
    "ControlReply",
    "Data",
    "Frame",
    "Hello",
    "Ioctl",
    "Mapped",
    "Message",
    "Mmap",
    "MsgType",
    "Munmap",
    "Open",
    "Poll",
    "ProtocolError",
    "Read",
    "Result",
    "Signal",
    "Uevent",
    "VersionMismatch",
    "Welcome",
    "decode",
    "encode",
]

MAGIC = b"ACSV"
#: Version 2: handles instead of a descriptor per call, fixed-layout bodies, BATCH.
PROTOCOL_VERSION = 2
HEADER = struct.Struct("<4sHHIIQ")
#: The largest record either side accepts (header included).
MAX_MESSAGE = 64 * 1024
#: The most descriptors one record may carry.
MAX_FDS = 16
#: Longest text field (command names, error messages).
MAX_TEXT = 4096
TOKEN_SIZE = 16
#: The most calls one BATCH record may carry.
MAX_BATCH = 64
#: In MUNMAP's ``mapping_id``: the rest is the address of an arena to remove.
ARENA_BIT = 1 << 63


class ProtocolError(ValueError):
    """A record that does not follow the protocol; the connection is closed."""


class VersionMismatch(ProtocolError):
    """A record of another protocol version (its number is ``version``)."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"protocol version {version} is not supported: this side speaks version "
            f"{PROTOCOL_VERSION} (client and server must come from the same accelcore)"
        )
        self.version = version


class MsgType(enum.IntEnum):
    """Record types. Requests are below 64, replies and notifications above."""

    HELLO = 1
    ADD_ARENA = 2
    OPEN = 3
    IOCTL = 4
    MMAP = 5
    MUNMAP = 6
    READ = 7
    POLL = 8
    SIGNAL = 9
    CONTROL = 10
    CLOSE = 11
    BATCH = 12
    WELCOME = 64
    RESULT = 65
    MAPPED = 66
    DATA = 67
    CONTROL_REPLY = 68
    UEVENT = 69
    BATCH_RESULT = 70


def _text(raw: bytes | memoryview, what: str) -> str:
    if len(raw) > MAX_TEXT:
        raise ProtocolError(f"{what} of {len(raw)} bytes exceeds {MAX_TEXT}")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not UTF-8: {exc}") from None


def _unpack(
    fixed: struct.Struct, body: bytes | memoryview, what: str, *, exact: bool = True
) -> tuple[Any, ...]:
    if len(body) < fixed.size or (exact and len(body) != fixed.size):
        raise ProtocolError(
            f"{what} body is {len(body)} bytes, expected {'' if exact else 'at least '}{fixed.size}"
        )
    return fixed.unpack_from(body)


def _json(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        value = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _check_range(value: int, lo: int, hi: int, what: str) -> None:
    if not lo <= value <= hi:
        raise ProtocolError(f"{what} {value} is outside [{lo}, {hi}]")


class Message:
    """Base of every record body. Subclasses are dataclasses with slots."""

    TYPE: ClassVar[MsgType]
    #: Descriptors the record carries (messages with a variable count override fd_count).
    FDS: ClassVar[int] = 0

    def fd_count(self) -> int:
        """How many descriptors travel with this message."""
        return self.FDS

    def body(self) -> bytes:
        """The encoded body."""
        return b""

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Message:
        """Decode a body; raise :class:`ProtocolError` if it is malformed."""
        if body:
            raise ProtocolError(f"{cls.TYPE.name} has no body, got {len(body)} bytes")
        return cls()


@dataclass(slots=True)
class Hello(Message):
    """Start a session: the sender becomes a task (pid and creds from SO_PEERCRED).

    Flags: bit 0 ``restart`` (``SA_RESTART``); bit 1 ``native``: user addresses
    outside the session's arenas are the client's own memory, which the server
    reads and writes with ``process_vm_readv``/``process_vm_writev``, and
    descriptor numbers in ioctl arguments are the client's, fetched with
    ``pidfd_getfd`` (the ``accelctl run`` preload library speaks this mode).
    """

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<I")
    restart: bool = False
    comm: str = ""
    native: bool = False

    def body(self) -> bytes:
        flags = int(self.restart) | (int(self.native) << 1)
        return self._FIXED.pack(flags) + self.comm.encode()

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Hello:
        (flags,) = _unpack(cls._FIXED, body, "HELLO", exact=False)
        if flags & ~3:
            raise ProtocolError(f"HELLO flags {flags:#x} has unknown bits")
        return cls(bool(flags & 1), _text(body[cls._FIXED.size :], "HELLO comm"), bool(flags & 2))


@dataclass(slots=True)
class Welcome(Message):
    """The session is open; ``token`` names it in OPEN requests.

    ``fd_offsets`` are ``(cmd, offset)`` pairs: the ioctl arguments' fields that
    carry descriptors the kernel reads (the uAPI headers' ``accel:fd`` fields of
    the served machine's drivers), so the client sends those descriptors along.
    """

    TYPE: ClassVar[MsgType] = MsgType.WELCOME
    _FIXED: ClassVar[struct.Struct] = struct.Struct(f"<{TOKEN_SIZE}sIII")
    token: bytes
    server_pid: int
    task_pid: int
    version: str = ""
    fd_offsets: tuple[tuple[int, int], ...] = ()

    def body(self) -> bytes:
        n = len(self.fd_offsets)
        pairs = struct.pack(f"<{2 * n}I", *(v for pair in self.fd_offsets for v in pair))
        return (
            self._FIXED.pack(self.token, self.server_pid, self.task_pid, n)
            + pairs
            + self.version.encode()
        )

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Welcome:
        token, spid, tpid, n = _unpack(cls._FIXED, body, "WELCOME", exact=False)
        tail = body[cls._FIXED.size :]
        if len(tail) < 8 * n:
            raise ProtocolError(f"WELCOME names {n} descriptor fields but carries fewer")
        flat = struct.unpack_from(f"<{2 * n}I", tail)
        pairs = tuple(zip(flat[::2], flat[1::2], strict=True))
        return cls(token, spid, tpid, _text(tail[8 * n :], "WELCOME version"), pairs)


@dataclass(slots=True)
class AddArena(Message):
    """A sealed memfd (the one descriptor) of user memory at ``addr`` in the client."""

    TYPE: ClassVar[MsgType] = MsgType.ADD_ARENA
    FDS: ClassVar[int] = 1
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<QQ")
    addr: int
    size: int

    def body(self) -> bytes:
        return self._FIXED.pack(self.addr, self.size)

    @classmethod
    def parse(cls, body: bytes | memoryview) -> AddArena:
        addr, size = _unpack(cls._FIXED, body, "ADD_ARENA")
        _check_range(size, 1, 1 << 40, "ADD_ARENA size")
        _check_range(addr, 1, (1 << 63) - 1, "ADD_ARENA addr")
        return cls(addr, size)


@dataclass(slots=True)
class Open(Message):
    """First record on a node connection; carries the connection's own client end.
    The RESULT names the opened file's handle in the session of ``token``."""

    TYPE: ClassVar[MsgType] = MsgType.OPEN
    FDS: ClassVar[int] = 1
    _FIXED: ClassVar[struct.Struct] = struct.Struct(f"<II{TOKEN_SIZE}s")
    flags: int
    token: bytes

    def body(self) -> bytes:
        return self._FIXED.pack(self.flags, 0, self.token)

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Open:
        flags, pad, token = _unpack(cls._FIXED, body, "OPEN")
        if pad:
            raise ProtocolError(f"OPEN pad is {pad:#x}, must be 0")
        return cls(flags, token)


def _fd_numbers(body: bytes | memoryview, at: int, n: int, what: str) -> tuple[int, ...]:
    _check_range(n, 0, MAX_FDS, f"{what} descriptor count")
    if len(body) < at + 4 * n:
        raise ProtocolError(f"{what} names {n} descriptors but its body ends at {len(body)} bytes")
    return struct.unpack_from(f"<{n}i", body, at) if n else ()


@dataclass(slots=True)
class Ioctl(Message):
    """``ioctl(fd, cmd, argp)`` on the file of session handle ``handle`` (its number
    in the client is ``fd``). With ``handle`` 0 the target travels as the record's
    first descriptor (and the RESULT names its handle); the descriptors the
    arguments name follow, ``fd_numbers`` being their numbers in the client.

    Body: ``cmd u32, handle u32, argp u64, fd i32, nargs u32``, then ``nargs``
    ``i32`` numbers.
    """

    TYPE: ClassVar[MsgType] = MsgType.IOCTL
    FIXED: ClassVar[struct.Struct] = struct.Struct("<IIQiI")
    cmd: int
    argp: int
    fd: int
    handle: int = 0
    fd_numbers: tuple[int, ...] = ()

    def fd_count(self) -> int:
        return len(self.fd_numbers) + (not self.handle)

    def body(self) -> bytes:
        n = len(self.fd_numbers)
        head = self.FIXED.pack(self.cmd, self.handle, self.argp, self.fd, n)
        return head + struct.pack(f"<{n}i", *self.fd_numbers) if n else head

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Ioctl:
        msg, end = cls.parse_from(body, 0)
        if end != len(body):
            raise ProtocolError(f"IOCTL body is {len(body)} bytes, expected {end}")
        return msg

    @classmethod
    def parse_from(cls, body: bytes | memoryview, at: int) -> tuple[Ioctl, int]:
        """The call at offset ``at`` of ``body`` and the offset after it."""
        if len(body) < at + cls.FIXED.size:
            raise ProtocolError(f"IOCTL body is {len(body) - at} bytes, expected {cls.FIXED.size}")
        cmd, handle, argp, fd, n = cls.FIXED.unpack_from(body, at)
        at += cls.FIXED.size
        numbers = _fd_numbers(body, at, n, "IOCTL")
        if n + (not handle) > MAX_FDS:
            raise ProtocolError(f"IOCTL carries {n + (not handle)} descriptors, over {MAX_FDS}")
        return cls(cmd, argp, fd, handle, numbers), at + 4 * n


_COUNTED = struct.Struct("<II")
_M = TypeVar("_M", bound=Message)


def _sequence(
    body: bytes | memoryview, what: str, item: Callable[[bytes | memoryview, int], tuple[_M, int]]
) -> tuple[_M, ...]:
    """A ``count u32, pad u32`` header, then ``count`` (1 to :data:`MAX_BATCH`)
    items read by ``item``, which must end exactly at the end of ``body``."""
    count, pad = _unpack(_COUNTED, body, what, exact=False)
    _check_range(count, 1, MAX_BATCH, f"{what} count")
    if pad:
        raise ProtocolError(f"{what} pad is {pad:#x}, must be 0")
    at, items = _COUNTED.size, []
    for _ in range(count):
        one, at = item(body, at)
        items.append(one)
    if at != len(body):
        raise ProtocolError(f"{what} body is {len(body)} bytes, its items end at {at}")
    return tuple(items)


@dataclass(slots=True)
class Batch(Message):
    """Several IOCTLs in one record, run in order, each exactly as if it had come
    alone (its own result, errno and restart); answered by one BATCH_RESULT. The
    record's descriptors are those of its calls, in order.

    Body: ``count u32, pad u32``, then each call's IOCTL body.
    """

    TYPE: ClassVar[MsgType] = MsgType.BATCH
    FIXED: ClassVar[struct.Struct] = _COUNTED
    calls: tuple[Ioctl, ...]

    def fd_count(self) -> int:
        return sum(c.fd_count() for c in self.calls)

    def body(self) -> bytes:
        return self.FIXED.pack(len(self.calls), 0) + b"".join(c.body() for c in self.calls)

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Batch:
        msg = cls(_sequence(body, "BATCH", Ioctl.parse_from))
        if msg.fd_count() > MAX_FDS:
            raise ProtocolError(f"BATCH carries {msg.fd_count()} descriptors, more than {MAX_FDS}")
        return msg


#: READ, POLL and MMAP's target: ``handle u32, fd i32`` (as IOCTL's).
_TARGET = "Ii"


@dataclass(slots=True)
class Mmap(Message):
    """``mmap`` of the file of ``handle`` (0: the one descriptor carried)."""

    TYPE: ClassVar[MsgType] = MsgType.MMAP
    _FIXED: ClassVar[struct.Struct] = struct.Struct(f"<QQI{_TARGET}I")
    offset: int
    length: int
    writable: bool
    handle: int = 0
    fd: int = -1

    def fd_count(self) -> int:
        return int(not self.handle)

    def body(self) -> bytes:
        return self._FIXED.pack(
            self.offset, self.length, int(self.writable), self.handle, self.fd, 0
        )

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Mmap:
        offset, length, writable, handle, fd, pad = _unpack(cls._FIXED, body, "MMAP")
        if writable > 1 or pad:
            raise ProtocolError(f"MMAP writable {writable} / pad {pad} out of range")
        return cls(offset, length, bool(writable), handle, fd)


@dataclass(slots=True)
class Munmap(Message):
    """Drop a mapping made by MMAP; or, with :data:`ARENA_BIT` set in ``mapping_id``,
    the arena added at that address (the client unmapped its memory)."""

    TYPE: ClassVar[MsgType] = MsgType.MUNMAP
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<Q")
    mapping_id: int

    def body(self) -> bytes:
        return self._FIXED.pack(self.mapping_id)

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Munmap:
        return cls(*_unpack(cls._FIXED, body, "MUNMAP"))


@dataclass(slots=True)
class Read(Message):
    """``read`` of the file of ``handle`` (0: the one descriptor carried)."""

    TYPE: ClassVar[MsgType] = MsgType.READ
    _FIXED: ClassVar[struct.Struct] = struct.Struct(f"<II{_TARGET}")
    size: int
    nonblock: bool
    handle: int = 0
    fd: int = -1

    def fd_count(self) -> int:
        return int(not self.handle)

    def body(self) -> bytes:
        return self._FIXED.pack(self.size, int(self.nonblock), self.handle, self.fd)

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Read:
        size, nonblock, handle, fd = _unpack(cls._FIXED, body, "READ")
        _check_range(size, 0, MAX_MESSAGE - HEADER.size, "READ size")
        _check_range(nonblock, 0, 1, "READ nonblock")
        return cls(size, bool(nonblock), handle, fd)


@dataclass(slots=True)
class Poll(Message):
    """The ready mask of the file of ``handle`` (0: the one descriptor carried)."""

    TYPE: ClassVar[MsgType] = MsgType.POLL
    _FIXED: ClassVar[struct.Struct] = struct.Struct(f"<{_TARGET}")
    handle: int = 0
    fd: int = -1

    def fd_count(self) -> int:
        return int(not self.handle)

    def body(self) -> bytes:
        return self._FIXED.pack(self.handle, self.fd)

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Poll:
        return cls(*_unpack(cls._FIXED, body, "POLL"))


@dataclass(slots=True)
class Signal(Message):
    """A signal for the session's task: its current or next wait is interrupted."""

    TYPE: ClassVar[MsgType] = MsgType.SIGNAL


@dataclass(slots=True)
class Close(Message):
    """The client closed a descriptor whose file is ``(st_dev, st_ino)``: if that
    was the last copy anywhere, release the file before replying, so that
    ``close(2)`` returns only after the release (as the kernel's last ``fput``).
    ``forget``: it was this process's last descriptor of the file, so the
    session's handle for it lapses (later calls naming it fail ``EBADF``)."""

    TYPE: ClassVar[MsgType] = MsgType.CLOSE
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<QQII")
    dev: int
    ino: int
    forget: bool = False

    def body(self) -> bytes:
        return self._FIXED.pack(self.dev, self.ino, int(self.forget), 0)

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Close:
        dev, ino, forget, pad = _unpack(cls._FIXED, body, "CLOSE")
        if forget > 1 or pad:
            raise ProtocolError(f"CLOSE forget {forget} / pad {pad} out of range")
        return cls(dev, ino, bool(forget))


@dataclass(slots=True)
class Result(Message):
    """The outcome of a request: a return value, or an errno and a message.

    Descriptors the call installed travel with it; ``placeholders`` are the numbers
    the engine wrote for them (into the arguments or the return value), in order.
    ``handle``: the session handle of the request's target when the request carried
    it as a descriptor (or of the file OPEN opened); 0 otherwise.

    Body: ``ret i64, errno i32, nfds u32, mlen u32, handle u32``, then ``nfds``
    ``i32`` placeholders and ``mlen`` bytes of UTF-8 message.
    """

    TYPE: ClassVar[MsgType] = MsgType.RESULT
    FIXED: ClassVar[struct.Struct] = struct.Struct("<qiIII")
    ret: int = 0
    errno: int = 0
    placeholders: tuple[int, ...] = ()
    message: str = ""
    handle: int = 0

    def fd_count(self) -> int:
        return len(self.placeholders)

    def body(self) -> bytes:
        msg = self.message.encode()[:MAX_TEXT] if self.message else b""
        n = len(self.placeholders)
        head = self.FIXED.pack(self.ret, self.errno, n, len(msg), self.handle)
        if not n and not msg:
            return head
        return head + struct.pack(f"<{n}i", *self.placeholders) + msg

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Result:
        msg, end = cls.parse_from(body, 0)
        if end != len(body):
            raise ProtocolError(f"RESULT body is {len(body)} bytes, expected {end}")
        return msg

    @classmethod
    def parse_from(cls, body: bytes | memoryview, at: int) -> tuple[Result, int]:
        """The result at offset ``at`` of ``body`` and the offset after it."""
        if len(body) < at + cls.FIXED.size:
            raise ProtocolError(f"RESULT body is {len(body) - at} bytes, expected {cls.FIXED.size}")
        ret, err, n, mlen, handle = cls.FIXED.unpack_from(body, at)
        _check_range(err, 0, 4095, "RESULT errno")
        at += cls.FIXED.size
        placeholders = _fd_numbers(body, at, n, "RESULT")
        at += 4 * n
        if mlen > MAX_TEXT or len(body) < at + mlen:
            raise ProtocolError(f"RESULT message of {mlen} bytes does not fit its body")
        text = _text(bytes(body[at : at + mlen]), "RESULT message") if mlen else ""
        return cls(ret, err, placeholders, text, handle), at + mlen


@dataclass(slots=True)
class BatchResult(Message):
    """The results of a BATCH, in the order of its calls; the descriptors of each
    follow those of the one before.

    Body: ``count u32, pad u32``, then each call's RESULT body.
    """

    TYPE: ClassVar[MsgType] = MsgType.BATCH_RESULT
    FIXED: ClassVar[struct.Struct] = _COUNTED
    results: tuple[Result, ...]

    def fd_count(self) -> int:
        return sum(len(r.placeholders) for r in self.results)

    def body(self) -> bytes:
        return self.FIXED.pack(len(self.results), 0) + b"".join(r.body() for r in self.results)

    @classmethod
    def parse(cls, body: bytes | memoryview) -> BatchResult:
        return cls(_sequence(body, "BATCH_RESULT", Result.parse_from))


@dataclass(slots=True)
class Mapped(Message):
    """MMAP succeeded: the descriptor is the backing memfd; map ``length`` bytes at
    ``memfd_offset`` of it."""

    TYPE: ClassVar[MsgType] = MsgType.MAPPED
    FDS: ClassVar[int] = 1
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<QQQ")
    mapping_id: int
    memfd_offset: int
    length: int

    def body(self) -> bytes:
        return self._FIXED.pack(self.mapping_id, self.memfd_offset, self.length)

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Mapped:
        return cls(*_unpack(cls._FIXED, body, "MAPPED"))


@dataclass(slots=True)
class Data(Message):
    """Bytes READ returned."""

    TYPE: ClassVar[MsgType] = MsgType.DATA
    data: bytes = b""

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Data:
        return cls(bytes(body))


@dataclass(slots=True)
class Control(Message):
    """A control-endpoint request: ``{"op": ..., ...}`` as JSON."""

    TYPE: ClassVar[MsgType] = MsgType.CONTROL
    request: dict[str, Any]

    def body(self) -> bytes:
        return json.dumps(self.request, default=str).encode()

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Control:
        req = _json(body, "CONTROL")
        if not isinstance(req.get("op"), str):
            raise ProtocolError("CONTROL request has no string 'op'")
        return cls(req)


@dataclass(slots=True)
class ControlReply(Message):
    """``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``."""

    TYPE: ClassVar[MsgType] = MsgType.CONTROL_REPLY
    reply: dict[str, Any]

    def body(self) -> bytes:
        return json.dumps(self.reply, default=str).encode()

    @classmethod
    def parse(cls, body: bytes | memoryview) -> ControlReply:
        return cls(_json(body, "CONTROL_REPLY"))


@dataclass(slots=True)
class Uevent(Message):
    """One uevent of a subscription: action, devpath, subsystem, seqnum, env."""

    TYPE: ClassVar[MsgType] = MsgType.UEVENT
    event: dict[str, Any]

    def body(self) -> bytes:
        return json.dumps(self.event, default=str).encode()

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Uevent:
        return cls(_json(body, "UEVENT"))


_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        AddArena,
        Open,
        Ioctl,
        Batch,
        Mmap,
        Munmap,
        Read,
        Poll,
        Signal,
        Control,
        Close,
        Result,
        BatchResult,
        Mapped,
        Data,
        ControlReply,
        Uevent,
    )
}


@dataclass(slots=True)
class Frame:
    """A decoded record: its request id and message."""

    rid: int
    message: Message


def encode(message: Message, rid: int = 0) -> bytes:
    """One record for ``message``.

    Raises:
        ProtocolError: the record would exceed :data:`MAX_MESSAGE` or carry too
            many descriptors.
    """
    body = message.body()
    if HEADER.size + len(body) > MAX_MESSAGE:
        raise ProtocolError(
            f"{message.TYPE.name} record of {HEADER.size + len(body)} bytes exceeds {MAX_MESSAGE}"
        )
    if message.fd_count() > MAX_FDS:
        raise ProtocolError(
            f"{message.TYPE.name} carries {message.fd_count()} descriptors, more than {MAX_FDS}"
        )
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, message.TYPE, 0, len(body), rid) + body


_IOCTL_RECORD = struct.Struct(HEADER.format + Ioctl.FIXED.format[1:])


def encode_ioctl(
    rid: int, cmd: int, argp: int, fd: int, handle: int = 0, fd_numbers: Sequence[int] = ()
) -> bytes:
    """``encode(Ioctl(cmd, argp, fd, handle, fd_numbers), rid)``, in one ``pack``
    and without building the message: the clients' per-call path.

    Raises:
        struct.error: a field does not fit its type (``cmd`` in 32 bits…).
    """
    n = len(fd_numbers)
    head = _IOCTL_RECORD.pack(
        MAGIC, PROTOCOL_VERSION, _IOCTL, 0, Ioctl.FIXED.size + 4 * n, rid, cmd, handle, argp, fd, n
    )
    return head + struct.pack(f"<{n}i", *fd_numbers) if n else head


_IOCTL = int(MsgType.IOCTL)
_RESULT_RECORD = struct.Struct(HEADER.format + Result.FIXED.format[1:])
_RESULT = int(MsgType.RESULT)


def encode_result(rid: int, ret: int, handle: int = 0) -> bytes:
    """``encode(Result(ret, handle=handle), rid)`` (a success that returns no
    descriptors) in one ``pack``: the server's per-call path."""
    return _RESULT_RECORD.pack(
        MAGIC, PROTOCOL_VERSION, _RESULT, 0, Result.FIXED.size, rid, ret, 0, 0, 0, handle
    )


def decode(data: bytes | bytearray | memoryview) -> Frame:
    """Parse one record (a receive buffer's ``memoryview`` is parsed in place).

    Raises:
        VersionMismatch: the record is of another protocol version.
        ProtocolError: anything else malformed (the message says what).
    """
    size = len(data)
    if size in (_RESULT_RECORD.size, _IOCTL_RECORD.size):
        # The two records of nearly every call: a RESULT with nothing but its
        # fixed part, an IOCTL naming no argument descriptors. One unpack each,
        # the same checks as below.
        head = HEADER.unpack_from(data)
        if head[0] == MAGIC and head[1] == PROTOCOL_VERSION and not head[3]:
            if head[2] == _RESULT and size == _RESULT_RECORD.size:
                ret, err, n, mlen, handle = _RESULT_RECORD.unpack_from(data)[6:]
                if not n and not mlen and 0 <= err <= 4095 and head[4] == Result.FIXED.size:
                    return Frame(head[5], Result(ret, err, (), "", handle))
            elif head[2] == _IOCTL and size == _IOCTL_RECORD.size:
                cmd, handle, argp, fd, n = _IOCTL_RECORD.unpack_from(data)[6:]
                if not n and handle and head[4] == Ioctl.FIXED.size:
                    return Frame(head[5], Ioctl(cmd, argp, fd, handle, ()))
    if size < HEADER.size:
        raise ProtocolError(f"record of {size} bytes is shorter than the header")
    if size > MAX_MESSAGE:
        raise ProtocolError(f"record of {size} bytes exceeds {MAX_MESSAGE}")
    magic, version, mtype, flags, length, rid = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {bytes(magic)!r}")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(version)
    if flags:
        raise ProtocolError(f"header flags {flags:#x} must be 0")
    if length != size - HEADER.size:
        raise ProtocolError(f"header says {length} body bytes, record has {size - HEADER.size}")
    cls = _TYPES.get(mtype)
    if cls is None:
        raise ProtocolError(f"unknown message type {mtype}")
    try:
        return Frame(rid, cls.parse(memoryview(data)[HEADER.size :]))
    except struct.error as exc:
        raise ProtocolError(f"{cls.TYPE.name}: {exc}") from None
