"""``accelctl sim start|status|stop``: as real processes, and through CliRunner.

Every test that may start a server stops it in a fixture finalizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import check_json
from click.testing import CliRunner, Result
from server_fixtures import SERVED_MACHINE

from accelcore.cli import main
from accelcore.demo.story import Child
from accelcore.server import Server
from accelcore.server.daemon import server_status, stop_server


def accelctl(rt: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ACCEL_DEVICE"}
    env["ACCEL_RUNTIME_DIR"] = str(rt)
    return subprocess.run(
        [sys.executable, "-m", "accelcore.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def invoke(*args: str, rt: Path | None = None) -> Result:
    env = {"ACCEL_RUNTIME_DIR": str(rt) if rt else None, "ACCEL_DEVICE": None}
    return CliRunner().invoke(main, list(args), env=env, prog_name="accelctl")


@pytest.fixture
def sim_rt(rt: Path) -> Iterator[Path]:
    """A runtime directory whose server (if a test starts one) is always stopped."""
    yield rt
    stop_server(rt)


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    path = tmp_path / "machine.json"
    path.write_text(json.dumps(SERVED_MACHINE))
    return path


@pytest.mark.subprocess
def test_start_status_list_stop_as_processes(sim_rt: Path, small_config: Path) -> None:
    res = accelctl(sim_rt, "sim", "start", "--config", str(small_config), "--json")
    assert res.returncode == 0, res.stderr
    started = check_json("sim-start", res.stdout)
    assert started["runtime_dir"] == str(sim_rt)
    assert [d["name"] for d in started["devices"]] == ["accel0", "accel1"]

    status = check_json("sim-status", accelctl(sim_rt, "sim", "status", "--json").stdout)
    assert (status["running"], status["pid"]) == (True, started["pid"])
    assert status["machine"] == SERVED_MACHINE

    devices = check_json("list", accelctl(sim_rt, "list", "--json").stdout)["devices"]
    assert {d["source"] for d in devices} == {"server"}

    res = accelctl(sim_rt, "sim", "stop", "--json")
    assert check_json("sim-stop", res.stdout) == {
        "pid": started["pid"],
        "runtime_dir": str(sim_rt),
        "stopped": True,
    }
    assert server_status(sim_rt) is None
    gone = accelctl(sim_rt, "sim", "status", "--json")
    assert gone.returncode == 9  # no server
    assert check_json("sim-status", gone.stdout) == {"running": False, "runtime_dir": str(sim_rt)}


def test_start_human_output_names_dir_and_devices(sim_rt: Path, small_config: Path) -> None:
    res = invoke("sim", "start", "--config", str(small_config), "--runtime-dir", str(sim_rt))
    assert res.exit_code == 0, res.output
    first, *rows = res.stdout.splitlines()
    assert first.startswith("devfs server pid ") and first.endswith(f"2 device(s) in {sim_rt}")
    assert rows[0].split()[:2] == ["accel0", "habana_like"]
    assert server_status(sim_rt) is not None


def test_runtime_dir_comes_from_the_environment(sim_rt: Path, small_config: Path) -> None:
    res = invoke("sim", "start", "--config", str(small_config), "--json", rt=sim_rt)
    assert check_json("sim-start", res.stdout)["runtime_dir"] == str(sim_rt)


def test_start_refuses_a_second_server(served: Server) -> None:
    res = invoke("sim", "start", "--runtime-dir", str(served.runtime_dir))
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: a devfs server already runs at {served.runtime_dir}")


def test_start_with_a_bad_config_is_one_line(sim_rt: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"pci": [{"model": "nope"}]}')
    res = invoke("sim", "start", "--config", str(bad), "--runtime-dir", str(sim_rt))
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("Error: devfs server exited")


def test_status_shows_sessions_of_a_holder(holder: Child, served: Server) -> None:
    res = invoke("sim", "status", "--json", rt=served.runtime_dir)
    status = check_json("sim-status", res.stdout)
    assert status["sessions"] >= 1 and status["open_files"] >= 1
    assert status["accounting"]["files"] >= 1


def test_status_without_server_exit_9(rt: Path) -> None:
    res = invoke("sim", "status", rt=rt)
    assert (res.exit_code, res.stdout) == (9, f"no devfs server at {rt}\n")


def test_stop_without_server_exit_9_one_line(rt: Path) -> None:
    res = invoke("sim", "stop", "--runtime-dir", str(rt))
    assert (res.exit_code, res.stderr) == (9, f"Error: no devfs server at {rt}\n")
