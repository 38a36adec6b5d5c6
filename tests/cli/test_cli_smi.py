"""What smi users expect of accelctl (issue 22 §3 and §4): memory by every fdinfo
region, kfd_like's INFO, narrow terminals, non-UTF-8 output, consistent JSON types,
several devices per call, stable identifiers, CSV and field queries, output files,
loop mode, a summary without a command, and the exit codes."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import HERE, Invoke, check_json, check_json_lines
from click.testing import CliRunner, Result

from accelcore import Process
from accelcore.cli import main
from accelcore.cli.exitcodes import ExitCode, exit_code_of
from accelcore.cli.model import fdinfo_engine_time_ns, fdinfo_memory
from accelcore.cli.options import CliState
from accelcore.cli.sources import EmbeddedSource, vaccel_machine
from accelcore.demo.story import Child
from accelcore.errors import Busy, NoDevice, NotPermitted
from accelcore.server import Server
from accelcore.server.daemon import spawn_server, stop_server


def run(rt: Path, *args: str, env: dict[str, str | None] | None = None) -> Result:
    full: dict[str, str | None] = {"ACCEL_RUNTIME_DIR": str(rt), "ACCEL_DEVICE": None}
    full.update(env or {})
    return CliRunner().invoke(main, list(args), env=full, prog_name="accelctl")


# -- fdinfo memory: every drm-<kind>-<region> key ------------------------------------------
def test_fdinfo_memory_reads_every_region_with_its_unit() -> None:
    fdinfo = {
        "drm-driver": "x",
        "drm-client-id": "7",
        "drm-total-dram": "1024 KiB",
        "drm-resident-dram": "512 KiB",
        "drm-total-sram": "2 MiB",
        "drm-total-host": "4096",  # no unit: bytes
        "drm-memory-gtt": "8 KiB",  # the deprecated name of resident
        "drm-total-bogus": "many",  # malformed: left out
        "drm-engine-compute": "1500 ns",
        "drm-engine-dma": "500 ns",
    }
    assert fdinfo_memory(fdinfo) == {
        "dram": {"total": 1 << 20, "resident": 1 << 19},
        "sram": {"total": 2 << 20},
        "host": {"total": 4096},
        "gtt": {"resident": 8192},
    }
    assert fdinfo_engine_time_ns(fdinfo) == 2000


def test_ps_shows_a_habana_owners_dram(served: Server, holder: Child) -> None:
    res = run(served.runtime_dir, "ps", "accel0", "--json")
    assert res.exit_code == 0, res.output
    (row,) = [f for f in check_json("ps", res.stdout)["files"] if f["owner"]]
    assert row["fdinfo"]["drm-total-dram"].endswith(" KiB")
    dram = int(row["fdinfo"]["drm-total-dram"].split()[0]) * 1024
    assert dram > 0
    assert row["memory"]["dram"]["total"] == row["memory_total_bytes"] == dram
    csv_out = run(served.runtime_dir, "ps", "accel0", "-q", "pid,memory.total", "--nounits")
    assert f"{row['pid']},{dram}" in csv_out.stdout.splitlines()


# -- kfd_like INFO ------------------------------------------------------------------------------
def test_kfd_like_info_shows_its_vram_and_engines(served: Server) -> None:
    res = run(served.runtime_dir, "info", "accel1", "--json")
    (info,) = check_json("info", res.stdout)["devices"]
    assert info["identity"]["driver"] == "kfd_like"
    assert [(m["name"], m["total_bytes"]) for m in info["memory"]] == [("vram", 16 << 20)]
    assert [(e["name"], e["engine_class"]) for e in info["engines"]] == [
        ("compute", 1),
        ("sdma", 0),
    ]


# -- narrow terminals and non-UTF-8 output ---------------------------------------------------
def test_a_60_column_ps_keeps_every_pid_whole(served: Server, holder: Child) -> None:
    wide = check_json("ps", run(served.runtime_dir, "ps", "--json").stdout)["files"]
    res = run(served.runtime_dir, "ps", env={"COLUMNS": "60"})
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert all(len(line.rstrip()) <= 60 for line in lines), lines
    assert "…" not in res.stdout
    for f in wide:
        assert any(line.split()[:2] == [f["device"], str(f["pid"])] for line in lines), lines
    assert "(60 columns: left out " in res.stdout


@pytest.mark.parametrize("args", [("list",), ("top", "-n", "1", "-w", "0"), ("info", "accel0")])
def test_a_60_column_table_never_cuts_a_cell(invoke: Invoke, args: tuple[str, ...]) -> None:
    res = invoke(*args, env={"COLUMNS": "60"})
    assert res.exit_code == 0, res.output
    assert "…" not in res.stdout
    assert all(len(line.rstrip()) <= 60 for line in res.stdout.splitlines()), res.stdout


def test_output_degrades_to_ascii_on_a_non_utf8_stdout(sim: EmbeddedSource) -> None:
    proc = Process(sim.subsystem, uid=1000, comm="jöb—x")
    proc.open("/dev/accel/accel0")
    runner = CliRunner(charset="ascii")
    for args in (["ps"], ["top", "-n", "1", "-w", "0"], ["info", "accel0"]):
        res = runner.invoke(main, args, obj=CliState(source=sim), prog_name="accelctl")
        assert res.exit_code == 0, (args, res.output, res.exception)
        assert res.stdout.isascii()
    assert "j?b?x" in runner.invoke(main, ["ps"], obj=CliState(source=sim)).stdout
    proc.exit()


def test_top_on_an_ascii_stdout_as_a_process(tmp_path: Path) -> None:
    env = {
        "PYTHONIOENCODING": "ascii",
        "PYTHONPATH": str(HERE),
        "ACCEL_RUNTIME_DIR": "/nonexistent",
    }
    res = subprocess.run(
        [sys.executable, "-m", "accelcore.cli", "--embedded", "top", "-n", "1", "-w", "0"],
        capture_output=True,
        text=True,
        env={**env, "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout.startswith("accelctl top - iteration 1")


# -- JSON types, version through a server, monitor when the server goes -----------------------
def test_vendor_is_an_integer_in_list_and_topology(served: Server) -> None:
    listed = check_json("list", run(served.runtime_dir, "list", "--json").stdout)["devices"]
    topo = check_json("topology", run(served.runtime_dir, "topology", "--json").stdout)
    functions = {f["address"]: f for r in topo["roots"] for f in r["functions"]}
    for d in listed:
        fn = functions[d["pci_address"]]
        assert (fn["vendor"], fn["device"]) == (d["vendor"], d["device"])
        assert isinstance(d["vendor"], int) and not isinstance(d["vendor"], bool)


def test_version_through_a_server_keeps_driver_descriptions(served: Server) -> None:
    res = run(served.runtime_dir, "version", "--json")
    data = check_json("version", res.stdout)
    assert data["source"] == "server"
    by_name = {d["name"]: d for d in data["drivers"]}
    subsystem = served.machine.subsystem
    assert set(by_name) == set(subsystem.drivers)
    for name, drv in subsystem.drivers.items():
        assert by_name[name]["desc"] == drv.desc != ""
        assert isinstance(by_name[name]["control_node"], bool)


def test_monitor_exits_9_with_a_message_when_the_server_goes_away(rt: Path) -> None:
    machine = {
        "machine": {"clock": "real", "drivers": ["vaccel"]},
        "virtual": [{"driver": "vaccel", "count": 1}],
    }
    pid = spawn_server(machine, rt, timeout=30)
    cmd = [sys.executable, "-m", "accelcore.cli", "monitor", "--trigger", "--json"]
    env = {**os.environ, "ACCEL_RUNTIME_DIR": str(rt), "PYTHONPATH": str(HERE)}
    try:
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        ) as mon:
            assert mon.stdout is not None and mon.stderr is not None
            json.loads(mon.stdout.readline())  # subscribed: its own trigger arrived
            os.kill(pid, signal.SIGKILL)  # the server dies (no goodbye)
            assert mon.wait(timeout=30) == ExitCode.NO_SERVER
            assert mon.stderr.read() == f"Error: the devfs server at {rt} went away\n"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        stop_server(rt)  # reaps it and removes what it left


def test_top_exits_9_with_a_message_when_the_server_dies(rt: Path) -> None:
    machine = {
        "machine": {"clock": "real", "drivers": ["vaccel"]},
        "virtual": [{"driver": "vaccel", "count": 1}],
    }
    pid = spawn_server(machine, rt, timeout=30)
    cmd = [sys.executable, "-m", "accelcore.cli", "top", "-w", "0.05", "--json"]
    env = {**os.environ, "ACCEL_RUNTIME_DIR": str(rt), "PYTHONPATH": str(HERE)}
    try:
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        ) as top:
            assert top.stdout is not None and top.stderr is not None
            json.loads(top.stdout.readline())  # it runs: one refresh arrived
            os.kill(pid, signal.SIGKILL)
            assert top.wait(timeout=30) == ExitCode.NO_SERVER
            err = top.stderr.read()
            assert err.startswith("Error: ") and err.count("\n") == 1, err
            assert f"devfs server at {rt}" in err  # "no devfs server", or "went away"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        stop_server(rt)  # reaps it and removes what it left


# -- several devices, identifiers, summary -------------------------------------------------------
def test_several_devices_by_comma_list_and_repeated_arguments(invoke: Invoke) -> None:
    by_id = check_json("info", invoke("info", "-i", "1,0", "--json").stdout)["devices"]
    assert [d["name"] for d in by_id] == ["accel1", "accel0"]
    repeated = check_json("info", invoke("info", "accel1", "accel0", "accel1", "--json").stdout)
    assert [d["name"] for d in repeated["devices"]] == ["accel1", "accel0"]
    listed = check_json("list", invoke("list", "-i", "0", "-i", "1", "--json").stdout)
    assert [d["name"] for d in listed["devices"]] == ["accel0", "accel1"]


def test_an_unknown_device_among_several_is_exit_6(invoke: Invoke) -> None:
    res = invoke("info", "-i", "0,9")
    assert (res.exit_code, res.stderr) == (6, "Error: no accel device '9'\n")


def test_unique_ids_are_stable_and_distinct() -> None:
    def uuids() -> list[str]:
        src = EmbeddedSource(vaccel_machine(2))
        try:
            return [str(d.uuid) for d in src.devices()]
        finally:
            src.close()

    first = uuids()
    assert first == uuids()
    assert len(set(first)) == 2 and all(len(u) == 36 for u in first)


def test_unique_id_is_the_same_through_a_server(served: Server) -> None:
    listed = check_json("list", run(served.runtime_dir, "list", "--json").stdout)["devices"]
    with served.clock.lock:
        expected = [d.unique_id for d in served.machine.subsystem.registered_devices()]
    assert [d["uuid"] for d in listed] == expected


def test_no_command_prints_a_device_summary(invoke: Invoke) -> None:
    res = invoke()
    assert res.exit_code == 0, res.output
    head, columns, *rows = res.stdout.splitlines()
    assert head.startswith("accelctl ") and "devices: 2" in head
    assert columns.split()[:2] == ["DEVICE", "DRIVER"]
    assert [r.split()[0] for r in rows] == ["accel0", "accel1"]


def test_summary_json_follows_its_schema(invoke: Invoke) -> None:
    data = check_json("summary", invoke("summary", "--json").stdout)
    assert [d["name"] for d in data["devices"]] == ["accel0", "accel1"]


# -- CSV, queries, files, loops -------------------------------------------------------------------
def test_csv_query_with_header_and_units(invoke: Invoke) -> None:
    res = invoke("info", "all", "--query", "name,memory.total,status")
    rows = list(csv.reader(io.StringIO(res.stdout)))
    assert rows[0] == ["name", "memory.total [B]", "status"]
    assert [r[0] for r in rows[1:]] == ["accel0", "accel1"]
    assert all(r[1].endswith(" B") and r[2] == "operational" for r in rows[1:])


def test_csv_noheader_nounits(invoke: Invoke) -> None:
    res = invoke("list", "--csv", "--noheader", "--nounits", "-q", "name,minor")
    assert res.stdout == "accel0,0\naccel1,1\n"


def test_help_query_lists_the_fields(invoke: Invoke) -> None:
    res = invoke("ps", "--help-query")
    assert res.exit_code == 0
    names = [line.split()[0] for line in res.stdout.splitlines()]
    assert {"pid", "memory.total", "memory.resident", "engine_time"} <= set(names)


def test_an_unknown_query_field_is_exit_2_naming_it(invoke: Invoke) -> None:
    res = invoke("list", "-q", "name,nope")
    assert res.exit_code == 2
    assert "unknown field 'nope'" in res.stderr


def test_file_receives_the_output(invoke: Invoke, tmp_path: Path) -> None:
    out = tmp_path / "list.json"
    res = invoke("list", "--json", "-f", str(out))
    assert (res.exit_code, res.stdout) == (0, "")
    assert [d["name"] for d in check_json("list", out.read_text())["devices"]] == [
        "accel0",
        "accel1",
    ]


def test_file_in_a_missing_directory_is_exit_2_naming_it(invoke: Invoke, tmp_path: Path) -> None:
    res = invoke("list", "-f", str(tmp_path / "no" / "x"))
    assert res.exit_code == 2
    assert str(tmp_path / "no" / "x") in res.stderr


def test_loop_prints_one_json_document_per_refresh(invoke: Invoke) -> None:
    res = invoke("list", "-l", "0.01", "-n", "3", "--json")
    assert len(check_json_lines("list", res.stdout)) == 3


def test_loop_csv_prints_its_header_once(invoke: Invoke) -> None:
    res = invoke("info", "accel0", "-l", "0.01", "-n", "2", "-q", "name,reset_count")
    assert res.stdout.splitlines() == ["name,reset_count", "accel0,0", "accel0,0"]


def test_ps_loops_too(invoke: Invoke, sim: EmbeddedSource) -> None:
    proc = Process(sim.subsystem, uid=1000, comm="job")
    proc.open("/dev/accel/accel1")
    res = invoke("ps", "-l", "0.01", "-n", "2", "--json")
    assert [len(doc["files"]) for doc in check_json_lines("ps", res.stdout)] == [1, 1]
    proc.exit()


# -- exit codes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotPermitted("x"), 4),
        (Busy("accel0 is in reset"), 10),
        (NoDevice("unplugged"), 15),
        (OSError(errno.ENOENT, "x"), 6),
        (OSError(errno.EIO, "x"), 1),
    ],
)
def test_errno_exit_codes(exc: OSError, code: int) -> None:
    assert exit_code_of(exc) == code
