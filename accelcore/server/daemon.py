"""Running the devfs server as a process, and asking it questions.

``python -m accelcore.server [--config FILE] [--runtime-dir DIR]`` runs a server
in the foreground until SIGTERM/SIGINT or a ``shutdown`` control request.
:func:`spawn_server` starts one detached and waits until it serves;
:func:`stop_server` and :func:`server_status` talk to its control endpoint, as
``accelctl sim`` does.

A configuration is a machine description (TOML or JSON, see
:mod:`accelcore.machine`) plus an optional ``virtual`` list of devices without
a bus, e.g. ``virtual = [{driver = "vaccel", count = 1}]``. The server always
runs on a real-time clock (``speed`` in ``[machine]`` scales it).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..clock import RealClock
from ..errors import (
    DeviceIOError,
    InvalidArgument,
    NoDevice,
    PermissionDenied,
    TimedOut,
    error_for_errno,
)
from ..machine import DEFAULT_MACHINE, Machine
from . import protocol as p
from .limits import ServerLimits
from .rundir import check_entry, open_private, remove_if_ours
from .server import CONTROL_NAME, PID_NAME, Server, default_runtime_dir, prepare_runtime_dir
from .wire import close_all, connect_verified, recv_record, send_record

__all__ = [
    "ServerUnavailable",
    "control_request",
    "load_config",
    "load_machine",
    "main",
    "server_status",
    "spawn_server",
    "stop_server",
    "uevents",
]

log = logging.getLogger("accelcore.server")

_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


class ServerUnavailable(NoDevice):
    """``ENODEV``: no devfs server answers (none listens, or it went away mid-request);
    unlike a refusal, which is the :class:`~accelcore.errors.AccelError` of its errno."""


def load_config(config: Path | str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The description in ``config`` (a TOML/JSON file or a dict; ``None`` is the
    default machine).

    Raises:
        InvalidArgument: the file is not valid TOML/JSON.
    """
    if config is None:
        copy: dict[str, Any] = json.loads(json.dumps(DEFAULT_MACHINE))
        return copy
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    text = path.read_text()
    try:
        data: dict[str, Any] = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument(f"{path}: not a valid machine description: {exc}") from exc
    return data


def load_machine(description: Mapping[str, Any]) -> Machine:
    """Build the server's machine: real-time clock, PCI devices, virtual devices.

    Raises:
        InvalidArgument: a bad description or ``virtual`` entry.
        NoEntry: a driver is not installed.
    """
    desc = dict(description)
    virtual = desc.pop("virtual", [])
    section = desc.get("machine", {})
    speed = float(section.get("speed", 1.0)) if isinstance(section, Mapping) else 1.0
    machine = Machine.from_description(desc, clock=RealClock(speed))
    try:
        if not isinstance(virtual, list):
            raise InvalidArgument(f"virtual {virtual!r} must be a list of tables")
        for entry in virtual:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("driver"), str):
                raise InvalidArgument(f"virtual entry {entry!r} needs a driver name")
            drv = machine.subsystem.drivers.get(entry["driver"])
            if drv is None:
                raise InvalidArgument(
                    f"virtual device driver {entry['driver']!r} is not in [machine] drivers"
                )
            for _ in range(int(entry.get("count", 1))):
                machine.subsystem.create_device(drv)
    except BaseException:
        machine.shutdown()
        raise
    return machine


# -- talking to a server --------------------------------------------------------------


def _control_socket(runtime_dir: Path | str | None) -> socket.socket | None:
    """A connection to the control socket, ``None`` if nobody listens.

    Raises:
        PermissionDenied: the socket's server runs as another uid (not root).
    """
    rt = Path(runtime_dir) if runtime_dir is not None else default_runtime_dir()
    try:
        return connect_verified(rt / CONTROL_NAME)
    except ConnectionError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ECONNREFUSED, errno.ENOTSOCK):
            return None
        raise


