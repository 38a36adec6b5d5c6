"""Faults of the server itself (issue 16 §5): ``stop`` always ends the server it
started (wedged, or with a monitor subscribed) and leaves no socket or pid file;
clients of a server that died get ``ENODEV`` for every call, promptly also for a
blocked one; a session the server closed releases its files and ownership at once.

Bounds on time here are bounds on a hang (a stuck stop, a wait that never
returns), not speed targets."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accelcore.errors import NoDevice
from accelcore.machine import Machine
from accelcore.memory import PAGE_SIZE
from accelcore.server import ClientProcess, Server, connect
from accelcore.server.daemon import (
    STOP_ANSWER_TIMEOUT,
    STOP_GRACE,
    spawn_server,
    stop_server,
    uevents,
)
from accelcore.testing.vaccel import VACCEL_UAPI as V

from .conftest import VACCEL_MACHINE, open_fds, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(60)]

Summary = Callable[[str], None]
#: Seconds within which a client learns that its server died.
PROMPT = 3.0


def _leftovers(rt: Path) -> list[str]:
    """What a server left in ``rt`` besides its log and machine description."""
    return sorted(
        str(Path(d, f).relative_to(rt))
        for d, _, files in os.walk(rt)
        for f in files
        if f not in ("server.log", "machine.json")
    )


@pytest.fixture
def spawned(rt: Path) -> Iterator[int]:
    pid = spawn_server(VACCEL_MACHINE, rt, timeout=30)
    yield pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    stop_server(rt)


def _gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_stop_ends_a_wedged_server(rt: Path, spawned: int, summary: Summary) -> None:
    os.kill(spawned, signal.SIGSTOP)  # wedged: answers nothing
    t0 = time.monotonic()
    assert stop_server(rt)
    took = time.monotonic() - t0
    assert _gone(spawned)
    assert _leftovers(rt) == []
    assert took < STOP_ANSWER_TIMEOUT + 3 * STOP_GRACE + 2
    summary(f"stop: SIGSTOPped server ended by pid file escalation in {took:.1f} s, no leftovers")


def test_stop_with_a_monitor_subscribed_is_a_clean_shutdown(
    rt: Path, spawned: int, summary: Summary
) -> None:
    seen: list[str] = []
    stream = uevents(rt)
    ended = threading.Event()

    def monitor() -> None:
        for ev in stream:
            seen.append(str(ev["action"]))
        ended.set()

    t = threading.Thread(target=monitor, daemon=True)
    t.start()
    proc = connect(rt)
    fd = proc.open("/dev/accel/accel0")
    blocked: list[BaseException] = []
    reader = threading.Thread(target=lambda: blocked.append(_raised(lambda: proc.read(fd, 64))))
    reader.start()
    time.sleep(0.3)  # subscribed, and the read sleeps in the server
    t0 = time.monotonic()
    assert stop_server(rt)
    took = time.monotonic() - t0
    assert ended.wait(PROMPT)  # the subscription was interrupted
    reader.join(PROMPT)
    # The read the stop interrupted is ENODEV (the device went away), not EINTR.
    assert isinstance(blocked[0], NoDevice) and blocked[0].errno == errno.ENODEV
    proc.exit()
    assert _gone(spawned)
    assert _leftovers(rt) == []
    assert took < STOP_GRACE  # the shutdown request did it, no signal was needed
    summary(f"stop with a monitor: clean shutdown in {took:.2f} s, monitor ended")


def test_clients_of_a_dead_server_get_enodev(rt: Path, spawned: int, summary: Summary) -> None:
    proc = connect(rt)
    fd = proc.open("/dev/accel/accel0")
    bo = V.new("struct vaccel_create_bo", size=PAGE_SIZE)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    blocked: list[BaseException] = []
    returned = threading.Event()

    def wait() -> None:
        try:
            proc.read(fd, 4096)  # sleeps in the server until an event comes
        except BaseException as exc:
            blocked.append(exc)
        returned.set()

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    time.sleep(0.2)
    os.kill(spawned, signal.SIGKILL)
    assert returned.wait(PROMPT)
    assert isinstance(blocked[0], NoDevice) and blocked[0].errno == errno.ENODEV
    calls: list[Callable[[], object]] = [
        lambda: proc.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, V.new("struct vaccel_nop", value=1)),
        lambda: proc.open("/dev/accel/accel1"),
        lambda: proc.mmap(fd, PAGE_SIZE, int(bo.mmap_offset)),
        lambda: proc.poll(fd),
        lambda: proc.alloc(1 << 30),  # needs a new arena: a call to the server
        proc.signal,
    ]
    for call in calls:
        with pytest.raises(NoDevice) as exc:
            call()
        assert exc.value.errno == errno.ENODEV
    proc.exit()
    assert not stop_server(rt)  # nothing runs; the dead server's leftovers go
    assert _leftovers(rt) == []
    summary(f"server SIGKILLed: blocked read and {len(calls)} later calls -> ENODEV")


def test_a_session_the_server_closed_releases_ownership_at_once(
    served: tuple[Server, Machine], summary: Summary
) -> None:
    server, machine = served
    base, fds = machine.subsystem.accounting(), open_fds()
    proc = connect(server.runtime_dir)
    fd = proc.open("/dev/accel/accel0")
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, V.new("struct vaccel_create_bo", size=4096))
    dev = machine.subsystem.device(0)
    assert dev.ownership.owner is not None
    assert proc._chan is not None
    proc._chan.sock.send(b"\xff" * 64)  # a protocol violation: the server closes it
    # The client still holds its descriptor of accel0, but the ownership is gone.
    assert wait_for(lambda: dev.ownership.owner is None, PROMPT)
    with pytest.raises(NoDevice):
        proc.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, V.new("struct vaccel_nop", value=1))
    other = connect(server.runtime_dir)
    ofd = other.open("/dev/accel/accel0")
    other.ioctl(ofd, V.DRM_IOCTL_VACCEL_CREATE_BO, V.new("struct vaccel_create_bo", size=4096))
    other.exit()
    proc.exit()
    assert wait_for(lambda: machine.subsystem.accounting() == base)
    assert wait_for(lambda: open_fds() == fds)
    summary("session closed by the server: ownership released at once; the next owner served")


@pytest.mark.long
def test_soak_servers_killed_under_blocked_clients(rt: Path, summary: Summary) -> None:
    """Soak: a server killed (SIGKILL, or SIGSTOP then ``stop``) under a client
    blocked in the server, round after round: the client gets ENODEV promptly,
    ``stop`` leaves nothing, the next server starts on the same directory."""
    fds = open_fds()
    rounds = 8
    for i in range(rounds):
        pid = spawn_server(VACCEL_MACHINE, rt, timeout=30)
        proc = connect(rt)
        fd = proc.open("/dev/accel/accel0")
        errors: list[BaseException] = []

        def blocked(
            proc: ClientProcess = proc, fd: int = fd, out: list[BaseException] = errors
        ) -> None:
            out.append(_raised(lambda: proc.read(fd, 64)))

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.1)
        if i % 2:
            os.kill(pid, signal.SIGSTOP)
            assert stop_server(rt)
        else:
            os.kill(pid, signal.SIGKILL)
            assert wait_for(lambda pid=pid: _gone(pid))  # type: ignore[misc]
            assert not stop_server(rt)  # removes what the dead server left
        t.join(PROMPT)
        assert not t.is_alive() and isinstance(errors[0], NoDevice)
        proc.exit()
        assert _gone(pid) and _leftovers(rt) == []
    assert open_fds() == fds
    summary(f"soak: {rounds} servers killed under a blocked client: ENODEV each time")


def _raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except BaseException as exc:
        return exc
    raise AssertionError("the call returned")
