"""Fixtures for accelctl against a devfs server: a served machine in this process,
a runtime directory short enough for socket paths, and a workload process that
holds accel0 (the demo's own workload program, paused after taking ownership).

(A uniquely named module: ``conftest`` names clash across test folders.)
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accelcore.demo.story import Child
from accelcore.machine import Machine
from accelcore.server import Server
from accelcore.server.daemon import load_machine

#: One habana_like and one kfd_like device, on a real-time clock.
SERVED_MACHINE: dict[str, Any] = {
    "machine": {"clock": "real", "drivers": ["habana_like", "kfd_like"]},
    "pci": [
        {"model": "habana_like", "options": {"dram_mb": 16, "cs_timeout_ms": 200}},
        {"model": "kfd_like", "options": {"vram_mb": 16}},
    ],
}


@pytest.fixture
def rt() -> Iterator[Path]:
    """An empty runtime directory (AF_UNIX paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="actl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def served(rt: Path) -> Iterator[Server]:
    """A devfs server in this process, on ``rt``."""
    machine: Machine = load_machine(SERVED_MACHINE)
    srv = Server(machine, rt, description=SERVED_MACHINE)
    srv.start()
    yield srv
    srv.stop()
    machine.shutdown()


@pytest.fixture
def holder(served: Server) -> Iterator[Child]:
    """A real process that owns accel0 (DRAM allocated, A and B copied in) and waits."""
    child = Child(served.runtime_dir, "gemm", "--pause", "--size", "16")
    child.expect("OWNER")
    yield child
    child.send("go")
    child.finish()
