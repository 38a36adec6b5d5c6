"""No client can starve the others (issue 16 §2): the server's per-client and
per-uid caps (:class:`accelcore.server.limits.ServerLimits`) hold with their errno,
a second well-behaved process keeps being served meanwhile (within
:data:`PEER_DEADLINE` seconds: a bound on a hang, not a speed target), and the
ledger, the accounting, the server's descriptors and threads return to baseline."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accelcore import CORE
from accelcore.machine import Machine
from accelcore.memory import PAGE_SIZE
from accelcore.server import Server, connect
from accelcore.server import protocol as p
from accelcore.server.daemon import load_machine, uevents
from accelcore.server.limits import ServerLimits
from accelcore.server.wire import recv_record, send_record
from accelcore.testing.vaccel import VACCEL_UAPI as V

from .conftest import VACCEL_MACHINE, open_fds, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(60)]

Summary = Callable[[str], None]
MiB = 1 << 20
#: Seconds within which the well-behaved peer must have been served.
PEER_DEADLINE = 5.0

LIMITS = ServerLimits(
    arenas_per_client=6,
    address_space_per_client=256 * MiB,
    address_space_per_uid=384 * MiB,
    mappings_per_client=4,
    uevent_queue=8,
    hello_timeout=0.5,
)


def _threads() -> int:
    return threading.active_count()


@pytest.fixture
def capped(rt: Path) -> Iterator[tuple[Server, Machine]]:
    machine = load_machine(VACCEL_MACHINE)
    srv = Server(machine, rt, limits=LIMITS)
    srv.start()
    yield srv, machine
    srv.stop()
    machine.shutdown()


def _peer_served(rt: Path) -> bool:
    """A different process connects, opens accel1 and runs a NOP within
    :data:`PEER_DEADLINE` seconds (fork; exit status; killed past the deadline)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through its exit status
        code = 1
        try:
            proc = connect(rt)
            fd = proc.open("/dev/accel/accel1")
            nop = V.new("struct vaccel_nop", value=1)
            proc.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nop)
            code = 0 if nop.result == 2 else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + PEER_DEADLINE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return False


def _baseline(server: Server, machine: Machine) -> Callable[[], None]:
    """Record accounting, descriptors and threads now; the returned check waits
    until all are back (and the ledger is empty)."""
    acc, fds, threads = machine.subsystem.accounting(), open_fds(), _threads()

    def back() -> None:
        assert wait_for(lambda: machine.subsystem.accounting() == acc)
        assert wait_for(server.ledger.empty)
        assert wait_for(lambda: open_fds() == fds)
        assert wait_for(lambda: _threads() <= threads)

    return back


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def _add_arena(proc: object, size: int) -> int:
    try:
        proc._add_arena(size)  # type: ignore[attr-defined]
    except OSError as exc:
        return exc.errno or -1
    return 0


def test_huge_sparse_arenas_are_enomem_and_map_nothing(
    capped: tuple[Server, Machine], summary: Summary
) -> None:
    """The attack that filled the server's address space with sparse memfds."""
    server, machine = capped
    back = _baseline(server, machine)
    vm = _vm_size()
    hog = connect(server.runtime_dir)  # its first arena: 64 MiB
    fd = os.memfd_create("hog", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 1 << 40)  # 1 TiB, sparse
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    refused = 0
    for _ in range(50):
        reply, _ = hog._chan.call(p.AddArena(1 << 32, 1 << 40), [fd])  # type: ignore[union-attr]
        assert isinstance(reply, p.Result) and reply.errno == errno.ENOMEM
        refused += 1
    os.close(fd)
    assert _vm_size() - vm < 1 << 30  # the server mapped none of it
    assert _peer_served(server.runtime_dir)
    hog.exit()
    back()
    summary(f"arenas: {refused} x 1 TiB sparse arena -> ENOMEM, no mapping; peer served")