def _ask(sock: socket.socket, request: dict[str, Any], timeout: float) -> Any:
    sock.settimeout(timeout)
    send_record(sock, p.encode(p.Control(request), 1))
    data, fds = recv_record(sock)
    close_all(fds)
    if not data:
        raise ServerUnavailable("the devfs server closed the control connection")
    msg = p.decode(data).message
    if not isinstance(msg, p.ControlReply):
        raise DeviceIOError(f"control reply was {msg.TYPE.name}")
    if not msg.reply.get("ok"):
        code = msg.reply.get("errno")
        # Servers before the errno field refused everything as EINVAL.
        if not isinstance(code, int) or isinstance(code, bool) or not 0 < code < 4096:
            code = errno.EINVAL
        raise error_for_errno(code, str(msg.reply.get("error")))
    return msg.reply.get("result")


def control_request(
    op: str, runtime_dir: Path | str | None = None, *, timeout: float = 10.0, **args: Any
) -> Any:
    """Ask the server's control endpoint: ``status``, ``devices``, ``nodes``,
    ``accounting``, ``shutdown``, ``sysfs``, ``store_attr``, ``reset``, ``trigger``,
    ``files``, ``bufinfo`` (see :mod:`accelcore.server.control_ops`); ``args`` are
    the request's fields.

    Raises:
        ServerUnavailable: no server answers.
        AccelError: the server refused the request: the subclass of the errno it
            gave (``EINVAL`` for a malformed request, ``EACCES``, ``ENOENT``…),
            with its message.
    """
    sock = _control_socket(runtime_dir)
    if sock is None:
        raise ServerUnavailable(f"no devfs server at {runtime_dir or default_runtime_dir()}")
    with sock:
        return _ask(sock, {"op": op, **args}, timeout)


def server_status(
    runtime_dir: Path | str | None = None, *, timeout: float = 10.0
) -> dict[str, Any] | None:
    """The server's status (pid, version, machine, accounting…), or ``None`` if no
    server answers at ``runtime_dir`` within ``timeout`` seconds.

    Raises:
        PermissionDenied: the socket there belongs to a server of another uid.
    """
    try:
        result: dict[str, Any] = control_request("status", runtime_dir, timeout=timeout)
    except PermissionDenied:
        raise
    except (NoDevice, OSError, p.ProtocolError):
        return None
    return result


