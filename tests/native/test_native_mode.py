"""The server's native client mode, spoken from Python with the raw protocol.

The session is this very process: ``process_vm_readv``/``writev`` and
``pidfd_getfd`` reach its ctypes buffers and descriptors, exactly as they reach
a C program's under ``accelctl run``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
from collections.abc import Iterator

import pytest

from accelcore.machine import Machine
from accelcore.server import Server
from accelcore.server import protocol as p
from accelcore.server.wire import close_all, recv_record, send_record
from accelcore.uapi import CORE

from .conftest import settled


class Native:
    """A native-mode session and one open node."""

    def __init__(self, server: Server, node: str = "/dev/accel/accel0") -> None:
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ctl.connect(str(server.runtime_dir / "control"))
        welcome = self._call(p.Hello(native=True))[0]
        assert isinstance(welcome, p.Welcome)
        self.dev = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.dev.connect(str(server.runtime_dir / node.lstrip("/")))
        send_record(self.dev, p.encode(p.Open(os.O_RDWR, welcome.token)), [self.dev.fileno()])
        opened = p.decode(recv_record(self.dev)[0]).message
        assert isinstance(opened, p.Result) and opened.errno == 0

    def _call(self, msg: p.Message, fds: list[int] | None = None) -> tuple[p.Message, list[int]]:
        send_record(self.ctl, p.encode(msg, 7), fds or [])
        data, rfds = recv_record(self.ctl)
        return p.decode(data).message, rfds

    def ioctl(self, cmd: int, argp: int) -> tuple[p.Result, list[int]]:
        n = self.dev.fileno()
        reply, rfds = self._call(p.Ioctl(cmd, argp, n), [n])
        assert isinstance(reply, p.Result)
        return reply, rfds

    def close(self) -> None:
        self.dev.close()
        self.ctl.close()


@pytest.fixture
def native(server: Server) -> Iterator[Native]:
    s = Native(server)
    yield s
    s.close()


def _arg(ctype: str, **fields: int) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(bytes(CORE.ffi.buffer(CORE.new(ctype, **fields))))


def test_hello_native_flag_round_trips_and_unknown_bits_are_refused() -> None:
    for hello in (p.Hello(native=True), p.Hello(True, "x", native=True), p.Hello()):
        assert p.decode(p.encode(hello)).message == hello
    bad = p.HEADER.pack(p.MAGIC, p.PROTOCOL_VERSION, p.MsgType.HELLO, 0, 4, 1) + b"\x04\0\0\0"
    with pytest.raises(p.ProtocolError, match="unknown bits"):
        p.decode(bad)


def test_embedded_pointer_is_the_clients_memory(native: Native, machine: Machine) -> None:
    out = ctypes.create_string_buffer(CORE.sizeof("struct accel_info_device"))
    arg = _arg(
        "struct accel_info",
        op=CORE.ACCEL_INFO_DEVICE,
        return_pointer=ctypes.addressof(out),
        return_size=len(out),
    )
    res, _ = native.ioctl(CORE.ACCEL_IOCTL_INFO, ctypes.addressof(arg))
    assert (res.errno, res.ret) == (0, 0)
    q = CORE.from_bytes("struct accel_info", arg.raw)
    assert q.actual_size == len(out)  # written back to this process's argument
    dev = CORE.from_bytes("struct accel_info_device", out.raw)
    assert CORE.ffi.string(dev.driver).decode() == machine.subsystem.devices[0].driver.name


@pytest.mark.parametrize("where", ["unmapped", "readonly", "argument"])
def test_bad_pointers_are_efault(native: Native, where: str) -> None:
    addr = 0x10  # unmapped
    if where == "readonly":  # libc's text: mapped, never writable
        addr = ctypes.cast(ctypes.CDLL(None).getpid, ctypes.c_void_p).value or 0
    arg = _arg("struct accel_info", op=CORE.ACCEL_INFO_DEVICE, return_pointer=addr, return_size=64)
    argp = 0x20 if where == "argument" else ctypes.addressof(arg)
    res, _ = native.ioctl(CORE.ACCEL_IOCTL_INFO, argp)
    assert res.errno == errno.EFAULT
    assert "not mapped" in res.message


def test_descriptor_numbers_in_arguments_are_fetched(server: Server, machine: Machine) -> None:
    baseline = machine.subsystem.accounting()
    s = Native(server, "/dev/udmabuf")
    memfd = os.memfd_create("native", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(memfd, 4096)
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        arg = _arg("struct udmabuf_create", memfd=memfd, size=4096)
        res, fds = s.ioctl(CORE.UDMABUF_CREATE, ctypes.addressof(arg))
        assert res.errno == 0 and len(fds) == 1  # a dma-buf, from a number never sent
        assert res.ret == res.placeholders[0]
        close_all(fds)
        closed = os.open("/dev/null", os.O_RDONLY)
        os.close(closed)  # a number that is not open in this process
        arg = _arg("struct udmabuf_create", memfd=closed, size=4096)
        res, fds = s.ioctl(CORE.UDMABUF_CREATE, ctypes.addressof(arg))
        assert (res.errno, fds) == (errno.EBADF, [])
    finally:
        os.close(memfd)
        s.close()
    assert settled(machine, baseline) == baseline
