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

Nothing here touches a socket: :func:`encode` turns a message into bytes and
:func:`decode` turns bytes back into a :class:`Frame`, raising
:class:`ProtocolError` for anything malformed (bad magic or version, unknown
type, wrong length, truncated or oversized body, bad UTF-8 or JSON, a field out
of range). The server closes a connection that sends one.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "ARENA_BIT",
    "HEADER",
    "MAGIC",
    "MAX_FDS",
    "MAX_MESSAGE",
    "PROTOCOL_VERSION",
    "AddArena",
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
    "Welcome",
    "decode",
    "encode",
]

MAGIC = b"ACSV"
PROTOCOL_VERSION = 1
HEADER = struct.Struct("<4sHHIIQ")
#: The largest record either side accepts (header included).
MAX_MESSAGE = 64 * 1024
#: The most descriptors one record may carry.
MAX_FDS = 16
#: Longest text field (command names, error messages).
MAX_TEXT = 4096
TOKEN_SIZE = 16
#: In MUNMAP's ``mapping_id``: the rest is the address of an arena to remove.
ARENA_BIT = 1 << 63


class ProtocolError(ValueError):
    """A record that does not follow the protocol; the connection is closed."""


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
    WELCOME = 64
    RESULT = 65
    MAPPED = 66
    DATA = 67
    CONTROL_REPLY = 68
    UEVENT = 69


def _text(raw: bytes, what: str) -> str:
    if len(raw) > MAX_TEXT:
        raise ProtocolError(f"{what} of {len(raw)} bytes exceeds {MAX_TEXT}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not UTF-8: {exc}") from None


def _unpack(fixed: struct.Struct, body: bytes, what: str, *, exact: bool = True) -> tuple[Any, ...]:
    if len(body) < fixed.size or (exact and len(body) != fixed.size):
        raise ProtocolError(
            f"{what} body is {len(body)} bytes, expected {'' if exact else 'at least '}{fixed.size}"
        )
    return fixed.unpack_from(body)


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _check_range(value: int, lo: int, hi: int, what: str) -> None:
    if not lo <= value <= hi:
        raise ProtocolError(f"{what} {value} is outside [{lo}, {hi}]")


class Message:
    """Base of every record body. Subclasses are frozen dataclasses."""

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
    def parse(cls, body: bytes) -> Message:
        """Decode a body; raise :class:`ProtocolError` if it is malformed."""
        if body:
            raise ProtocolError(f"{cls.TYPE.name} has no body, got {len(body)} bytes")
        return cls()


@dataclass(frozen=True, slots=True)
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
    def parse(cls, body: bytes) -> Hello:
        (flags,) = _unpack(cls._FIXED, body, "HELLO", exact=False)
        if flags & ~3:
            raise ProtocolError(f"HELLO flags {flags:#x} has unknown bits")
        return cls(bool(flags & 1), _text(body[cls._FIXED.size :], "HELLO comm"), bool(flags & 2))


@dataclass(frozen=True, slots=True)
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
    def parse(cls, body: bytes) -> Welcome:
        token, spid, tpid, n = _unpack(cls._FIXED, body, "WELCOME", exact=False)
        tail = body[cls._FIXED.size :]
        if len(tail) < 8 * n:
            raise ProtocolError(f"WELCOME names {n} descriptor fields but carries fewer")
        flat = struct.unpack_from(f"<{2 * n}I", tail)
        pairs = tuple(zip(flat[::2], flat[1::2], strict=True))
        return cls(token, spid, tpid, _text(tail[8 * n :], "WELCOME version"), pairs)


@dataclass(frozen=True, slots=True)
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
    def parse(cls, body: bytes) -> AddArena:
        addr, size = _unpack(cls._FIXED, body, "ADD_ARENA")
        _check_range(size, 1, 1 << 40, "ADD_ARENA size")
        _check_range(addr, 1, (1 << 63) - 1, "ADD_ARENA addr")
        return cls(addr, size)


@dataclass(frozen=True, slots=True)
class Open(Message):
    """First record on a node connection; carries the connection's own client end."""

    TYPE: ClassVar[MsgType] = MsgType.OPEN
    FDS: ClassVar[int] = 1
    _FIXED: ClassVar[struct.Struct] = struct.Struct(f"<II{TOKEN_SIZE}s")
    flags: int
    token: bytes

    def body(self) -> bytes:
        return self._FIXED.pack(self.flags, 0, self.token)

    @classmethod
    def parse(cls, body: bytes) -> Open:
        flags, pad, token = _unpack(cls._FIXED, body, "OPEN")
        if pad:
            raise ProtocolError(f"OPEN pad is {pad:#x}, must be 0")
        return cls(flags, token)