def test_arena_count_and_bytes_are_capped_per_client_and_per_uid(
    capped: tuple[Server, Machine], summary: Summary
) -> None:
    server, machine = capped
    back = _baseline(server, machine)
    a = connect(server.runtime_dir)  # 64 MiB
    assert [_add_arena(a, 64 * MiB) for _ in range(3)] == [0, 0, 0]  # 256 MiB: the cap
    assert _add_arena(a, 64 * MiB) == errno.ENOMEM
    assert [_add_arena(a, PAGE_SIZE) for _ in range(2)] == [errno.ENOMEM] * 2
    assert server.ledger.used("address_space", pid=os.getpid()) == 256 * MiB

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - same uid, another process: reports codes
        codes = []
        try:
            b = connect(server.runtime_dir)  # 64 MiB: uid at 320 of 384 MiB
            codes = [_add_arena(b, 64 * MiB), _add_arena(b, 64 * MiB)]
            b.exit()
        finally:
            os.write(w, repr(codes).encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        codes = f.read()
    os.waitpid(pid, 0)
    assert codes == repr([0, errno.ENOMEM])  # the uid's cap, not the process's
    assert wait_for(lambda: server.ledger.used("address_space", uid=os.getuid()) == 256 * MiB)
    assert _peer_served(server.runtime_dir)  # a small newcomer still fits
    a.exit()
    back()

    few = connect(server.runtime_dir)  # the count cap: 6 arenas of one page
    assert [_add_arena(few, PAGE_SIZE) for _ in range(6)] == [0] * 5 + [errno.ENOMEM]
    few.exit()
    back()
    summary("arenas: 256 MiB per client, 384 MiB per uid, 6 per client -> ENOMEM")


def test_mappings_are_capped_per_client(capped: tuple[Server, Machine], summary: Summary) -> None:
    server, machine = capped
    back = _baseline(server, machine)
    proc = connect(server.runtime_dir)
    fd = proc.open("/dev/accel/accel0")
    bo = V.new("struct vaccel_create_bo", size=PAGE_SIZE)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    off = int(bo.mmap_offset)
    maps = [proc.mmap(fd, PAGE_SIZE, off) for _ in range(4)]
    with pytest.raises(OSError) as exc:
        proc.mmap(fd, PAGE_SIZE, off)
    assert exc.value.errno == errno.ENOMEM and "mappings" in str(exc.value)
    assert _peer_served(server.runtime_dir)
    maps.pop().unmap()
    maps.append(proc.mmap(fd, PAGE_SIZE, off))  # room again
    proc.exit()
    back()
    summary("mappings: cap 4 per client -> ENOMEM; munmap makes room; peer served")


@pytest.mark.parametrize("where", ["control", "node"])
def test_silent_connections_are_closed_after_the_hello_timeout(
    capped: tuple[Server, Machine], summary: Summary, where: str
) -> None:
    server, machine = capped
    back = _baseline(server, machine)
    path = server.control_path if where == "control" else server.socket_path("/dev/accel/accel0")
    silent = []
    for _ in range(4):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(str(path))
        s.settimeout(PEER_DEADLINE)
        silent.append(s)
    assert _peer_served(server.runtime_dir)
    for s in silent:
        data, _ = recv_record(s)  # end of file: the server gave up on it
        assert data == b""
        s.close()
    back()
    summary(f"{where}: 4 silent connections closed after {LIMITS.hello_timeout} s; peer served")


def test_a_subscriber_that_does_not_read_gets_an_overflow_marker(
    capped: tuple[Server, Machine], summary: Summary
) -> None:
    server, machine = capped
    back = _baseline(server, machine)
    events = uevents(server.runtime_dir)
    sock_ready = threading.Event()
    first: list[dict[str, object]] = []

    def subscribe() -> None:
        sock_ready.set()
        first.append(next(events))

    # The generator subscribes on its first next(); emit only after that.
    t = threading.Thread(target=subscribe)
    t.start()
    sock_ready.wait()
    assert wait_for(lambda: len(server._connections) == 1)
    time.sleep(0.2)
    dev = machine.subsystem.device(0)
    sent = 4000  # far more than the socket buffer and the queue hold
    with machine.clock.lock:
        for _ in range(sent):
            machine.sysfs.emit("change", dev.sysfs)
    t.join(PEER_DEADLINE)
    assert _peer_served(server.runtime_dir)  # the flood starved no one
    got, markers, dropped = 0, 0, 0
    while markers == 0 or got + dropped < sent:
        ev = first.pop() if first else next(events)
        if ev["action"] == "overflow":
            markers += 1
            env = ev["env"]
            assert isinstance(env, dict) and env["ERRNO"] == "ENOBUFS"
            dropped += int(env["DROPPED"])
        else:
            got += 1
    assert markers >= 1 and dropped > 0 and got + dropped == sent
    events.close()
    back()
    summary(f"uevents: {sent} emitted to a reader that paused: {got} kept, {dropped} dropped")


def test_exhausted_descriptors_are_emfile_not_a_protocol_error() -> None:
    """A record whose descriptors the receiver has no room for is EMFILE (the
    kernel sets MSG_CTRUNC then too), not "too many descriptors in one record"."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through its exit status
        code = 1
        try:
            top = max(int(f) for f in os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, top + 1))
            with contextlib.suppress(OSError):  # fill the holes below the limit
                while True:
                    os.dup(0)
            try:
                recv_record(b)
            except OSError as exc:
                code = 0 if exc.errno == errno.EMFILE else 2
        finally:
            os._exit(code)
    send_record(a, b"x", [r, w, r, w])
    _, status = os.waitpid(pid, 0)
    for fd in (r, w):
        os.close(fd)
    a.close()
    b.close()
    assert os.waitstatus_to_exitcode(status) == 0


def test_emfile_in_accept_refuses_without_spinning(rt: Path, summary: Summary) -> None:
    """The server out of descriptors: pending connections are taken and closed
    with the reserve descriptor, the selector does not spin, and once descriptors
    are free again a peer is served."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the server, reports through the pipe
        try:
            machine = load_machine(VACCEL_MACHINE)
            # Accepted connections stay silent through the measurement.
            srv = Server(machine, rt, limits=ServerLimits(hello_timeout=3.0))
            srv.start()
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            top = max(int(f) for f in os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (top + 3, hard))
            fillers = []
            with contextlib.suppress(OSError):  # fill the holes: 2 descriptors left
                while True:
                    fillers.append(os.dup(0))
            for fd in fillers[-2:]:
                os.close(fd)
            os.write(ready_w, b"r")
            os.read(r, 1)  # the attack is on
            cpu0, t0 = time.process_time(), time.monotonic()
            time.sleep(1.0)
            cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            os.write(ready_w, f"{cpu:.3f}".encode())
            os.read(r, 1)  # the peer was tried
            srv.stop()
            machine.shutdown()
        finally:
            os._exit(0)
    assert os.read(ready_r, 1) == b"r"
    conns = []
    for _ in range(16):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(str(rt / "control"))
        conns.append(s)
    os.write(w, b"g")
    cpu = float(os.read(ready_r, 64))
    closed = 0
    for s in conns:
        s.settimeout(PEER_DEADLINE)
        try:
            if s.recv(64) == b"":
                closed += 1
        except OSError:
            closed += 1
        s.close()
    served = _peer_served(rt)
    os.write(w, b"d")
    os.waitpid(pid, 0)
    for fd in (r, w, ready_r, ready_w):
        os.close(fd)
    assert cpu < 0.1  # a selector spinning on the pending connection used 30% here
    assert closed >= 10  # refused (closed), not left pending
    assert served
    summary(f"EMFILE in accept: {closed}/16 refused, server CPU {cpu:.0%} meanwhile; peer served")


def test_exported_files_are_capped_per_uid(rt: Path, summary: Summary) -> None:
    machine = load_machine(VACCEL_MACHINE)
    server = Server(machine, rt, limits=ServerLimits(files_per_client=8, files_per_uid=10))
    server.start()
    try:
        back = _baseline(server, machine)
        a = connect(rt)
        fds = [a.open("/dev/accel/accel0") for _ in range(6)]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - same uid, another process
            codes = []
            try:
                b = connect(rt)
                for _ in range(5):
                    try:
                        b.open("/dev/accel/accel1")
                        codes.append(0)
                    except OSError as exc:
                        codes.append(exc.errno or -1)
            finally:
                os.write(w, repr(codes).encode())
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            codes = f.read()
        os.waitpid(pid, 0)
        assert codes == repr([0, 0, 0, 0, errno.EMFILE])  # 6 + 4 = the uid's 10
        bo = V.new("struct vaccel_create_bo", size=PAGE_SIZE)
        a.ioctl(fds[0], V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
        ph = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC)
        assert wait_for(lambda: server.files_of_uid(os.getuid()) == 6)
        a.ioctl(fds[0], CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)  # 7 of 8 for the pid
        a.exit()
        back()
    finally:
        server.stop()
        machine.shutdown()
    summary("open files: per-uid cap 10 over two processes -> EMFILE on the 11th")


def test_buffers_are_capped_per_client_and_per_uid(rt: Path, summary: Summary) -> None:
    """vaccel takes buffers of up to 4 GiB each: the server charges what a client's
    calls allocate to it and its uid (count and bytes) until it is freed."""
    machine = load_machine(VACCEL_MACHINE)
    limits = ServerLimits(
        buffers_per_client=8, buffer_bytes_per_client=64 * MiB, buffer_bytes_per_uid=96 * MiB
    )
    server = Server(machine, rt, limits=limits)
    server.start()

    def create(proc: object, fd: int, size: int) -> int:
        bo = V.new("struct vaccel_create_bo", size=size)
        try:
            proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)  # type: ignore[attr-defined]
        except OSError as exc:
            return exc.errno or -1
        return 0

    try:
        back = _baseline(server, machine)
        a = connect(rt)
        fa = a.open("/dev/accel/accel0")
        assert [create(a, fa, PAGE_SIZE) for _ in range(9)] == [0] * 8 + [errno.ENOMEM]
        a.exit()
        back()
        a = connect(rt)
        fa = a.open("/dev/accel/accel0")
        assert [create(a, fa, 32 * MiB) for _ in range(3)] == [0, 0, errno.ENOMEM]
        assert server.ledger.used("buffer_bytes", pid=os.getpid()) == 64 * MiB
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - same uid, another process
            codes = []
            try:
                b = connect(rt)
                fb = b.open("/dev/accel/accel1")
                codes = [create(b, fb, 32 * MiB), create(b, fb, PAGE_SIZE)]
                b.exit()
            finally:
                os.write(w, repr(codes).encode())
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            codes = f.read()
        os.waitpid(pid, 0)
        assert codes == repr([0, errno.ENOMEM])  # 64 + 32 MiB: the uid's cap
        assert wait_for(lambda: server.ledger.used("buffer_bytes", uid=os.getuid()) == 64 * MiB)
        assert _peer_served(rt)
        a.exit()
        back()
    finally:
        server.stop()
        machine.shutdown()
    summary("buffers: 8 per client, 64 MiB per client, 96 MiB per uid -> ENOMEM; peer served")


