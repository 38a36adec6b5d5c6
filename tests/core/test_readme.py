"""The README's example programs run as written (the blocks marked ``python test``)."""

from __future__ import annotations

import re
from pathlib import Path


def test_readme_example_runs() -> None:
    text = (Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python test\n(.*?)```", text, re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_readme_client_example_runs_against_a_server(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from accelcore import RealClock
    from accelcore.machine import Machine
    from accelcore.server import Server
    from accelcore.testing import VAccelDriver

    text = (Path(__file__).parents[2] / "README.md").read_text()
    code = re.search(r"## Devices for real processes.*?```python\n(.*?)```", text, re.S)
    assert code is not None
    machine = Machine(RealClock())
    drv = VAccelDriver()
    machine.add_driver(drv)
    machine.subsystem.create_device(drv)
    monkeypatch.setenv("ACCEL_RUNTIME_DIR", str(tmp_path))
    with Server(machine, tmp_path):
        exec(compile(code.group(1), "README.md", "exec"), {})
    machine.shutdown()
