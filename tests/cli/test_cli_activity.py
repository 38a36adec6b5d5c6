"""accelctl ps, dmabuf, top and monitor through CliRunner."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cli_helpers import Invoke, check_json, check_json_lines

from accelcore.cli.sources import EmbeddedSource
from accelcore.demo.quick import create_bo, submit
from accelcore.uapi import CORE
from accelcore.userspace import Process


@pytest.fixture
def job(sim: EmbeddedSource) -> Iterator[Process]:
    """A process owning accel0 with one buffer and a 1 ms job in flight."""
    proc = Process(sim.subsystem, uid=1000, comm="job")
    fd = proc.open("/dev/accel/accel0")
    handle, _ = create_bo(proc, fd, 8192)
    submit(proc, fd, handle, 7, 1_000_000)
    yield proc
    proc.exit()


def test_ps_lists_no_files_on_idle_machine(invoke: Invoke) -> None:
    assert check_json("ps", invoke("ps", "--json").stdout) == {"files": []}


def test_ps_lists_owner_with_fdinfo_and_holders(invoke: Invoke, job: Process) -> None:
    res = invoke("ps", "--json")
    assert res.exit_code == 0, res.stderr
    (f,) = check_json("ps", res.stdout)["files"]
    assert (f["device"], f["pid"], f["comm"], f["uid"], f["owner"]) == (
        "accel0",
        job.pid,
        "job",
        1000,
        True,
    )
    assert f["holders"] == [{"pid": job.pid, "fd": 3}]
    assert f["fdinfo"]["drm-driver"] == "vaccel"
    assert f["fdinfo"]["drm-total-memory"] == "8 KiB"


def test_ps_shows_forked_holder(invoke: Invoke, job: Process) -> None:
    child = job.fork()
    (f,) = check_json("ps", invoke("ps", "--json").stdout)["files"]
    assert sorted(h["pid"] for h in f["holders"]) == sorted([job.pid, child.pid])
    child.exit()


def test_ps_selector_filters_devices(invoke: Invoke, job: Process) -> None:
    assert check_json("ps", invoke("ps", "accel1", "--json").stdout) == {"files": []}


def test_ps_table_names_process(invoke: Invoke, job: Process) -> None:
    res = invoke("ps")
    assert res.exit_code == 0
    assert "job" in res.stdout and "owner" in res.stdout


def test_dmabuf_empty(invoke: Invoke) -> None:
    assert check_json("dmabuf", invoke("dmabuf", "--json").stdout) == {
        "buffers": [],
        "total_size": 0,
    }


def test_dmabuf_lists_export_with_holder(invoke: Invoke, job: Process) -> None:
    p = CORE.new("struct drm_prime_handle", handle=1, flags=CORE.DRM_CLOEXEC)
    job.ioctl(3, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, p)
    data = check_json("dmabuf", invoke("dmabuf", "--json").stdout)
    (buf,) = data["buffers"]
    assert (buf["exporter"], buf["exp_name"], buf["size"]) == ("accel0", "vaccel", 8192)
    assert buf["holders"] == [{"pid": job.pid, "fd": p.fd}]
    assert data["total_size"] == 8192


def test_dmabuf_table_renders(invoke: Invoke, job: Process) -> None:
    p = CORE.new("struct drm_prime_handle", handle=1, flags=CORE.DRM_CLOEXEC)
    job.ioctl(3, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, p)
    res = invoke("dmabuf")
    assert "Total 1 objects, 8192 bytes" in res.stdout


def test_top_json_prints_one_line_per_iteration(invoke: Invoke, job: Process) -> None:
    res = invoke("top", "--iterations", "3", "--interval", "0", "--json")
    assert res.exit_code == 0, res.stderr
    samples = check_json_lines("top", res.stdout)
    assert [s["iteration"] for s in samples] == [1, 2, 3]
    dev0 = samples[0]["devices"][0]
    assert (dev0["name"], dev0["owner_pid"], dev0["clients"]) == ("accel0", job.pid, 1)
    assert dev0["engines"][0]["busy"] is True


def test_top_advances_virtual_device_time(sim: EmbeddedSource, job: Process) -> None:
    sim.tick(2_000_000)  # what top does between refreshes on a virtual clock
    assert sim.info("accel0").engines[0].completed == 1


def test_top_table_renders(invoke: Invoke) -> None:
    res = invoke("top", "-n", "1")
    assert res.exit_code == 0
    assert "iteration 1" in res.stdout


def test_top_rejects_zero_iterations(invoke: Invoke) -> None:
    assert invoke("top", "--iterations", "0").exit_code == 2


def test_monitor_trigger_prints_change_events(invoke: Invoke) -> None:
    res = invoke("monitor", "--trigger", "--timeout", "0", "--json")
    assert res.exit_code == 0, res.stderr
    events = check_json_lines("monitor", res.stdout)
    assert [(e["action"], e["devpath"]) for e in events] == [
        ("change", "/devices/virtual/accel/accel0"),
        ("change", "/devices/virtual/accel/accel1"),
    ]
    assert events[0]["env"]["DEVNAME"] == "/dev/accel/accel0"


def test_monitor_stops_after_iterations(invoke: Invoke) -> None:
    res = invoke("monitor", "--trigger", "--iterations", "1", "--json")
    assert len(check_json_lines("monitor", res.stdout)) == 1


def test_monitor_text_with_properties(invoke: Invoke) -> None:
    res = invoke("monitor", "--trigger", "-n", "1", "--property")
    assert res.stdout.startswith("KERNEL[")
    assert "SUBSYSTEM=accel" in res.stdout


def test_monitor_sees_reset_uevent(sim: EmbeddedSource) -> None:
    stream = sim.events()
    sim.reset("accel1", "test")
    events = [stream.get(0), stream.get(0), stream.get(0)]
    stream.close()
    assert [e.env.get("STATUS") if e else None for e in events] == ["IN_RESET", "OPERATIONAL", None]
    assert events[1] is not None and events[1].env["REASON"] == "test"


def test_monitor_timeout_with_no_events_prints_nothing(invoke: Invoke) -> None:
    res = invoke("monitor", "--timeout", "0")
    assert (res.exit_code, res.stdout) == (0, "")
