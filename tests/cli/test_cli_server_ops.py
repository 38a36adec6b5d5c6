"""accelctl's sysfs walk, attribute stores, reset, trigger and holder lists
against a running devfs server (issue 8): CliRunner, one real subprocess, and
the refusals a non-root peer gets."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import check_json, check_json_lines
from click.testing import CliRunner, Result

from accelcore.cli import main
from accelcore.cli.server_source import ServerSource
from accelcore.demo.story import Child
from accelcore.server import Server, connect
from accelcore.server.client import ClientProcess

ACCEL0 = "/devices/pci0000:00/0000:00:01.0/accel/accel0"
FN0 = "/devices/pci0000:00/0000:00:01.0"
SHARE = 64 * 1024


def run(rt: Path, *args: str) -> Result:
    env = {"ACCEL_RUNTIME_DIR": str(rt), "ACCEL_DEVICE": None}
    return CliRunner().invoke(main, list(args), env=env, prog_name="accelctl")


def _value(levels: list[dict[str, Any]], devpath: str, name: str) -> Any:
    level = next(lvl for lvl in levels if lvl["devpath"] == devpath)
    return next(a for a in level["attributes"] if a["name"] == name)


@pytest.fixture
def exporter(served: Server) -> Iterator[tuple[ClientProcess, int]]:
    """This process as a client that exported a dma-buf of accel0's DRAM; its fd."""
    from drivers.habana_like.userlib import HlkClient

    proc = connect(served.runtime_dir)
    try:
        proc_any: Any = proc
        hl = HlkClient(proc_any, proc.open("/dev/accel/accel0"))
        fd = hl.export(hl.map_device(hl.mem_alloc(SHARE)), SHARE)
        yield proc, fd
    finally:
        proc.exit()


# -- attrs ------------------------------------------------------------------------------
def test_attrs_walks_accel0_and_its_parents(served: Server) -> None:
    res = run(served.runtime_dir, "attrs", "accel0", "--json")
    assert res.exit_code == 0, res.output
    data = check_json("attrs", res.stdout)
    assert [lvl["kernel"] for lvl in data["levels"]] == ["accel0", "0000:00:01.0", "pci0000:00"]
    assert [lvl["driver"] for lvl in data["levels"]] == [None, "habana_like", None]
    power = _value(data["levels"], ACCEL0, "max_power")
    assert (power["value"], power["mode"], power["writable"]) == ("350000", "0644", True)
    assert _value(data["levels"], ACCEL0, "hard_reset")["value"] is None  # write-only


def test_attrs_matches_the_embedded_walk_of_the_same_machine(served: Server) -> None:
    from server_fixtures import SERVED_MACHINE

    from accelcore.cli.sources import EmbeddedSource
    from accelcore.server.daemon import load_machine

    embedded = EmbeddedSource(load_machine(SERVED_MACHINE))
    try:
        want = [(lvl.devpath, [a.name for a in lvl.attributes]) for lvl in embedded.attrs("accel1")]
    finally:
        embedded.close()
    got = ServerSource(served.runtime_dir).attrs("accel1")
    assert [(lvl.devpath, [a.name for a in lvl.attributes]) for lvl in got] == want


def test_attrs_store_writes_on_the_device(served: Server) -> None:
    res = run(served.runtime_dir, "attrs", "accel0", "max_power", "300000", "--json")
    assert res.exit_code == 0, res.output
    assert check_json("attrs-store", res.stdout) == {
        "device": "accel0",
        "devpath": ACCEL0,
        "attribute": "max_power",
        "value": "300000",
    }
    levels = check_json("attrs", run(served.runtime_dir, "attrs", "accel0", "--json").stdout)
    assert _value(levels["levels"], ACCEL0, "max_power")["value"] == "300000"


def test_attrs_store_finds_the_attribute_on_a_parent(served: Server) -> None:
    res = run(served.runtime_dir, "attrs", "accel0", "driver_override", "habana_like", "--json")
    assert res.exit_code == 0, res.output
    assert check_json("attrs-store", res.stdout)["devpath"] == FN0


def test_attrs_store_refused_by_the_driver_is_one_line(served: Server) -> None:
    res = run(served.runtime_dir, "attrs", "accel0", "max_power", "5")
    assert res.exit_code == 2  # the driver's EINVAL: invalid argument
    assert res.stderr.startswith("Error: max_power 5 mW is outside ")


