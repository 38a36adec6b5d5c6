"""Fixtures for accelctl tests: machines, injected sources, a runner and JSON checks."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from accelcore.cli import main
from accelcore.cli.options import CliState
from accelcore.cli.sources import EmbeddedSource, vaccel_machine
from accelcore.machine import Machine

sys.path.insert(0, str(Path(__file__).parent))  # edu_accel_driver, for PCI-parented machines

from cli_helpers import Invoke
from edu_accel_driver import EduAccelDriver
from server_fixtures import holder, rt, served  # noqa: F401  (fixtures)


@pytest.fixture
def sim() -> Iterator[EmbeddedSource]:
    """Two virtual vaccel devices (the default machine today)."""
    src = EmbeddedSource(vaccel_machine(2))
    yield src
    src.close()


@pytest.fixture
def pci_sim() -> Iterator[EmbeddedSource]:
    """Two edu PCI functions, each with an accel device bound to it."""
    machine = Machine()
    machine.bus.populate(
        [{"model": "edu", "address": "0000:00:10.0"}, {"model": "edu", "address": "0000:00:11.0"}]
    )
    machine.add_driver(EduAccelDriver())
    src = EmbeddedSource(machine)
    yield src
    src.close()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invoke(runner: CliRunner, sim: EmbeddedSource, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """Run accelctl on ``sim`` (or ``source=``); ``ACCEL_DEVICE`` is unset unless given."""
    monkeypatch.delenv("ACCEL_DEVICE", raising=False)

    def run(*args: str, source: EmbeddedSource | None = None, **kw: Any) -> Result:
        state = CliState(source=source if source is not None else sim)
        return runner.invoke(main, list(args), obj=state, prog_name="accelctl", **kw)

    return run