@dataclass(frozen=True, slots=True)
class Ioctl(Message):
    """``ioctl(fd, cmd, argp)``. The descriptors are the target, then any named by
    the arguments; ``fd_numbers`` are their numbers in the client."""

    TYPE: ClassVar[MsgType] = MsgType.IOCTL
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<IIQ")
    cmd: int
    argp: int
    fd_numbers: tuple[int, ...]

    def fd_count(self) -> int:
        return len(self.fd_numbers)

    def body(self) -> bytes:
        n = len(self.fd_numbers)
        return self._FIXED.pack(self.cmd, n, self.argp) + struct.pack(f"<{n}i", *self.fd_numbers)

    @classmethod
    def parse(cls, body: bytes) -> Ioctl:
        cmd, n, argp = _unpack(cls._FIXED, body, "IOCTL", exact=False)
        _check_range(n, 1, MAX_FDS, "IOCTL descriptor count")
        tail = body[cls._FIXED.size :]
        if len(tail) != 4 * n:
            raise ProtocolError(f"IOCTL names {n} descriptors but carries {len(tail)} bytes")
        return cls(cmd, argp, struct.unpack(f"<{n}i", tail))


@dataclass(frozen=True, slots=True)
class Mmap(Message):
    """``mmap`` of the one descriptor."""

    TYPE: ClassVar[MsgType] = MsgType.MMAP
    FDS: ClassVar[int] = 1
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<QQII")
    offset: int
    length: int
    writable: bool

    def body(self) -> bytes:
        return self._FIXED.pack(self.offset, self.length, int(self.writable), 0)

    @classmethod
    def parse(cls, body: bytes) -> Mmap:
        offset, length, writable, pad = _unpack(cls._FIXED, body, "MMAP")
        if writable > 1 or pad:
            raise ProtocolError(f"MMAP writable {writable} / pad {pad} out of range")
        return cls(offset, length, bool(writable))


@dataclass(frozen=True, slots=True)
class Munmap(Message):
    """Drop a mapping made by MMAP; or, with :data:`ARENA_BIT` set in ``mapping_id``,
    the arena added at that address (the client unmapped its memory)."""

    TYPE: ClassVar[MsgType] = MsgType.MUNMAP
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<Q")
    mapping_id: int

    def body(self) -> bytes:
        return self._FIXED.pack(self.mapping_id)

    @classmethod
    def parse(cls, body: bytes) -> Munmap:
        return cls(*_unpack(cls._FIXED, body, "MUNMAP"))


@dataclass(frozen=True, slots=True)
class Read(Message):
    """``read`` of the one descriptor."""

    TYPE: ClassVar[MsgType] = MsgType.READ
    FDS: ClassVar[int] = 1
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<II")
    size: int
    nonblock: bool

    def body(self) -> bytes:
        return self._FIXED.pack(self.size, int(self.nonblock))

    @classmethod
    def parse(cls, body: bytes) -> Read:
        size, nonblock = _unpack(cls._FIXED, body, "READ")
        _check_range(size, 0, MAX_MESSAGE - HEADER.size, "READ size")
        _check_range(nonblock, 0, 1, "READ nonblock")
        return cls(size, bool(nonblock))


@dataclass(frozen=True, slots=True)
class Poll(Message):
    """The ready mask of the one descriptor."""

    TYPE: ClassVar[MsgType] = MsgType.POLL
    FDS: ClassVar[int] = 1


@dataclass(frozen=True, slots=True)
class Signal(Message):
    """A signal for the session's task: its current or next wait is interrupted."""

    TYPE: ClassVar[MsgType] = MsgType.SIGNAL


@dataclass(frozen=True, slots=True)
class Close(Message):
    """The client closed a descriptor whose file is ``(st_dev, st_ino)``: if that
    was the last copy anywhere, release the file before replying, so that
    ``close(2)`` returns only after the release (as the kernel's last ``fput``)."""

    TYPE: ClassVar[MsgType] = MsgType.CLOSE
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<QQ")
    dev: int
    ino: int

    def body(self) -> bytes:
        return self._FIXED.pack(self.dev, self.ino)

    @classmethod
    def parse(cls, body: bytes) -> Close:
        return cls(*_unpack(cls._FIXED, body, "CLOSE"))