def test_attrs_store_of_a_read_only_attribute_is_one_line(served: Server) -> None:
    res = run(served.runtime_dir, "attrs", "accel0", "serial", "x")
    assert res.exit_code == 4  # EACCES: no permission
    assert res.stderr == f"Error: attribute 'serial' on {ACCEL0} is read-only\n"


def test_attrs_store_of_an_unknown_attribute_is_one_line(served: Server) -> None:
    res = run(served.runtime_dir, "attrs", "accel0", "nope", "1")
    assert res.exit_code == 6  # ENOENT: not found
    assert res.stderr == "Error: no attribute 'nope' on accel0 or its parents\n"


# -- reset and trigger ---------------------------------------------------------------------
def test_reset_through_the_server(served: Server) -> None:
    res = run(served.runtime_dir, "reset", "accel1", "--yes", "--reason", "cli-test", "--json")
    assert res.exit_code == 0, res.output
    assert check_json("reset", res.stdout) == {
        "device": "accel1",
        "reason": "cli-test",
        "status": "operational",
        "reset_count": 1,
    }


@pytest.mark.skipif(os.getuid() != 0, reason="dropping to uid 65534 needs root")
def test_reset_by_a_non_root_peer_is_eacces(served: Server) -> None:
    rt = served.runtime_dir
    rt.chmod(0o755)  # mkdtemp's 0700 would refuse nobody before the server could
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 250
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            ServerSource(rt).reset("accel0", "nobody")
            code = 0
        except PermissionError as exc:
            code = exc.errno or 251
        except BaseException:
            code = 252
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == errno.EACCES
    assert served.machine.subsystem.device("accel0").reset_count == 0


def test_monitor_trigger_shows_a_change_per_device(served: Server) -> None:
    res = run(served.runtime_dir, "monitor", "--trigger", "-n", "2", "-t", "10", "--json")
    assert res.exit_code == 0, res.output
    events = check_json_lines("monitor", res.stdout)
    assert [(e["action"], e["devpath"].rsplit("/", 1)[1]) for e in events] == [
        ("change", "accel0"),
        ("change", "accel1"),
    ]


# -- holders -------------------------------------------------------------------------------
def test_ps_lists_the_holding_descriptor(holder: Child, served: Server) -> None:
    files = check_json("ps", run(served.runtime_dir, "ps", "--json").stdout)["files"]
    (f,) = files
    assert [h["pid"] for h in f["holders"]] == [holder.pid]
    assert f["fdinfo"]["drm-pdev"] == "0000:00:01.0"


def test_ps_lists_every_holder_of_a_dup(served: Server) -> None:
    proc = connect(served.runtime_dir)
    try:
        fd = proc.open("/dev/accel/accel1")
        fd2 = proc.dup(fd)
        (f,) = check_json("ps", run(served.runtime_dir, "ps", "--json").stdout)["files"]
    finally:
        proc.exit()
    assert f["holders"] == [{"pid": os.getpid(), "fd": fd}, {"pid": os.getpid(), "fd": fd2}]


def test_dmabuf_lists_the_exporting_holder(
    served: Server, exporter: tuple[ClientProcess, int]
) -> None:
    _, fd = exporter
    data = check_json("dmabuf", run(served.runtime_dir, "dmabuf", "--json").stdout)
    (buf,) = data["buffers"]
    assert (buf["exporter"], buf["size"], data["total_size"]) == ("accel0", SHARE, SHARE)
    assert buf["holders"] == [{"pid": os.getpid(), "fd": fd}]


# -- a real process ------------------------------------------------------------------------
@pytest.mark.subprocess
def test_attrs_store_reset_monitor_and_ps_as_processes(holder: Child, served: Server) -> None:
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

    levels = check_json("attrs", accelctl("attrs", "accel1", "--json"))["levels"]
    assert levels[0]["kernel"] == "accel1"
    stored = check_json(
        "attrs-store", accelctl("attrs", "accel0", "clk_max_freq_mhz", "900", "--json")
    )
    assert stored["devpath"] == ACCEL0
    (f,) = check_json("ps", accelctl("ps", "--json"))["files"]
    assert [h["pid"] for h in f["holders"]] == [holder.pid]
    events = check_json_lines(
        "monitor", accelctl("monitor", "--trigger", "-n", "2", "-t", "10", "--json")
    )
    assert [e["action"] for e in events] == ["change", "change"]
    reset = check_json("reset", accelctl("reset", "accel1", "--yes", "--json"))
    assert reset["reset_count"] == 1