def uevents(runtime_dir: Path | str | None = None) -> Iterator[dict[str, Any]]:
    """Subscribe to the server's uevents; yields one dict per event until the
    server goes away (close the generator to unsubscribe)."""
    sock = _control_socket(runtime_dir)
    if sock is None:
        raise ServerUnavailable(f"no devfs server at {runtime_dir or default_runtime_dir()}")
    with sock:
        _ask(sock, {"op": "subscribe"}, 10.0)
        sock.settimeout(None)
        while True:
            data, fds = recv_record(sock)
            close_all(fds)
            if not data:
                return
            msg = p.decode(data).message
            if isinstance(msg, p.Uevent):
                yield msg.event


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: not reaped, and not a zombie (a killed multithreaded
    process is a zombie before it can be reaped, while its threads exit)."""
    proc = _SPAWNED.get(pid)
    if proc is not None and proc.poll() is not None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def spawn_server(
    config: Path | str | Mapping[str, Any] | None = None,
    runtime_dir: Path | str | None = None,
    timeout: float = 10,
    limits: ServerLimits | None = None,
) -> int:
    """Start ``python -m accelcore.server`` detached (new session, output in
    ``<runtime>/server.log``) and wait until it serves.

    Args:
        config: Machine description (file or mapping; ``None``: the default).
        runtime_dir: Where the sockets go (made or checked as
            :mod:`~accelcore.server.rundir` says).
        timeout: Seconds to wait until it serves.
        limits: Its caps (:class:`~accelcore.server.limits.ServerLimits`).

    Returns:
        The server's pid.

    The server's interpreter runs with ``-P`` (safe path): the current directory
    is not put first on its import path, so a folder that happens to have a
    driver package's name (a source checkout) does not shadow the installed
    driver. ``PYTHONPATH`` still applies.

    Raises:
        TimedOut: it was not ready within ``timeout`` seconds (it is killed).
        DeviceIOError: it exited first; the message's first line gives the exit
            status and the reason the server logged, then the log's tail.
        UnsafeRuntimeDir: the runtime directory, its log or ``machine.json`` is a
            symlink, another user's, or writable by others.
    """
    rt = prepare_runtime_dir(
        Path(runtime_dir) if runtime_dir is not None else default_runtime_dir()
    )
    args = [sys.executable, "-P", "-m", "accelcore.server", "--runtime-dir", str(rt)]
    if limits is not None:
        args += limits.to_arguments()
    if isinstance(config, Mapping):
        cfg = rt / "machine.json"
        fd = open_private(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with open(fd, "w") as f:
            f.write(json.dumps(dict(config)))
        args += ["--config", str(cfg)]
    elif config is not None:
        args += ["--config", str(config)]
    logpath = rt / "server.log"
    logfd = open_private(logpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    r, w = os.pipe()
    args += ["--ready-fd", str(w)]
    with open(logfd, "ab") as logf:
        proc = subprocess.Popen(
            args,
            pass_fds=(w,),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
        )
    os.close(w)
    try:
        poller = select.poll()  # not select(): descriptors may be above FD_SETSIZE
        poller.register(r, select.POLLIN)
        ready = poller.poll(int(timeout * 1000))
        line = os.read(r, 64) if ready else None
    finally:
        os.close(r)
    if line is None:
        proc.kill()
        proc.wait()
        raise TimedOut(f"devfs server not ready after {timeout} s (log: {logpath})")
    if not line.startswith(b"ready"):
        proc.wait(timeout)
        tail = logpath.read_text(errors="replace")[-2000:]
        raise DeviceIOError(
            f"devfs server exited with status {proc.returncode}: {_reason(tail)}\n{tail}"
        )
    _SPAWNED[proc.pid] = proc
    return proc.pid


def _reason(log_tail: str) -> str:
    """Why the server exited, from its log: its last error line (without the
    timestamp), else the last line (a traceback's exception)."""
    lines = [ln.strip() for ln in log_tail.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if " ERROR " in ln:
            return ln.split(" ERROR ", 1)[1]
    return lines[-1] if lines else "no output (see the log)"


#: Seconds ``stop_server`` gives a server to answer before it counts as wedged.
STOP_ANSWER_TIMEOUT = 2.0
#: Seconds between the escalation steps of ``stop_server`` (shutdown, SIGTERM, SIGKILL).
STOP_GRACE = 2.0


def _read_pidfile(rt: Path) -> int | None:
    """The pid in ``rt/server.pid`` if that is a regular file of ours."""
    path = rt / PID_NAME
    try:
        if check_entry(path, stat.S_IFREG) is None:
            return None
        fd = open_private(path, os.O_RDONLY)
        with open(fd) as f:
            return int(f.read().strip() or "0")
    except (OSError, ValueError):
        return None


def _pidfile_pid(rt: Path) -> int | None:
    """The pid in ``rt/server.pid`` if it names a live ``accelcore.server``
    process (never this one)."""
    pid = _read_pidfile(rt)
    if pid is None or pid <= 0 or pid == os.getpid() or not _alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"accelcore.server" in cmdline else None


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _alive(pid)


def _remove_leftovers(rt: Path, pid: int) -> None:
    """After server ``pid`` died: remove its pid file and the sockets nobody listens
    on any more (only sockets and a pid file of ours, never through a symlink)."""
    if _read_pidfile(rt) == pid:
        remove_if_ours(rt / PID_NAME, kind=stat.S_IFREG)
    for dirpath, dirnames, filenames in os.walk(rt):  # os.walk does not follow symlinks
        for name in [*filenames, *dirnames]:
            sock_path = Path(dirpath) / name
            try:
                probe = connect_verified(sock_path)
            except OSError:
                remove_if_ours(sock_path, kind=stat.S_IFSOCK)
            else:
                probe.close()


def stop_server(runtime_dir: Path | str | None = None, timeout: float = 10) -> bool:
    """End the server at ``runtime_dir``, also a wedged one: ask it to shut down,
    then ``SIGTERM`` (with ``SIGCONT``, for a stopped one), then ``SIGKILL``, each
    step after ``STOP_GRACE`` seconds (the pid comes from ``server.pid`` when
    the server does not answer). Its pid file and sockets are removed if it could
    not remove them itself.

    A server that died without cleaning up (``SIGKILL``) has its leftovers removed
    too (then the result is ``False``).

    Returns:
        Whether a server was running.
    """
    rt = Path(runtime_dir) if runtime_dir is not None else default_runtime_dir()
    status = server_status(rt, timeout=STOP_ANSWER_TIMEOUT)
    pid = int(status["pid"]) if status is not None else _pidfile_pid(rt)
    if pid is None:
        dead = _read_pidfile(rt)
        # A server that died (SIGKILL) left them; one still exiting is waited for.
        if dead is not None and dead != os.getpid() and _wait_gone(dead, STOP_GRACE):
            _reap(dead, timeout)
            _remove_leftovers(rt, dead)
        return False
    if pid == os.getpid():  # an in-process server: only ask
        with contextlib.suppress(NoDevice, OSError, p.ProtocolError):
            control_request("shutdown", rt, timeout=STOP_ANSWER_TIMEOUT)
        return True
    if status is not None:
        with contextlib.suppress(NoDevice, OSError, p.ProtocolError):
            control_request("shutdown", rt, timeout=STOP_ANSWER_TIMEOUT)
    grace = min(STOP_GRACE, timeout)
    if not _wait_gone(pid, grace if status is None else timeout):
        for sig in (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if not _wait_gone(pid, grace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, grace)
    _reap(pid, timeout)
    _remove_leftovers(rt, pid)
    return True


def _reap(pid: int, timeout: float) -> None:
    """Wait for a server this process spawned (it is gone or going), so that it
    leaves no zombie and no ``Popen`` that believes it still runs."""
    proc = _SPAWNED.pop(pid, None)
    if proc is not None:
        proc.wait(timeout)


# -- the foreground server ---------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m accelcore.server``: serve until SIGTERM, SIGINT or ``shutdown``."""
    ap = argparse.ArgumentParser(
        prog="python -m accelcore.server",
        description="Serve a simulated machine's accel device "
        "nodes to real processes over Unix sockets.",
    )
    ap.add_argument("--config", help="machine description (TOML or JSON)")
    ap.add_argument(
        "--runtime-dir",
        help="where the sockets go (default: $ACCEL_RUNTIME_DIR, "
        "$XDG_RUNTIME_DIR/accelcore or a per-user temp dir)",
    )
    ap.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    ServerLimits.add_arguments(ap)
    ap.add_argument("--log-level", default="INFO")
    opts = ap.parse_args(argv)
    logging.basicConfig(
        level=opts.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        description = load_config(opts.config)
        machine = load_machine(description)
    except (OSError, ValueError) as exc:
        log.error("cannot build the machine: %s", exc)
        return 2
    server = Server(
        machine,
        opts.runtime_dir,
        description=description,
        limits=ServerLimits.from_arguments(opts),
    )
    try:
        server.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        machine.shutdown()
        return 1
    if opts.ready_fd is not None:
        os.write(opts.ready_fd, f"ready {os.getpid()}\n".encode())
        os.close(opts.ready_fd)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.2) and not server.stopped.is_set():
        pass
    server.stop()
    machine.shutdown()
    return 0
