"""accelctl as a real process (``python -m accelcore.cli``), one test per command family."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cli_helpers import HERE, check_json, check_json_lines

pytestmark = pytest.mark.subprocess

NO_SERVER = Path(tempfile.gettempdir()) / f"accelctl-tests-no-server-{os.getpid()}"


def accelctl(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "ACCEL_DEVICE"}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    # No devfs server answers here: the default source is the embedded machine.
    full_env["ACCEL_RUNTIME_DIR"] = str(NO_SERVER)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "accelcore.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=stdin,
        timeout=60,
        check=False,
    )


@pytest.fixture
def cfg(tmp_path: Path) -> str:
    """A machine of two edu functions with vaccel-on-edu accel devices (deterministic,
    whatever the default machine is)."""
    path = tmp_path / "machine.toml"
    path.write_text(
        '[machine]\ndrivers = ["edu_accel_driver:EduAccelDriver"]\n'
        '[[pci]]\nmodel = "edu"\naddress = "0000:00:10.0"\n'
        '[[pci]]\nmodel = "edu"\naddress = "0000:00:11.0"\n'
    )
    return str(path)


def test_devices_family_list_info_attrs_topology(cfg: str) -> None:
    devices = check_json("list", accelctl("--config", cfg, "list", "--json").stdout)["devices"]
    assert [(d["name"], d["pci_address"]) for d in devices] == [
        ("accel0", "0000:00:10.0"),
        ("accel1", "0000:00:11.0"),
    ]
    info = check_json("info", accelctl("--config", cfg, "info", "accel1", "--json").stdout)
    assert info["devices"][0]["identity"]["minor"] == 1
    attrs = check_json("attrs", accelctl("--config", cfg, "attrs", "accel0", "--json").stdout)
    assert [lvl["kernel"] for lvl in attrs["levels"]] == ["accel0", "0000:00:10.0", "pci0000:00"]
    topo = check_json("topology", accelctl("--config", cfg, "topology", "--json").stdout)
    assert [f["accel"] for f in topo["roots"][0]["functions"]] == [["accel0"], ["accel1"]]


def test_activity_family_ps_dmabuf_top_monitor(cfg: str) -> None:
    assert check_json("ps", accelctl("--config", cfg, "ps", "--json").stdout) == {"files": []}
    dmabuf = accelctl("--config", cfg, "dmabuf", "--json")
    assert check_json("dmabuf", dmabuf.stdout)["total_size"] == 0
    top = accelctl("--config", cfg, "top", "-n", "2", "-w", "0", "--json")
    assert len(check_json_lines("top", top.stdout)) == 2
    mon = accelctl("--config", cfg, "monitor", "--trigger", "-t", "0", "--json")
    assert len(check_json_lines("monitor", mon.stdout)) == 2


def test_admin_family_reset_version(cfg: str) -> None:
    res = accelctl("--config", cfg, "reset", "accel0", "--yes", "--json")
    assert check_json("reset", res.stdout)["reset_count"] == 1
    version = check_json("version", accelctl("--config", cfg, "version", "--json").stdout)
    assert [d["name"] for d in version["drivers"]] == ["edu_accel"]


def test_default_machine_lists_sim_devices() -> None:
    res = accelctl("list", "--json")
    assert res.returncode == 0, res.stderr
    devices = check_json("list", res.stdout)["devices"]
    assert devices and {d["source"] for d in devices} == {"sim"}
    assert devices[0]["name"] == "accel0"


def test_demo_passes_as_a_process_within_30_s() -> None:
    res = accelctl("demo")
    assert res.returncode == 0, res.stdout + res.stderr
    summary = re.search(r"demo: PASSED — 8/8 steps, (\d+)/(\d+) checks in ([\d.]+) s", res.stdout)
    assert summary is not None, res.stdout
    assert summary[1] == summary[2]
    assert float(summary[3]) < 30.0
    assert "waiter sees ABORTED" in res.stdout and "C matches numpy" in res.stdout


def test_quick_demo_passes_as_a_process() -> None:
    res = accelctl("demo", "--quick")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "demo: PASSED — 7/7 steps" in res.stdout


def test_unknown_device_exit_6_one_line_no_traceback() -> None:
    res = accelctl("--embedded", "info", "accel9")
    assert (res.returncode, res.stdout, res.stderr) == (6, "", "Error: no accel device 'accel9'\n")


def test_env_selector_is_the_default(cfg: str) -> None:
    res = accelctl("--config", cfg, "list", "--json", env={"ACCEL_DEVICE": "accel1"})
    assert [d["name"] for d in check_json("list", res.stdout)["devices"]] == ["accel1"]


def test_usage_error_exit_2() -> None:
    res = accelctl("list", "--nope")
    assert res.returncode == 2
    assert "No such option" in res.stderr


def test_config_pci_address_selector(cfg: str) -> None:
    res = accelctl("--config", cfg, "list", "00:11.0", "--json")
    assert res.returncode == 0, res.stderr
    (dev,) = check_json("list", res.stdout)["devices"]
    assert (dev["name"], dev["driver"], dev["vendor"]) == ("accel1", "edu_accel", 0x1234)


def test_bad_config_is_exit_1_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("not = [toml")
    res = accelctl("--config", str(cfg), "list")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("Error: machine description")


def test_host_list_as_a_process() -> None:
    pytest.importorskip("pyudev")
    res = accelctl("list", "--host", "--json")
    assert res.returncode == 0, res.stderr
    check_json("list", res.stdout)
