"""Reliability tests (issue 12): the ``--run-long`` switch, a served vaccel
machine, and helpers shared by the crash, fault, hostile-input and isolation tests.

Every test here is marked ``reliability``; soak versions are also marked ``long``
and are skipped unless ``--run-long`` is given, so a plain ``pytest`` stays fast.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accelcore.machine import Machine
from accelcore.server import Server
from accelcore.server.daemon import load_machine

VACCEL_MACHINE = {
    "machine": {"clock": "real", "drivers": ["vaccel"]},
    "virtual": [{"driver": "vaccel", "count": 2}],
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-long",
        action="store_true",
        default=False,
        help="also run the long soak versions of the reliability tests (marker 'long')",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-long"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --run-long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``pred`` until it holds: the server sees another process's end of
    file asynchronously, so cross-process effects need a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def open_fds() -> int:
    """How many descriptors this process has open (after collecting garbage, so
    sockets of objects that earlier tests dropped do not count)."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def summary(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    """``summary(line)``: print a test's counts so that pytest shows them."""

    def emit(line: str) -> None:
        with capsys.disabled():
            print(f"\n[reliability] {line}")

    return emit


@pytest.fixture
def rt() -> Iterator[Path]:
    """A runtime directory other users can traverse (peer-permission tests need it)."""
    path = Path(tempfile.mkdtemp(prefix="accel-rel-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def served(rt: Path) -> Iterator[tuple[Server, Machine]]:
    """A two-device vaccel machine served in this process."""
    machine = load_machine(VACCEL_MACHINE)
    srv = Server(machine, rt, description=VACCEL_MACHINE)
    srv.start()
    yield srv, machine
    srv.stop()
    machine.shutdown()
