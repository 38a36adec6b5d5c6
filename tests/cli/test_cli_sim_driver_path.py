"""``accelctl sim start`` with a third-party driver: it works whatever the
current directory holds, and a failure says why, not only the exit status."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cli_helpers import HERE

pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(90)]


def _accelctl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ACCEL_DEVICE", "ACCEL_RUNTIME_DIR")}
    # The driver is importable the way an installed one is: from the path, not the cwd.
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "accelcore.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def _machine(tmp_path: Path, driver: str) -> Path:
    cfg = tmp_path / "machine.toml"
    cfg.write_text(
        f'[machine]\ndrivers = ["{driver}"]\n[[pci]]\nmodel = "edu"\naddress = "0000:00:10.0"\n'
    )
    return cfg


def test_sim_start_ignores_a_folder_named_like_the_driver_in_the_cwd(tmp_path: Path) -> None:
    work = tmp_path / "checkout"
    # A package folder of the driver's name (a stale or differently laid-out
    # source tree): first on the path it would shadow the installed driver.
    (work / "edu_accel_driver").mkdir(parents=True)
    (work / "edu_accel_driver" / "__init__.py").write_text("")
    cfg = _machine(tmp_path, "edu_accel_driver:EduAccelDriver")
    rt = Path(tempfile.mkdtemp(prefix="accel-sim-"))
    started = _accelctl(work, "sim", "start", "--config", str(cfg), "--runtime-dir", str(rt))
    try:
        assert started.returncode == 0, started.stderr
        assert "serving 1 device(s)" in started.stdout
    finally:
        _accelctl(work, "sim", "stop", "--runtime-dir", str(rt))


def test_sim_start_failure_names_the_reason(tmp_path: Path) -> None:
    cfg = _machine(tmp_path, "no_such_driver_pkg:Driver")
    rt = Path(tempfile.mkdtemp(prefix="accel-sim-"))
    res = _accelctl(tmp_path, "sim", "start", "--config", str(cfg), "--runtime-dir", str(rt))
    assert res.returncode != 0
    first = res.stderr.strip().splitlines()[0]
    assert "exited with status 2" in first
    assert "cannot load accel driver 'no_such_driver_pkg:Driver'" in first
    assert "No module named 'no_such_driver_pkg'" in first
