"""Through the server, reads follow the system-call layer's restart rule like ioctls
(they used to fail with EINTR even with SA_RESTART)."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from accelcore.file import AccelFile
from accelcore.machine import Machine
from accelcore.server import Server, connect
from accelcore.server.client import ClientProcess

from .conftest import wait_for


def _blocked_read(
    server: Server, machine: Machine, *, restart: bool
) -> tuple[list[object], AccelFile, threading.Thread, ClientProcess]:
    client = connect(server.runtime_dir, restart=restart)
    fd = client.open("/dev/accel/accel0")
    dev = machine.subsystem.devices[0]
    file = next(f for f in dev.files if f.pid == os.getpid())
    got: list[object] = []

    def reader() -> None:
        try:
            got.append(client.read(fd, 4096))
        except OSError as exc:
            got.append(exc.errno)

    t = threading.Thread(target=reader)
    t.start()
    task = machine.subsystem.tasks[os.getpid()]
    assert wait_for(lambda: task.wait_points_seen >= 1)
    client.signal()
    return got, file, t, client


@pytest.mark.parametrize("restart", [False, True])
def test_a_signal_interrupts_a_blocking_read_or_restarts_it(
    server: Server, machine: Machine, restart: bool
) -> None:
    got, file, t, client = _blocked_read(server, machine, restart=restart)
    task = machine.subsystem.tasks[os.getpid()]
    if restart:
        assert wait_for(lambda: task.wait_points_seen >= 2)  # the read went back to sleep
        assert t.is_alive() and got == []
        with machine.clock.lock:
            file.send_event(0x80000001, b"12345678")
    t.join(10)
    assert not t.is_alive()
    if restart:
        assert isinstance(got[0], bytes) and got[0][8:] == b"12345678"
    else:
        assert got == [errno.EINTR]
    client.exit()
