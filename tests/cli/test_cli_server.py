"""accelctl on a running devfs server (CliRunner): source selection, the
INFO-based views and the control-endpoint views (sysfs, actions and holders are
in test_cli_server_ops)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import check_json
from click.testing import CliRunner, Result

from accelcore.cli import main
from accelcore.cli.server_source import ServerSource
from accelcore.cli.sources import SourceError
from accelcore.demo.story import Child
from accelcore.server import Server


def run(rt: Path, *args: str) -> Result:
    env = {"ACCEL_RUNTIME_DIR": str(rt), "ACCEL_DEVICE": None}
    return CliRunner().invoke(main, list(args), env=env, prog_name="accelctl")


def test_a_running_server_is_the_default_source(served: Server) -> None:
    res = run(served.runtime_dir, "list", "--json")
    assert res.exit_code == 0, res.output
    devices = check_json("list", res.stdout)["devices"]
    assert [(d["name"], d["driver"], d["source"]) for d in devices] == [
        ("accel0", "habana_like", "server"),
        ("accel1", "kfd_like", "server"),
    ]


def test_embedded_flag_forces_the_in_process_machine(served: Server) -> None:
    res = run(served.runtime_dir, "--embedded", "list", "--json")
    assert {d["source"] for d in check_json("list", res.stdout)["devices"]} == {"sim"}


def test_config_implies_embedded(served: Server, tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('[machine]\ndrivers = ["vaccel"]\n')
    res = run(served.runtime_dir, "--config", str(cfg), "list", "--json")
    assert res.exit_code == 0, res.output
    assert check_json("list", res.stdout)["devices"] == []


def test_no_server_means_embedded(rt: Path) -> None:
    res = run(rt, "list", "--json")
    assert {d["source"] for d in check_json("list", res.stdout)["devices"]} == {"sim"}


def test_embedded_and_host_exclude_each_other(rt: Path) -> None:
    res = run(rt, "--embedded", "--host", "list")
    assert res.exit_code == 2
    assert "--embedded and --host exclude each other" in res.stderr


def test_list_shows_the_holding_process_as_owner(holder: Child, served: Server) -> None:
    devices = check_json("list", run(served.runtime_dir, "list", "--json").stdout)["devices"]
    assert (devices[0]["owner_pid"], devices[0]["open_count"]) == (holder.pid, 1)


def test_info_through_the_client_sees_owner_clients_and_dram(holder: Child, served: Server) -> None:
    res = run(served.runtime_dir, "info", "accel0", "--json")
    assert res.exit_code == 0, res.output
    (info,) = check_json("info", res.stdout)["devices"]
    assert info["source"] == "server"
    assert (info["ownership"]["state"], info["ownership"]["owner_pid"]) == ("owned", holder.pid)
    assert [(c["pid"], c["owner"]) for c in info["clients"]] == [(holder.pid, True)]
    assert info["memory"][0]["name"] == "dram" and info["memory"][0]["used_bytes"] > 0


def test_ps_lists_the_holder_with_its_fdinfo(holder: Child, served: Server) -> None:
    files = check_json("ps", run(served.runtime_dir, "ps", "--json").stdout)["files"]
    assert [(f["device"], f["pid"], f["owner"]) for f in files] == [("accel0", holder.pid, True)]
    assert files[0]["fdinfo"]["drm-driver"] == "habana_like"


def test_topology_from_the_devices_op(served: Server) -> None:
    topo = check_json("topology", run(served.runtime_dir, "topology", "--json").stdout)
    (root,) = topo["roots"]
    assert root["name"] == "pci0000:00"
    assert [f["accel"] for f in root["functions"]] == [["accel0"], ["accel1"]]


def test_dmabuf_from_bufinfo(served: Server) -> None:
    res = run(served.runtime_dir, "dmabuf", "--json")
    assert check_json("dmabuf", res.stdout) == {"buffers": [], "total_size": 0}


def test_version_reports_the_server_source(served: Server) -> None:
    data = check_json("version", run(served.runtime_dir, "version", "--json").stdout)
    assert data["source"] == "server"
    assert [d["name"] for d in data["drivers"]] == ["habana_like", "kfd_like"]


def test_server_source_streams_a_reset_uevent(served: Server) -> None:
    src = ServerSource(served.runtime_dir)
    stream = src.events()
    try:
        served.machine.subsystem.device("accel0").reset("test")
        ev = stream.get(10.0)
        while ev is not None and ev.env.get("RESET") != "1":
            ev = stream.get(10.0)
    finally:
        stream.close()
        src.close()
    assert ev is not None and ev.action == "change" and ev.devpath.endswith("/accel0")
    assert ev.env["REASON"] == "test"


def test_server_source_without_a_server_is_a_source_error(rt: Path) -> None:
    with pytest.raises(SourceError, match=f"^no devfs server at {rt}$"):
        ServerSource(rt).devices()


def test_server_source_leaves_no_session_behind(served: Server) -> None:
    src = ServerSource(served.runtime_dir)
    src.info("accel0")
    src.close()
    assert src._proc is None
    # The server sees a closed descriptor asynchronously: give it a deadline.
    deadline = time.monotonic() + 10
    while served.machine.subsystem.accounting()["files"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.machine.subsystem.accounting()["files"] == 0


@pytest.mark.subprocess
def test_info_and_ps_as_processes_while_a_process_holds_accel0(
    holder: Child, served: Server
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ACCEL_DEVICE"}
    env["ACCEL_RUNTIME_DIR"] = str(served.runtime_dir)

    def accelctl(*args: str) -> str:
        res = subprocess.run(
            [sys.executable, "-m", "accelcore.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    (info,) = check_json("info", accelctl("info", "accel0", "--json"))["devices"]
    assert (info["source"], info["ownership"]["owner_pid"]) == ("server", holder.pid)
    files = check_json("ps", accelctl("ps", "--json"))["files"]
    assert [(f["pid"], f["owner"]) for f in files] == [(holder.pid, True)]
    events = accelctl("monitor", "-t", "0.2", "--json")
    assert events == ""  # nothing happened meanwhile: no uevents, exit 0


def test_completion_against_a_server_closes_its_connection(served: Server) -> None:
    """Shell completion runs no group callback, so it must close the server source
    it opened itself (an unclosed socket is a ResourceWarning, an error here)."""
    import gc

    env = {
        "_ACCELCTL_COMPLETE": "bash_complete",
        "COMP_WORDS": "accelctl info acc",
        "COMP_CWORD": "2",
        "ACCEL_RUNTIME_DIR": str(served.runtime_dir),
    }
    res = CliRunner().invoke(main, [], prog_name="accelctl", env=env)
    gc.collect()  # an unclosed socket would warn here, inside the test
    assert res.exit_code == 0, res.output
    assert "plain,accel0" in res.stdout.splitlines()
