"""The runtime directory and the sockets (issue 16 §1): the server refuses a
directory or path another user could have planted, never writes through or removes
what it did not make; a client talks to no socket of another uid; the socket
modes follow the documented policy."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accelcore.errors import PermissionDenied
from accelcore.machine import Machine
from accelcore.server import Server, connect
from accelcore.server.daemon import control_request, load_machine, spawn_server
from accelcore.server.rundir import UnsafeRuntimeDir
from accelcore.server.server import default_runtime_dir

from .conftest import VACCEL_MACHINE, open_fds

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(60)]

NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="a second uid needs root")


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = load_machine(VACCEL_MACHINE)
    yield m
    m.shutdown()


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="accel-rd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _refused(machine: Machine, rt: Path) -> UnsafeRuntimeDir:
    srv = Server(machine, rt)
    with pytest.raises(UnsafeRuntimeDir) as exc:
        srv.start()
    assert exc.value.errno == errno.EPERM
    return exc.value


def test_a_symlinked_runtime_dir_is_refused(machine: Machine, base: Path) -> None:
    target = base / "elsewhere"
    target.mkdir(mode=0o700)
    (base / "rt").symlink_to(target)
    err = _refused(machine, base / "rt")
    assert str(base / "rt") in str(err) and "symlink" in str(err)
    assert os.listdir(target) == []  # nothing made through it


@pytest.mark.parametrize("mode", [0o777, 0o720, 0o702])
def test_a_runtime_dir_others_may_write_is_refused(machine: Machine, base: Path, mode: int) -> None:
    rt = base / "rt"
    rt.mkdir()
    rt.chmod(mode)
    err = _refused(machine, rt)
    assert f"{mode:04o}" in str(err) and f"owner uid {os.geteuid()}" in str(err)
    assert os.listdir(rt) == []


@needs_root
def test_a_runtime_dir_of_another_uid_is_refused(machine: Machine, base: Path) -> None:
    rt = base / "rt"
    rt.mkdir(mode=0o700)
    os.chown(rt, NOBODY, NOBODY)
    err = _refused(machine, rt)
    assert f"owner uid {NOBODY}" in str(err) and str(rt) in str(err)


@pytest.mark.parametrize("planted", ["control", "dev", "server.pid"])
def test_a_symlink_planted_in_the_runtime_dir_is_refused_and_not_followed(
    machine: Machine, base: Path, planted: str
) -> None:
    rt = base / "rt"
    rt.mkdir(mode=0o700)
    victim = base / "victim"
    victim.mkdir() if planted == "dev" else victim.write_text("precious")
    (rt / planted).symlink_to(victim)
    err = _refused(machine, rt)
    assert str(rt / planted) in str(err)
    assert (rt / planted).is_symlink()  # not removed
    if planted == "dev":
        assert os.listdir(victim) == []
    else:
        assert victim.read_text() == "precious"


def test_a_file_where_a_socket_goes_is_refused_and_kept(machine: Machine, base: Path) -> None:
    rt = base / "rt"
    (rt / "dev" / "accel").mkdir(parents=True, mode=0o700)
    (rt / "dev" / "accel" / "accel0").write_text("not a socket")
    err = _refused(machine, rt)
    assert str(rt / "dev" / "accel" / "accel0") in str(err) and "did not make it" in str(err)
    assert (rt / "dev" / "accel" / "accel0").read_text() == "not a socket"
    assert not (rt / "control").exists() and not (rt / "server.pid").exists()


def test_stop_removes_only_what_the_server_made(machine: Machine, base: Path) -> None:
    rt = base / "rt"
    srv = Server(machine, rt)
    srv.start()
    assert stat.S_IMODE(os.lstat(rt).st_mode) == 0o700  # made with mkdir 0700
    assert (rt / "server.pid").read_text().strip() == str(os.getpid())
    # Someone (of our uid) replaces the control socket with their own.
    os.unlink(rt / "control")
    other = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    other.bind(str(rt / "control"))
    try:
        srv.stop()
        assert stat.S_ISSOCK(os.lstat(rt / "control").st_mode)  # not ours: left alone
        assert not (rt / "server.pid").exists()
        assert not (rt / "dev" / "accel" / "accel0").exists()
    finally:
        other.close()


def test_the_temp_dir_fallback_is_private(
    machine: Machine, base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACCEL_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    rt = default_runtime_dir()
    assert rt == base / f"accelcore-{os.geteuid()}"
    rt.mkdir(mode=0o755)  # planted (or left) readable by others: refused
    rt.chmod(0o755)
    err = _refused(machine, rt)
    assert "0700" in str(err)
    rt.rmdir()
    srv = Server(machine)
    srv.start()
    try:
        st = os.lstat(rt)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == os.geteuid()
    finally:
        srv.stop()


def test_spawn_refuses_a_planted_log_symlink(base: Path) -> None:
    rt = base / "rt"
    rt.mkdir(mode=0o700)
    victim = base / "victim"
    victim.write_text("precious")
    (rt / "server.log").symlink_to(victim)
    with pytest.raises(UnsafeRuntimeDir) as exc:
        spawn_server(VACCEL_MACHINE, rt)
    assert str(rt / "server.log") in str(exc.value)
    assert victim.read_text() == "precious"
    assert not (rt / "control").exists()


# -- a second uid ---------------------------------------------------------------------------


def _as_nobody(body: Callable[[], int]) -> int:
    """Run ``body`` in a forked child as uid/gid 65534; its return is the exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through its exit status
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@needs_root
def test_an_impostor_socket_of_another_uid_gets_nothing(base: Path) -> None:
    """Another user plants a control socket where a client looks for the server:
    the client checks SO_PEERCRED first, refuses with EACCES and sends nothing
    (not HELLO, not its arena)."""
    base.chmod(0o755)
    rt = base / "rt"
    rt.mkdir(mode=0o755)
    os.chown(rt, NOBODY, NOBODY)
    fds = open_fds()
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the impostor, reports through the pipe
        try:
            os.close(r)
            os.close(ready_r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            lsock.bind(str(rt / "control"))
            os.chmod(rt / "control", 0o666)
            lsock.listen(8)
            os.write(ready_w, b"r")
            got = 0
            lsock.settimeout(10)
            for _ in range(2):  # ClientProcess, then control_request
                conn, _ = lsock.accept()
                conn.settimeout(10)
                while True:
                    data, anc, _f, _a = conn.recvmsg(1 << 16, 1024)
                    if not data and not anc:
                        break
                    got += len(data) + len(anc)
                conn.close()
            os.write(w, str(got).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"r"
    os.close(ready_r)
    with pytest.raises(PermissionDenied) as exc:
        connect(rt)
    assert exc.value.errno == errno.EACCES
    assert f"uid {NOBODY}" in str(exc.value) and str(rt / "control") in str(exc.value)
    with pytest.raises(PermissionDenied):
        control_request("status", rt)
    with os.fdopen(r) as f:
        received = f.read()
    os.waitpid(pid, 0)
    assert received == "0"  # the impostor got no byte and no descriptor
    assert open_fds() == fds


@needs_root
def test_socket_policy_for_a_second_uid(machine: Machine, base: Path) -> None:
    """Sockets are 0666; who reaches them is the runtime directory's mode: with 0700
    another uid cannot connect at all (EACCES), with 0755 it gets a session and the
    node's own mode decides (0666 accel nodes open, control ops check the uid)."""
    base.chmod(0o755)
    rt = base / "rt"
    srv = Server(machine, rt)
    srv.start()
    try:
        for path in (rt / "control", rt / "dev" / "accel" / "accel0"):
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o666

        def reach() -> int:
            try:
                proc = connect(rt)
            except OSError as exc:
                return 3 if exc.errno == errno.EACCES else 10 + (exc.errno or 0)
            try:
                proc.open("/dev/accel/accel0")
                try:
                    control_request("shutdown", rt)
                except OSError as exc:
                    return 0 if exc.errno == errno.EPERM else 4
                return 5
            finally:
                proc.exit()

        assert _as_nobody(reach) == 3  # 0700: EACCES, no session
        rt.chmod(0o755)
        assert _as_nobody(reach) == 0  # 0755: a session, a node, no shutdown
    finally:
        srv.stop()
