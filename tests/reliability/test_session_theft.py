"""A session socket or a native session outliving its process (hostile tester's report).

* A control connection inherited by (or passed to) another process must not let
  that process act as the session's task: each record's ``SCM_CREDENTIALS`` is
  checked (``EPERM`` naming both pids; the record is not executed). The client's
  own flows (a fork child opens its own session; a device fd used in another
  process goes through that process's session) still work.
* A native session whose process exited must not reach the process that reuses
  its pid: the address space checks the pidfd before every ``process_vm_*`` call,
  and the server ends the session when the pidfd says the process exited.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import socket
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from accelcore.errors import BadAddress
from accelcore.machine import Machine
from accelcore.native.remote import open_native
from accelcore.server import Server, connect
from accelcore.server import protocol as p
from accelcore.server.wire import close_all, recv_fds, recv_record, send_fds, send_record
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import CORE

from .conftest import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(60)]

Summary = Callable[[str], None]
NOBODY = 65534
ROOT = os.getuid() == 0


def _child(body: Callable[[], int]) -> int:
    """Run ``body`` in a forked child; its return is the exit code (bounded by a 20 s
    alarm); 99 if it raised (the exception is printed to stderr)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through its exit status
        code = 99
        try:
            signal.alarm(20)
            code = body()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@pytest.mark.skipif(not ROOT, reason="dropping to uid 65534 needs root")
def test_inherited_session_socket_cannot_act_as_its_task(
    served: tuple[Server, Machine], summary: Summary
) -> None:
    srv, machine = served
    sub = machine.subsystem
    base = sub.accounting()
    proc = connect(srv.runtime_dir)
    fd = proc.open("/dev/accel/accel0")
    proc.ioctl(fd, CORE.DRM_IOCTL_SET_MASTER)
    assert proc._chan is not None
    stolen = os.dup(proc._chan.sock.fileno())
    parent = os.getpid()

    def attacker() -> int:
        _drop_to_nobody()
        sock = socket.socket(fileno=stolen)  # blocking: it shares the parent's flags
        send_record(sock, p.encode(p.Ioctl(CORE.DRM_IOCTL_DROP_MASTER, 0, fd), 4242), [fd])
        poller = select.poll()  # not select(): the test process may hold 1024+ fds
        poller.register(sock, select.POLLIN)
        if not poller.poll(10_000):
            return 5
        data, fds = recv_record(sock)
        close_all(fds)
        frame = p.decode(data)
        reply = frame.message
        if not isinstance(reply, p.Result) or frame.rid != 4242:
            return 2
        if reply.errno != errno.EPERM:
            return 3  # ret 0 here is the hole: the owner was dropped by uid 65534
        if f"pid {os.getpid()}" not in reply.message or f"pid {parent}" not in reply.message:
            return 4
        return 0

    assert _child(attacker) == 0
    os.close(stolen)
    assert sub.device(0).ownership.owner is not None  # not dropped
    # The session itself is intact: its own process still drops master.
    assert proc.ioctl(fd, CORE.DRM_IOCTL_DROP_MASTER) == 0
    proc.close(fd)
    proc.exit()
    assert wait_for(lambda: sub.accounting() == base)
    summary("uid 65534 child on the root session's socket: EPERM, owner kept")


@pytest.mark.skipif(not ROOT, reason="dropping to uid 65534 needs root")
def test_same_process_after_setuid_is_refused(served: tuple[Server, Machine]) -> None:
    """The same pid with other credentials is another task too (kernel: current_cred())."""
    srv, machine = served
    rt = srv.runtime_dir
    base = machine.subsystem.accounting()

    def body() -> int:
        proc = connect(rt)  # connects and says HELLO as root
        fd = proc.open("/dev/accel/accel0")
        _drop_to_nobody()
        try:
            proc.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, V.new("struct vaccel_nop", value=1))
        except OSError as exc:
            return 0 if exc.errno == errno.EPERM else 3
        return 2

    assert _child(body) == 0
    assert wait_for(lambda: machine.subsystem.accounting() == base)


def test_fork_child_and_passed_fd_use_their_own_session(
    served: tuple[Server, Machine], summary: Summary
) -> None:
    """Legitimate flows: a fork child's calls on an inherited descriptor go through a
    session of its own, and so do those of a process a descriptor was passed to."""
    srv, machine = served
    sub = machine.subsystem
    base = sub.accounting()
    proc = connect(srv.runtime_dir)
    fd = proc.open("/dev/accel/accel0")
    proc.ioctl(fd, CORE.DRM_IOCTL_SET_MASTER)
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def forked() -> int:
        nop = V.new("struct vaccel_nop", value=4)
        proc.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nop)  # the client reconnects as this pid
        if nop.result != 5:
            return 2
        # And a descriptor received from another process works here, as this pid.
        _, fds = recv_fds(there)
        nop = V.new("struct vaccel_nop", value=7)
        proc.ioctl(fds[0], V.DRM_IOCTL_VACCEL_NOP, nop)
        return 0 if nop.result == 8 else 3

    fd2 = proc.open("/dev/accel/accel1")
    send_fds(here, [fd2])
    assert _child(forked) == 0
    here.close()
    there.close()
    proc.close(fd2)
    proc.close(fd)
    proc.exit()
    assert wait_for(lambda: sub.accounting() == base)
    summary("fork child and fd receiver: calls served through their own sessions")


# -- native sessions and pid reuse ---------------------------------------------------------