@pytest.mark.skipif(os.getuid() != 0, reason="a peer of another uid needs root")
def test_sessions_are_capped_per_uid_and_another_uid_is_served(rt: Path, summary: Summary) -> None:
    machine = load_machine(VACCEL_MACHINE)
    server = Server(machine, rt, limits=ServerLimits(sessions_per_client=4, sessions_per_uid=6))
    server.start()
    try:
        back = _baseline(server, machine)
        mine = [connect(rt) for _ in range(4)]
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - same uid, another process
            codes: list[int] = []
            held = []
            try:
                for _ in range(3):
                    try:
                        held.append(connect(rt))
                        codes.append(0)
                    except OSError as exc:
                        codes.append(exc.errno or -1)
                os.write(w, repr(codes).encode())
                os.read(go_r, 1)  # hold them while the other uid is served
            finally:
                os._exit(0)
        codes = os.read(r, 100).decode()
        assert codes == repr([0, 0, errno.EMFILE])  # 4 + 2 = the uid's 6

        def nobody_served() -> bool:
            child = os.fork()
            if child == 0:  # pragma: no cover - reports through its exit status
                code = 1
                try:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                    code = 0 if _peer_served(rt) else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(child, 0)
            return os.waitstatus_to_exitcode(status) == 0

        assert nobody_served()
        os.write(go_w, b"g")
        os.waitpid(pid, 0)
        for fd in (r, w, go_r, go_w):
            os.close(fd)
        for proc in mine:
            proc.exit()
        back()
    finally:
        server.stop()
        machine.shutdown()
    summary("sessions: per-uid cap 6 over two processes -> EMFILE; uid 65534 served meanwhile")


@pytest.mark.long
def test_soak_hostile_clients_rotate_attacks(
    capped: tuple[Server, Machine], summary: Summary
) -> None:
    """Soak: forked hostile clients, round after round, fill their arena and buffer
    caps, leave silent connections and die with everything held; a peer is
    served every round and all returns to baseline."""
    server, machine = capped
    back = _baseline(server, machine)
    rounds = 30
    for _ in range(rounds):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the hostile client; killed mid-way
            try:
                hog = connect(server.runtime_dir)
                while _add_arena(hog, 64 * MiB) == 0:
                    pass
                fd = hog.open("/dev/accel/accel0")
                for _ in range(64):
                    bo = V.new("struct vaccel_create_bo", size=PAGE_SIZE)
                    hog.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.connect(str(server.control_path))
                time.sleep(30)
            finally:
                os._exit(0)
        assert wait_for(lambda pid=pid: server.ledger.used("buffers", pid=pid) == 64)
        assert _peer_served(server.runtime_dir)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    back()
    summary(f"soak: {rounds} hostile clients killed holding their caps; peer served each round")
