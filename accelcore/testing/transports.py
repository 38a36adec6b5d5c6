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
connects this process to it. The server knows a client process by its pid, so
this transport gives one process per machine; in process, any number.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..machine import Machine
from ..userspace import Process

__all__ = ["TRANSPORTS", "ProcessFactory"]

#: The transports a test runs through, in the order of its parameter ids.
TRANSPORTS = ("inproc", "server")


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

        Raises:
            RuntimeError: a second process of one machine through the server.
        """
        if self.transport == "inproc":
            proc: Any = Process(machine.subsystem, **kwargs)
        else:
            from ..server import Server, connect

            if id(machine) in self._servers:
                raise RuntimeError("through the server, a test has one process per machine")
            rt = Path(tempfile.mkdtemp(prefix="accel-test-"))
            self._dirs.append(rt)
            server = Server(machine, rt)
            server.start()
            self._servers[id(machine)] = server
            proc = connect(rt, restart=bool(kwargs.get("restart", False)))
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        """Exit every process made, stop the servers, remove their directories."""
        for proc in self._procs:
            proc.exit()
        self._procs.clear()
        for server in self._servers.values():
            server.stop()
        self._servers.clear()
        for rt in self._dirs:
            shutil.rmtree(rt, ignore_errors=True)
        self._dirs.clear()
