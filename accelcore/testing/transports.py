"""Run a test's user program in process or through a devfs server, the same test.

Both transports are adapters over the system-call layer (:mod:`accelcore.syscalls`),
so a driver's behaviour must not depend on which one a program uses. A test that
takes the ``accel_process_factory`` fixture (see :mod:`accelcore.testing.plugin`)
runs twice, with ids ``inproc`` and ``server``::

    def test_info(accel_process_factory):
        m = Machine.from_description(...)
        proc = accel_process_factory(m)       # a Process, or a ClientProcess
        fd = proc.open("/dev/accel/accel0")
        ...

Through ``server`` the factory starts a :class:`~accelcore.server.Server` over the
machine (in a private runtime directory, stopped at the end of the test) and
connects a new session to it; each call of the factory is a process of its own
(a :class:`ServerProcess`: a session of the server, with a task of its own), so a
test may make any number of processes of one machine through either transport.

The server runs on a thread of the test process, so a test may still read the
engine's state (``machine.subsystem.accounting()``, a device's files, oopses) and
drive virtual time directly: every call from a client still crosses the real
wire (its own sockets, descriptors passed with ``SCM_RIGHTS``, memfd arenas), and
the tasks behind them live in the server's session threads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import BadFd
from ..machine import Machine
from ..server import Server
from ..server.client import ClientMapping, ClientProcess
from ..task import Task
from ..userspace import Process
from ..vfs import Mapping as VfsMapping
from ..vfs import OpenFile

__all__ = ["TRANSPORTS", "ProcessFactory", "ServerProcess", "file_of", "start_server"]

#: The transports a test runs through, in the order of its parameter ids.
TRANSPORTS = ("inproc", "server")


def start_server(machine: Machine) -> tuple[Any, Path]:
    """A devfs server over ``machine``, serving on a thread of this process from a
    new private runtime directory; returns the server and the directory (the
    caller stops the one and removes the other)."""
    rt = Path(tempfile.mkdtemp(prefix="accel-test-"))
    server = Server(machine, rt)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(rt, ignore_errors=True)
        raise
    return server, rt


class ServerProcess(ClientProcess):
    """A client process (a session of its own) of an in-thread server, with what
    tests of an in-process :class:`~accelcore.Process` also use: the server-side
    :attr:`task`, :meth:`file_of` and :meth:`send_fd`.

    Args:
        server: The :class:`~accelcore.server.Server`, serving on a thread of
            this process.
        runtime_dir: Where it serves.
        restart: ``SA_RESTART`` for the process's calls.

    Raises:
        NoDevice: no server answers at ``runtime_dir``.
    """

    def __init__(self, server: Server, runtime_dir: Path, *, restart: bool = False) -> None:
        super().__init__(runtime_dir, restart=restart)
        self.server = server

    @property
    def task(self) -> Task:
        """The server-side task of this session (engine state, for tests).

        Raises:
            LookupError: the session has ended.
        """
        self._session()
        session = self.server._sessions.get(self.token)
        if session is None or session.task is None:
            raise LookupError(f"{self!r}: the server has no session for it")
        return session.task

    def file_of(self, fd: int) -> OpenFile:
        """The server's open file behind client descriptor ``fd``.

        Raises:
            LookupError: ``fd`` is no open file of the server.
        """
        st = os.fstat(fd)
        with self.server.clock.lock:
            end = self.server._by_key.get((st.st_dev, st.st_ino))
        if end is None:
            raise LookupError(f"descriptor {fd} is no open file of the server")
        return end.file

    def engine_mapping(self, mapping: ClientMapping) -> VfsMapping:
        """The server's CPU mapping behind ``mapping`` (the pages this process
        mapped are the memfd the server passed: a zap replaces the server's
        view, and cannot revoke this process's pages).

        Raises:
            LookupError: the server has no such mapping of this session.
        """
        session = self.server._sessions.get(self.token)
        found = None if session is None else session._mappings.get(mapping.mapping_id)
        if found is None:
            raise LookupError(f"the server has no mapping {mapping.mapping_id} of {self!r}")
        return found

    def send_fd(self, fd: int, to: ClientProcess) -> int:
        """Pass descriptor ``fd`` to process ``to``; its number there. Both are
        sessions of this OS process, so passing it is a ``dup`` tracked by ``to``."""
        try:
            return to._track(os.dup(fd))
        except OSError as exc:
            raise BadFd(f"file descriptor {fd} is not open") from exc


def file_of(proc: Process | ServerProcess, fd: int) -> OpenFile:
    """The engine's open file behind ``proc``'s descriptor ``fd``, whichever
    transport made ``proc`` (a test reads engine state with it).

    Raises:
        BadFd: (in process) ``fd`` is not open.
        LookupError: (through the server) ``fd`` is no open file of the server.
    """
    if isinstance(proc, ServerProcess):
        return proc.file_of(fd)
    return proc.task.files.get(fd)


class ProcessFactory:
    """Makes user processes of machines over one transport.

    Args:
        transport: ``"inproc"`` or ``"server"``.

    Raises:
        ValueError: an unknown transport.
    """

    def __init__(self, transport: str) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r} is not one of {TRANSPORTS}")
        self.transport = transport
        self._procs: list[Any] = []
        self._servers: dict[int, Any] = {}
        self._dirs: list[Path] = []

    def __call__(self, machine: Machine, **kwargs: Any) -> Any:
        """A new process of ``machine``: a :class:`~accelcore.Process` in process
        (``kwargs`` go to it), or a :class:`~accelcore.server.client.ClientProcess`
        of a server over the machine (``restart`` is the one keyword it takes).

        Through the server, the first process of a machine starts its server;
        the next ones are further sessions of it.
        """
        if self.transport == "inproc":
            proc: Any = Process(machine.subsystem, **kwargs)
        else:
            if id(machine) not in self._servers:
                server, rt = start_server(machine)
                self._dirs.append(rt)
                self._servers[id(machine)] = (server, rt)
            server, rt = self._servers[id(machine)]
            proc = ServerProcess(server, rt, restart=bool(kwargs.get("restart", False)))
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        """Exit every process made, stop the servers, remove their directories."""
        for proc in self._procs:
            proc.exit()
        self._procs.clear()
        for server, _ in self._servers.values():
            server.stop()
        self._servers.clear()
        for rt in self._dirs:
            shutil.rmtree(rt, ignore_errors=True)
        self._dirs.clear()
