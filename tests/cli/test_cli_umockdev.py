"""``accelctl --host`` against a umockdev testbed made from a simulated machine's sysfs:
the real libudev path (pyudev) sees the simulated devices."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import check_json

from accelcore.cli.sources import default_machine
from accelcore.sysfs_export import umockdev_description

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.skipif(shutil.which("umockdev-run") is None, reason="umockdev-run not installed"),
]


@pytest.fixture
def testbed(tmp_path: Path) -> Path:
    pytest.importorskip("pyudev")
    machine = default_machine()
    try:
        path = tmp_path / "machine.umockdev"
        path.write_text(umockdev_description(machine.sysfs))
    finally:
        machine.shutdown()
    return path


def under_umockdev(testbed: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ACCEL_DEVICE"}
    return subprocess.run(
        [
            "umockdev-run",
            "--device",
            str(testbed),
            "--",
            sys.executable,
            "-m",
            "accelcore.cli",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_host_list_sees_the_simulated_devices(testbed: Path) -> None:
    res = under_umockdev(testbed, "list", "--host", "--json")
    assert res.returncode == 0, res.stderr
    devices = check_json("list", res.stdout)["devices"]
    assert [(d["name"], d["driver"], d["minor"], d["source"]) for d in devices] == [
        ("accel0", "habana_like", 0, "host"),
        ("accel1", "habana_like", 1, "host"),
        ("accel2", "kfd_like", 2, "host"),
        ("accel3", "kfd_like", 3, "host"),
    ]
    assert devices[0]["node"] == "/dev/accel/accel0"
    assert (devices[0]["vendor"], devices[0]["device"]) == (0x1DA3, 0x1000)


def test_host_attrs_walks_to_the_pci_parent(testbed: Path) -> None:
    res = under_umockdev(testbed, "--host", "attrs", "accel0", "--json")
    assert res.returncode == 0, res.stderr
    levels = check_json("attrs", res.stdout)["levels"]
    assert [lvl["kernel"] for lvl in levels][:2] == ["accel0", "0000:00:01.0"]