def _native_session(rt: Path) -> tuple[socket.socket, socket.socket]:
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctl.connect(str(rt / "control"))
    send_record(ctl, p.encode(p.Hello(native=True), 1))
    welcome = p.decode(recv_record(ctl)[0]).message
    assert isinstance(welcome, p.Welcome)
    dev = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dev.connect(str(rt / "dev/accel/accel0"))
    send_record(dev, p.encode(p.Open(os.O_RDWR, welcome.token)), [dev.fileno()])
    opened = p.decode(recv_record(dev)[0]).message
    assert isinstance(opened, p.Result) and opened.errno == 0
    return ctl, dev


def test_native_session_ends_when_its_process_exits(
    served: tuple[Server, Machine], summary: Summary
) -> None:
    """P opens a native session, hands its sockets to us and exits: the server ends
    the session (pidfd watch) although we keep the sockets, and a call we send on
    them is not served as P."""
    srv, _ = served
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through its exit status
        code = 9
        try:
            signal.alarm(20)
            ctl, dev = _native_session(srv.runtime_dir)
            send_fds(there, [ctl.fileno(), dev.fileno()])
            code = 0
        finally:
            os._exit(code)
    _, fds = recv_fds(here)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ctl = socket.socket(fileno=fds[0])
    dev = socket.socket(fileno=fds[1])
    try:
        assert wait_for(lambda: pid not in srv.session_pids())
        out = ctypes.create_string_buffer(b"clean", 64)
        arg = ctypes.create_string_buffer(
            bytes(
                CORE.ffi.buffer(
                    CORE.new(
                        "struct accel_info",
                        op=CORE.ACCEL_INFO_DEVICE,
                        return_pointer=ctypes.addressof(out),
                        return_size=len(out),
                    )
                )
            )
        )
        ctl.settimeout(10)
        with __import__("contextlib").suppress(OSError):
            send_record(
                ctl,
                p.encode(p.Ioctl(CORE.ACCEL_IOCTL_INFO, ctypes.addressof(arg), dev.fileno()), 3),
                [dev.fileno()],
            )
        try:
            data, rfds = recv_record(ctl)
        except OSError:
            data, rfds = b"", []
        close_all(rfds)
        assert not data or p.decode(data).message.errno == errno.EPERM  # type: ignore[attr-defined]
        assert out.value == b"clean"
    finally:
        ctl.close()
        dev.close()
        here.close()
        there.close()
    summary(f"native session of exited pid {pid} ended; its sockets serve nothing")


def _reap_at(pid: int, tries: int = 200) -> tuple[int, int, int]:
    """Fork a victim at ``pid`` (ns_last_pid), which waits on a pipe and then reports
    what its copy of ``_VICTIM`` holds; ``(victim pid, cmd write end, report read end)``.
    Skips where ``ns_last_pid`` cannot be written (no CAP_SYS_ADMIN over the pid
    namespace); fails if other processes took the pid every time."""
    for _ in range(tries):
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        except OSError as exc:
            for fd in (cmd_r, cmd_w, rep_r, rep_w):
                os.close(fd)
            pytest.skip(f"ns_last_pid is not writable here ({exc.strerror}): no pid placement")
        v = os.fork()
        if v == 0:  # pragma: no cover - reports through the pipe
            try:
                signal.alarm(20)
                os.read(cmd_r, 1)
                os.write(rep_w, _VICTIM.raw)
            finally:
                os._exit(0)
        os.close(cmd_r)
        os.close(rep_w)
        if v == pid:
            return v, cmd_w, rep_r
        os.close(cmd_w)
        os.kill(v, signal.SIGKILL)
        os.waitpid(v, 0)
        os.close(rep_r)
    raise AssertionError(f"could not fork a process at pid {pid} in {tries} tries")


_VICTIM = ctypes.create_string_buffer(b"victim-memory", 32)


@pytest.mark.skipif(not ROOT, reason="placing a process at a pid (ns_last_pid) needs root")
def test_remote_access_after_pid_reuse_touches_nothing() -> None:
    r, w = os.pipe()
    x = os.fork()
    if x == 0:  # pragma: no cover
        signal.alarm(20)
        os.read(r, 1)
        os._exit(0)
    mm = open_native(x)  # the session's address space, holding x's pidfd
    try:
        assert mm.copy_from_user(ctypes.addressof(_VICTIM), 6) == b"victim"
        os.write(w, b"x")
        os.waitpid(x, 0)
        poller = select.poll()  # not select(): descriptors may be above FD_SETSIZE
        poller.register(mm.pidfd, select.POLLIN)
        assert poller.poll(0)  # the pidfd says: exited
        v, cmd_w, rep_r = _reap_at(x)
        try:
            addr = ctypes.addressof(_VICTIM)
            for attempt in (
                lambda: mm.copy_to_user(addr, b"PWNED"),
                lambda: mm.copy_from_user(addr, 6),
                lambda: mm.check(addr, 6, write=True),
            ):
                with pytest.raises(BadAddress) as info:
                    attempt()
                assert info.value.errno == errno.EFAULT
                assert f"pid {x} has exited" in str(info.value)
            os.write(cmd_w, b"x")
            assert os.read(rep_r, 64).rstrip(b"\0") == b"victim-memory"  # untouched
        finally:
            os.close(cmd_w)
            os.close(rep_r)
            os.waitpid(v, 0)
    finally:
        mm.clear()
        os.close(r)
        os.close(w)
