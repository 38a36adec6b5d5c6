"""Fixtures for the devfs server tests: a vaccel machine served on a private
runtime directory, clients, and child processes speaking a line protocol."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from accelcore.machine import Machine
from accelcore.server import Server, connect
from accelcore.server.client import ClientProcess
from accelcore.server.daemon import load_machine

VACCEL_MACHINE = {
    "machine": {"clock": "real", "drivers": ["vaccel"]},
    "virtual": [{"driver": "vaccel", "count": 2}],
}


@pytest.fixture
def rt() -> Iterator[Path]:
    """A runtime directory other users can traverse (the permission test needs it)."""
    path = Path(tempfile.mkdtemp(prefix="accel-rt-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def loaded(description: dict[str, Any]) -> Iterator[Machine]:
    """A machine from ``description``, shut down after (a fixture's body)."""
    m = load_machine(description)
    yield m
    m.shutdown()


def serving(machine: Machine, rt: Path, description: dict[str, Any]) -> Iterator[Server]:
    """A server over ``machine`` in ``rt``, stopped after (a fixture's body)."""
    srv = Server(machine, rt, description=description)
    srv.start()
    yield srv
    srv.stop()


def connected(server: Server) -> Iterator[ClientProcess]:
    """A client session of ``server``, ended after (a fixture's body)."""
    proc = connect(server.runtime_dir)
    yield proc
    proc.exit()


@pytest.fixture
def machine() -> Iterator[Machine]:
    yield from loaded(VACCEL_MACHINE)


@pytest.fixture
def server(machine: Machine, rt: Path) -> Iterator[Server]:
    yield from serving(machine, rt, VACCEL_MACHINE)


@pytest.fixture
def client(server: Server) -> Iterator[ClientProcess]:
    yield from connected(server)


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``pred`` until it holds: end-of-file on another process's socket is
    seen by the server asynchronously, so cross-process effects need a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


PRELUDE = """
import os, sys, socket
from accelcore.uapi import CORE
from accelcore.server import connect, send_fds, recv_fds
from accelcore.testing.vaccel import VACCEL_UAPI as V
def say(*a):
    print(*a, flush=True)
"""


class Child:
    """A Python child process running ``code``; talks in lines on stdout/stdin."""

    def __init__(self, code: str, rt: Path, pass_fds: tuple[int, ...] = ()) -> None:
        script = PRELUDE + f"RT = {str(rt)!r}\n" + textwrap.dedent(code)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,
            text=True,
            cwd=os.getcwd(),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, prefix: str, timeout: float = 15.0) -> str:
        """The next stdout line; it must start with ``prefix``."""
        assert self.proc.stdout is not None
        poller = select.poll()
        poller.register(self.proc.stdout, select.POLLIN)
        ready = poller.poll(int(timeout * 1000))
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith(prefix):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
            raise AssertionError(f"child said {line!r}, expected {prefix!r}; stderr:\n{err}")
        return line.strip()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 15.0) -> int:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if f is not None:
                    f.close()
        return self.proc.returncode


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    made: list[Child] = []

    def make(code: str, rt: Path, pass_fds: tuple[int, ...] = ()) -> Child:
        child = Child(code, rt, pass_fds)
        made.append(child)
        return child

    yield make
    for c in made:
        if c.proc.poll() is None:
            c.proc.kill()
        c.finish()
