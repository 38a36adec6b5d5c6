"""sysfs attributes agree with INFO; the header registers and matches gcc."""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pytest

from accelcore.uapi import CORE_HEADER, check_uapi
from drivers.habana_like import HLK, HLK_HEADER, HabanaLikeDriver


def _node(machine):
    return machine.subsystem.device(0).sysfs


def test_status_and_serial(machine):
    node = _node(machine)
    assert node.read("status") == "operational\n"
    assert node.read("serial") == "HLK0000001\n"
    assert node.read("armcp_ver").startswith("armcp-")


def test_hard_reset_attribute_resets_and_counts(machine, client):
    mon = client("/dev/accel/accel_controlD0")
    _node(machine).write("hard_reset", "1")
    assert mon.info(HLK.HLK_INFO_RESET_COUNT, "struct hlk_info_reset_count").hard_reset_cnt == 1
    assert _node(machine).read("reset_count") == "1\n"


def test_hard_reset_needs_root(machine):
    with pytest.raises(OSError) as exc:
        _node(machine).write("hard_reset", "1", privileged=False)
    assert exc.value.errno == errno.EACCES


def test_clock_limit_is_reported_by_info(machine, client):
    _node(machine).write("clk_max_freq_mhz", "1200")
    mon = client("/dev/accel/accel_controlD0")
    assert mon.info(HLK.HLK_INFO_CLK_RATE, "struct hlk_info_clk_rate").max_clk_rate_mhz == 1200


def test_clock_limit_out_of_range_is_einval(machine):
    with pytest.raises(OSError) as exc:
        _node(machine).write("clk_max_freq_mhz", "5")
    assert exc.value.errno == errno.EINVAL


def test_ecc_counters_start_at_zero(machine):
    assert _node(machine).read("ecc_serr_count") == "0\n"
    assert _node(machine).read("ecc_derr_count") == "0\n"


def test_header_passes_the_uapi_rules():
    assert check_uapi(HLK) == []
    HabanaLikeDriver().check_uapi()


def test_driver_tables_build():
    drv = HabanaLikeDriver()
    assert {d.name for d in drv.ioctl_table().values()} == {
        "DRM_IOCTL_HLK_CB",
        "DRM_IOCTL_HLK_CS",
        "DRM_IOCTL_HLK_WAIT_CS",
        "DRM_IOCTL_HLK_MEMORY",
    }
    assert min(drv.info_table()) == HLK.HLK_INFO_HW_IP_INFO


_STRUCTS = list(HLK.types)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_ioctl_numbers_and_sizes_match_gcc(tmp_path: Path):
    lines = ["#include <stdio.h>", '#include "habana_like.h"', "int main(void) {"]
    for name in sorted(n for n in HLK.ioctls if n.startswith("DRM_IOCTL_HLK")):
        lines.append(f'printf("{name} %lu\\n", (unsigned long){name});')
    for t in _STRUCTS:
        lines.append(f'printf("{t.replace(" ", "_")} %zu\\n", sizeof({t}));')
    lines.append("return 0; }")
    src = tmp_path / "probe.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "probe"
    subprocess.run(
        [
            "gcc",
            "-I",
            str(CORE_HEADER.parent),
            "-I",
            str(HLK_HEADER.parent),
            str(src),
            "-o",
            str(exe),
        ],
        check=True,
    )
    out = dict(
        line.rsplit(" ", 1)
        for line in subprocess.run(
            [str(exe)], check=True, capture_output=True, text=True
        ).stdout.splitlines()
    )
    for name, d in HLK.ioctls.items():
        if name.startswith("DRM_IOCTL_HLK"):
            assert int(out[name]) == d.cmd, name
    for t in _STRUCTS:
        assert int(out[t.replace(" ", "_")]) == HLK.sizeof(t), t
