"""Hostile input on the devfs server's wire: malformed, truncated and oversized
records, random bytes, wrong descriptors, requests out of order — on the control
endpoint, inside a session and on node sockets.

The server must survive all of it, close (at most) the offending connection, and a
well-behaved client must keep working throughout: it runs a NOP after every
hostile example. Afterwards nothing the hostile connections touched is left:
``accounting()`` and this process's descriptors are back to their baselines.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accelcore.machine import Machine
from accelcore.server import Server, connect
from accelcore.server import protocol as p
from accelcore.server.client import ClientProcess
from accelcore.server.wire import send_record
from accelcore.testing.vaccel import VACCEL_UAPI as V

from .conftest import open_fds, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]

Summary = Callable[[str], None]


def _nop(proc: ClientProcess, fd: int, value: int) -> None:
    nop = V.new("struct vaccel_nop", value=value)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nop)
    assert nop.result == value + 1


def _raw(path: object) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.settimeout(5)
    s.connect(str(path))
    return s


def _drain(s: socket.socket) -> None:
    """Read replies until the server closes or goes quiet (never blocks long)."""
    s.settimeout(0.05)
    with contextlib.suppress(OSError):
        for _ in range(64):
            data, anc, _, _ = s.recvmsg(p.MAX_MESSAGE + 1, socket.CMSG_SPACE(p.MAX_FDS * 4))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    n = len(payload) // 4
                    for fd in struct.unpack(f"{n}i", payload[: 4 * n]):
                        os.close(fd)
            if not data:
                return


def _header(mtype: int, body: bytes, rid: int, **over: int) -> bytes:
    fields = {"version": p.PROTOCOL_VERSION, "flags": 0, "length": len(body)} | over
    return (
        p.HEADER.pack(p.MAGIC, fields["version"], mtype, fields["flags"], fields["length"], rid)
        + body
    )


MTYPES = st.sampled_from([int(t) for t in p.MsgType] + [0, 11, 63, 70, 0xFFFF])
BODY = st.one_of(st.binary(max_size=96), st.binary(min_size=4000, max_size=5000))


@st.composite
def records(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "framed", "lying", "truncated", "oversized"]))
    if kind == "random":
        return draw(st.binary(min_size=0, max_size=200))
    mtype, body, rid = draw(MTYPES), draw(BODY), draw(st.integers(0, (1 << 64) - 1))
    if kind == "framed":
        return _header(mtype, body, rid)
    if kind == "lying":
        return _header(
            mtype,
            body,
            rid,
            length=draw(st.integers(0, (1 << 32) - 1)),
            version=draw(st.sampled_from([p.PROTOCOL_VERSION, 0, 1, 3])),
            flags=draw(st.sampled_from([0, 1, 1 << 31])),
        )
    if kind == "truncated":
        rec = _header(mtype, body, rid)
        return rec[: draw(st.integers(0, max(0, len(rec) - 1)))]
    return _header(mtype, b"\0" * (p.MAX_MESSAGE + draw(st.integers(-30, 100))), rid)


@st.composite
def valid_requests(draw: st.DrawFn) -> p.Message:
    """Well-formed requests with hostile values (sent after a real HELLO)."""
    u64 = st.integers(0, (1 << 64) - 1)
    u32 = st.integers(0, (1 << 32) - 1)
    # Handles: 0 (the target travels as a descriptor) or forged ones, which name
    # another session's file or none.
    handle = draw(st.sampled_from([0, 1, 2, 3, 0xFFFF_FFFF]) | u32)
    call = p.Ioctl(draw(u32), draw(u64), 3, handle)
    return draw(
        st.sampled_from(
            [
                call,
                p.Batch((call, p.Ioctl(draw(u32), draw(u64), 4, draw(u32)))),
                p.Mmap(draw(u64), draw(u64), draw(st.booleans()), handle),
                p.Munmap(draw(u64)),
                p.Read(draw(st.integers(0, 4096)), True, handle),
                p.Poll(handle),
                p.Close(draw(u64), draw(u64), draw(st.booleans())),
                p.Signal(),
                p.Hello(),
                p.AddArena(draw(st.integers(1, 1 << 40)) & ~0xFFF or 4096, 4096),
                p.Control({"op": draw(st.sampled_from(["status", "nope", "bufinfo"]))}),
                p.Open(0, b"\0" * 16),
                p.Result(),
            ]
        )
    )


class _Fds:
    """Descriptors a hostile client attaches: wrong kinds, wrong counts."""

    def __init__(self) -> None:
        self.null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self.r, self.w = os.pipe()
        self.memfd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.memfd, 4096)
        self.dir = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def all(self) -> list[int]:
        return [self.null, self.r, self.w, self.memfd, self.dir]

    def close(self) -> None:
        for fd in self.all():
            os.close(fd)


def _send(s: socket.socket, data: bytes, fds: list[int]) -> None:
    with contextlib.suppress(OSError):
        send_record(s, data, fds)


def test_fuzzed_protocol_never_hurts_the_server_or_other_clients(
    served: tuple[Server, Machine], summary: Summary
) -> None:
    server, machine = served
    sub = machine.subsystem
    good = connect(server.runtime_dir)
    gfd = good.open("/dev/accel/accel0")
    _nop(good, gfd, 0)
    base, fds_base = sub.accounting(), open_fds()
    extra = _Fds()
    counts = {"control": 0, "session": 0, "node": 0, "bytes": 0}
    fd_choices = st.lists(st.sampled_from(extra.all()), max_size=3)

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        where=st.sampled_from(["control", "session", "node"]),
        recs=st.lists(st.one_of(records(), valid_requests()), min_size=1, max_size=4),
        fds=fd_choices,
    )
    def hostile(where: str, recs: list[bytes | p.Message], fds: list[int]) -> None:
        path = server.socket_path("/dev/accel/accel1") if where == "node" else server.control_path
        with _raw(path) as s:
            if where == "session":
                send_record(s, p.encode(p.Hello(False, "hostile"), 1))
                _drain(s)
            for i, rec in enumerate(recs):
                data = p.encode(rec, i + 2) if isinstance(rec, p.Message) else rec
                if isinstance(rec, p.Message) and rec.fd_count() and fds:
                    _send(s, data, fds[: rec.fd_count()])
                else:
                    _send(s, data, fds if i == 0 else [])
                counts["bytes"] += len(data)
            _drain(s)
        counts[where] += 1
        _nop(good, gfd, counts[where])

    try:
        hostile()
    finally:
        extra.close()
    _nop(good, gfd, 1000)
    assert wait_for(lambda: sub.accounting() == base), {
        k: (base[k], v) for k, v in sub.accounting().items() if base[k] != v
    }
    assert wait_for(lambda: open_fds() == fds_base), (fds_base, open_fds())
    assert sub.oopses == []
    good.exit()
    total = counts["control"] + counts["session"] + counts["node"]
    summary(
        f"protocol fuzz: {total} hostile connections (control {counts['control']}, "
        f"session {counts['session']}, node {counts['node']}), {counts['bytes']} bytes sent; "
        "server alive, good client unaffected"
    )
