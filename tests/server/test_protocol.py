"""The sans-I/O codec: every message round-trips; malformed records are refused."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accelcore.server import protocol as p

MESSAGES: list[p.Message] = [
    p.Hello(True, "bench"),
    p.Hello(False, "native", native=True),
    p.Welcome(b"t" * 16, 1, 2, "0.1.0"),
    p.AddArena(0x7F00_0000_0000, 64 << 20),
    p.Open(2, b"k" * 16),
    p.Ioctl(0xC0106440, 0x1000, 3, 0, (7,)),
    p.Ioctl(0xC0106440, 0x1000, 3, 9),
    p.Batch((p.Ioctl(1, 2, 3), p.Ioctl(4, 5, 6, 7, (8, 9)))),
    p.Mmap(0x1_0000_0000, 4096, True),
    p.Mmap(0, 4096, False, 3, 5),
    p.Munmap(5),
    p.Read(4096, True),
    p.Read(64, False, 2, 4),
    p.Poll(),
    p.Poll(5, 6),
    p.Close(1, 2),
    p.Close(1, 2, True),
    p.Signal(),
    p.Control({"op": "status"}),
    p.Result(7, 0, (p.HEADER.size,), ""),
    p.Result(0, 22, (), "flags 0x4 has unknown bits"),
    p.Result(0, 0, (), "", 12),
    p.BatchResult((p.Result(1), p.Result(0, 9, (), "bad fd"), p.Result(0, 0, (3, 4), "", 2))),
    p.Mapped(1, 8192, 4096),
    p.Data(b"\x01\x02"),
    p.ControlReply({"ok": True, "result": [1, 2]}),
    p.Uevent({"action": "add", "devpath": "/devices/virtual/accel/accel0"}),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.TYPE.name)
def test_every_message_round_trips(msg: p.Message) -> None:
    frame = p.decode(p.encode(msg, rid=42))
    assert frame == p.Frame(42, msg)


def _record(
    mtype: int,
    body: bytes,
    *,
    magic: bytes = p.MAGIC,
    version: int = p.PROTOCOL_VERSION,
    flags: int = 0,
    length: int | None = None,
) -> bytes:
    n = len(body) if length is None else length
    return p.HEADER.pack(magic, version, mtype, flags, n, 1) + body


BAD_RECORDS = {
    "shorter than header": b"ACSV\x01",
    "bad magic": _record(p.MsgType.POLL, b"", magic=b"XXXX"),
    "wrong version": _record(p.MsgType.POLL, b"", version=99),
    "version 1": _record(p.MsgType.POLL, b"", version=1),
    "header flags": _record(p.MsgType.POLL, b"", flags=1),
    "length says more": _record(p.MsgType.MUNMAP, struct.pack("<Q", 1), length=9),
    "length says less": _record(p.MsgType.MUNMAP, struct.pack("<Q", 1), length=7),
    "unknown type": _record(200, b""),
    "truncated body": _record(p.MsgType.MUNMAP, b"\x01\x02"),
    "body where none": _record(p.MsgType.SIGNAL, b"x"),
    "oversized": _record(p.MsgType.DATA, b"\0" * p.MAX_MESSAGE),
    "ioctl v1 body": _record(p.MsgType.IOCTL, struct.pack("<IIQi", 1, 1, 0, 3)),
    "ioctl fd count lies": _record(p.MsgType.IOCTL, struct.pack("<IIQiIi", 1, 0, 0, 3, 2, 4)),
    "ioctl too many fds": _record(
        p.MsgType.IOCTL, struct.pack("<IIQiI", 1, 0, 0, 3, 99) + b"\0" * 396
    ),
    "ioctl 16 args and its target": _record(
        p.MsgType.IOCTL, struct.pack("<IIQiI", 1, 0, 0, 3, 16) + b"\0" * 64
    ),
    "batch empty": _record(p.MsgType.BATCH, struct.pack("<II", 0, 0)),
    "batch count lies": _record(
        p.MsgType.BATCH, struct.pack("<II", 2, 0) + struct.pack("<IIQiI", 1, 1, 0, 3, 0)
    ),
    "batch too long": _record(
        p.MsgType.BATCH,
        struct.pack("<II", p.MAX_BATCH + 1, 0) + struct.pack("<IIQiI", 1, 1, 0, 3, 0) * 65,
    ),
    "batch pad": _record(
        p.MsgType.BATCH, struct.pack("<II", 1, 7) + struct.pack("<IIQiI", 1, 1, 0, 3, 0)
    ),
    "batch trailing bytes": _record(
        p.MsgType.BATCH, struct.pack("<II", 1, 0) + struct.pack("<IIQiI", 1, 1, 0, 3, 0) + b"x"
    ),
    "batch too many fds": _record(
        p.MsgType.BATCH, struct.pack("<II", 17, 0) + struct.pack("<IIQiI", 1, 0, 0, 3, 0) * 17
    ),
    "close forget 2": _record(p.MsgType.CLOSE, struct.pack("<QQII", 1, 2, 2, 0)),
    "open pad": _record(p.MsgType.OPEN, struct.pack("<II16s", 0, 1, b"k" * 16)),
    "hello unknown flag": _record(p.MsgType.HELLO, struct.pack("<I", 4)),  # bit 1 is native
    "hello bad utf8": _record(p.MsgType.HELLO, struct.pack("<I", 0) + b"\xff\xfe"),
    "control not json": _record(p.MsgType.CONTROL, b"{nope"),
    "control not object": _record(p.MsgType.CONTROL, b"[1]"),
    "control without op": _record(p.MsgType.CONTROL, b'{"x": 1}'),
    "control deep nesting": _record(p.MsgType.CONTROL, b"[" * 30000 + b"]" * 30000),
    "result errno range": _record(p.MsgType.RESULT, struct.pack("<qiIII", 0, -1, 0, 0, 0)),
    "result tail length": _record(p.MsgType.RESULT, struct.pack("<qiIII", 0, 1, 0, 5, 0) + b"ab"),
    "result v1 body": _record(p.MsgType.RESULT, struct.pack("<qiII", 0, 1, 0, 0)),
    "arena size zero": _record(p.MsgType.ADD_ARENA, struct.pack("<QQ", 4096, 0)),
    "read nonblock 2": _record(p.MsgType.READ, struct.pack("<IIIi", 8, 2, 0, 3)),
}


@pytest.mark.parametrize("raw", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_malformed_record_is_refused(raw: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(raw)


def test_encode_refuses_oversized_message() -> None:
    with pytest.raises(p.ProtocolError, match="exceeds"):
        p.encode(p.Data(b"\0" * p.MAX_MESSAGE))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_decode_of_arbitrary_bytes_only_raises_protocol_error(raw: bytes) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode(raw)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(p.MsgType)), st.binary(max_size=128))
def test_decode_of_arbitrary_bodies_only_raises_protocol_error(
    mtype: p.MsgType, body: bytes
) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode(_record(mtype, body))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, (1 << 64) - 1),
    st.integers(0, (1 << 32) - 1),
    st.integers(0, (1 << 64) - 1),
    st.integers(-(1 << 31), (1 << 31) - 1),
    st.integers(0, (1 << 32) - 1),
    st.lists(st.integers(-(1 << 31), (1 << 31) - 1), max_size=p.MAX_FDS - 1),
)
def test_encode_ioctl_is_encode_of_the_message(
    rid: int, cmd: int, argp: int, fd: int, handle: int, numbers: list[int]
) -> None:
    msg = p.Ioctl(cmd, argp, fd, handle, tuple(numbers))
    assert p.encode_ioctl(rid, cmd, argp, fd, handle, numbers) == p.encode(msg, rid)
    assert p.decode(p.encode_ioctl(rid, cmd, argp, fd, handle, numbers)) == p.Frame(rid, msg)


@pytest.mark.parametrize("version", [0, 1, p.PROTOCOL_VERSION + 1])
def test_another_version_is_named_in_the_refusal(version: int) -> None:
    with pytest.raises(p.VersionMismatch, match=f"version {version} is not supported") as info:
        p.decode(_record(p.MsgType.HELLO, struct.pack("<I", 0), version=version))
    assert info.value.version == version


def test_descriptor_counts_follow_the_handles() -> None:
    assert p.Ioctl(1, 0, 3).fd_count() == 1  # the target travels
    assert p.Ioctl(1, 0, 3, 5).fd_count() == 0  # proven: only argument descriptors
    assert p.Ioctl(1, 0, 3, 5, (4, 6)).fd_count() == 2
    assert p.Batch((p.Ioctl(1, 0, 3), p.Ioctl(1, 0, 3, 5, (4,)))).fd_count() == 2
    assert (p.Poll(0, 3).fd_count(), p.Poll(2, 3).fd_count()) == (1, 0)