@dataclass(frozen=True, slots=True)
class Result(Message):
    """The outcome of a request: a return value, or an errno and a message.

    Descriptors the call installed travel with it; ``placeholders`` are the numbers
    the engine wrote for them (into the arguments or the return value), in order.
    """

    TYPE: ClassVar[MsgType] = MsgType.RESULT
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<qiII")
    ret: int = 0
    errno: int = 0
    placeholders: tuple[int, ...] = ()
    message: str = ""

    def fd_count(self) -> int:
        return len(self.placeholders)

    def body(self) -> bytes:
        msg = self.message.encode()[:MAX_TEXT]
        n = len(self.placeholders)
        return (
            self._FIXED.pack(self.ret, self.errno, n, len(msg))
            + struct.pack(f"<{n}i", *self.placeholders)
            + msg
        )

    @classmethod
    def parse(cls, body: bytes) -> Result:
        ret, err, n, mlen = _unpack(cls._FIXED, body, "RESULT", exact=False)
        _check_range(n, 0, MAX_FDS, "RESULT descriptor count")
        _check_range(err, 0, 4095, "RESULT errno")
        tail = body[cls._FIXED.size :]
        if len(tail) != 4 * n + mlen:
            raise ProtocolError(f"RESULT tail is {len(tail)} bytes, expected {4 * n + mlen}")
        return cls(
            ret, err, struct.unpack_from(f"<{n}i", tail), _text(tail[4 * n :], "RESULT message")
        )


@dataclass(frozen=True, slots=True)
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
    def parse(cls, body: bytes) -> Mapped:
        return cls(*_unpack(cls._FIXED, body, "MAPPED"))


@dataclass(frozen=True, slots=True)
class Data(Message):
    """Bytes READ returned."""

    TYPE: ClassVar[MsgType] = MsgType.DATA
    data: bytes = b""

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, body: bytes) -> Data:
        return cls(bytes(body))


@dataclass(frozen=True, slots=True)
class Control(Message):
    """A control-endpoint request: ``{"op": ..., ...}`` as JSON."""

    TYPE: ClassVar[MsgType] = MsgType.CONTROL
    request: dict[str, Any]

    def body(self) -> bytes:
        return json.dumps(self.request, default=str).encode()

    @classmethod
    def parse(cls, body: bytes) -> Control:
        req = _json(body, "CONTROL")
        if not isinstance(req.get("op"), str):
            raise ProtocolError("CONTROL request has no string 'op'")
        return cls(req)


@dataclass(frozen=True, slots=True)
class ControlReply(Message):
    """``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``."""

    TYPE: ClassVar[MsgType] = MsgType.CONTROL_REPLY
    reply: dict[str, Any]

    def body(self) -> bytes:
        return json.dumps(self.reply, default=str).encode()

    @classmethod
    def parse(cls, body: bytes) -> ControlReply:
        return cls(_json(body, "CONTROL_REPLY"))


@dataclass(frozen=True, slots=True)
class Uevent(Message):
    """One uevent of a subscription: action, devpath, subsystem, seqnum, env."""

    TYPE: ClassVar[MsgType] = MsgType.UEVENT
    event: dict[str, Any]

    def body(self) -> bytes:
        return json.dumps(self.event, default=str).encode()

    @classmethod
    def parse(cls, body: bytes) -> Uevent:
        return cls(_json(body, "UEVENT"))


_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        AddArena,
        Open,
        Ioctl,
        Mmap,
        Munmap,
        Read,
        Poll,
        Signal,
        Control,
        Close,
        Result,
        Mapped,
        Data,
        ControlReply,
        Uevent,
    )
}


@dataclass(frozen=True, slots=True)
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


def decode(data: bytes | bytearray | memoryview) -> Frame:
    """Parse one record.

    Raises:
        ProtocolError: anything malformed (the message says what).
    """
    raw = bytes(data)
    if len(raw) < HEADER.size:
        raise ProtocolError(f"record of {len(raw)} bytes is shorter than the header")
    if len(raw) > MAX_MESSAGE:
        raise ProtocolError(f"record of {len(raw)} bytes exceeds {MAX_MESSAGE}")
    magic, version, mtype, flags, length, rid = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version} is not {PROTOCOL_VERSION}")
    if flags:
        raise ProtocolError(f"header flags {flags:#x} must be 0")
    if length != len(raw) - HEADER.size:
        raise ProtocolError(f"header says {length} body bytes, record has {len(raw) - HEADER.size}")
    cls = _TYPES.get(mtype)
    if cls is None:
        raise ProtocolError(f"unknown message type {mtype}")
    try:
        return Frame(rid, cls.parse(raw[HEADER.size :]))
    except struct.error as exc:
        raise ProtocolError(f"{cls.TYPE.name}: {exc}") from None
