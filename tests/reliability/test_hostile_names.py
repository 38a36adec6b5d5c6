"""Task names a client chose (hostile tester's report): the server keeps at most
15 bytes (TASK_COMM_LEN 16) with non-printable characters replaced, and
``accelctl`` escapes non-printable characters in every table cell, so a name
cannot recolour the terminal or forge lines."""

from __future__ import annotations

import os
import socket

import pytest
from click.testing import CliRunner

from accelcore.cli import main
from accelcore.cli.options import CliState
from accelcore.cli.render import printable
from accelcore.cli.sources import EmbeddedSource, vaccel_machine
from accelcore.machine import Machine
from accelcore.server import Server
from accelcore.server import protocol as p
from accelcore.server.session import COMM_MAX, task_comm
from accelcore.server.wire import recv_record, send_record
from accelcore.userspace import Process

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(60)]

HOSTILE = "ev\x1b[31mil\nrow-two-and-more"


def test_task_comm_is_capped_and_printable() -> None:
    assert task_comm(HOSTILE) == "ev?[31mil?row-t"
    assert len(task_comm(HOSTILE).encode()) == COMM_MAX
    assert task_comm("ok") == "ok"
    assert task_comm("") == "?"
    # 15 bytes of UTF-8: a character cut in half is dropped, not mangled.
    assert task_comm("é" * 10) == "é" * 7


def test_server_keeps_a_clean_comm_from_hello(served: tuple[Server, Machine]) -> None:
    srv, machine = served
    sub = machine.subsystem
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as ctl:
        ctl.connect(str(srv.runtime_dir / "control"))
        send_record(ctl, p.encode(p.Hello(comm=HOSTILE), 1))
        welcome = p.decode(recv_record(ctl)[0]).message
        assert isinstance(welcome, p.Welcome)
        with machine.clock.lock:
            assert sub.tasks[os.getpid()].comm == "ev?[31mil?row-t"


def test_accelctl_escapes_non_printable_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCEL_DEVICE", raising=False)
    src = EmbeddedSource(vaccel_machine(2))
    try:
        proc = Process(src.subsystem, uid=1000, comm="x\x1b[31m\ny")  # in process: unfiltered
        fd = proc.open("/dev/accel/accel0")
        runner = CliRunner()
        for args in (("ps",), ("info", "accel0"), ("top", "-n", "1")):
            res = runner.invoke(main, list(args), obj=CliState(source=src), prog_name="accelctl")
            assert res.exit_code == 0, (args, res.output)
            assert "\x1b" not in res.stdout, args
            if args[0] != "top":  # top lists devices, not clients
                assert "x\\x1b[31m\\ny" in res.stdout, (args, res.stdout)
        proc.close(fd)
        proc.exit()
    finally:
        src.close()
    assert printable("a\tb\x7f") == "a\\tb\\x7f"
    assert printable("plain [bold]") == "plain [bold]"
