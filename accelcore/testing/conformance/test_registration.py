"""Registration: the driver registers, and its ioctl table follows the uAPI rules."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from accelcore.clock import VirtualClock
from accelcore.driver import DRM_COMMAND_BASE, DRM_COMMAND_END, DRM_IOCTL_BASE
from accelcore.subsystem import Subsystem
from accelcore.testing.conformance import check
from accelcore.testing.conformance.session import Conformance
from accelcore.uapi import CORE_HEADER, check_struct
from accelcore.uapi.ioc import IOC_SIZEMASK


@check("registration", "register_driver accepts the driver (uAPI rules, ioctl table, INFO ops)")
def test_register_driver_succeeds(accel_conformance: Conformance) -> None:
    sub = Subsystem(VirtualClock())
    driver = accel_conformance.driver()
    try:
        sub.register_driver(driver)
    except OSError as exc:
        pytest.fail(f"driver {driver.name} refused at registration: {exc}", pytrace=False)
    assert sub.drivers[driver.name] is driver


@check("registration", "every driver ioctl is a 'd' ioctl in 0x40..0x9F with a rule-abiding struct")
def test_ioctls_in_driver_range(accel_conformance: Conformance) -> None:
    driver = accel_conformance.driver()
    try:
        table = driver.ioctl_table()
    except OSError as exc:
        pytest.fail(f"driver {driver.name}: bad ioctl table: {exc}", pytrace=False)
    problems = []
    for nr, d in sorted(table.items()):
        if (d.cmd >> 8) & 0xFF != DRM_IOCTL_BASE or not DRM_COMMAND_BASE <= nr < DRM_COMMAND_END:
            problems.append(f"{d.name} ({d.cmd:#010x}) is outside the driver range")
        if d.arg_type is not None:
            assert driver.uapi is not None
            size = (d.cmd >> 16) & IOC_SIZEMASK
            if size != driver.uapi.sizeof(d.arg_type):
                problems.append(f"{d.name}: size field {size} != sizeof({d.arg_type})")
            problems += [f"{d.name}: {v}" for v in check_struct(driver.uapi, d.arg_type)]
    assert not problems, f"driver {driver.name}: " + "; ".join(problems)


def _gcc_probe(src: str, includes: list[Path]) -> subprocess.CompletedProcess[str] | None:
    with tempfile.TemporaryDirectory() as tmp:
        c = Path(tmp) / "probe.c"
        c.write_text(src)
        exe = Path(tmp) / "probe"
        flags = [f"-I{p}" for p in includes]
        cc = subprocess.run(
            ["gcc", *flags, "-o", str(exe), str(c)], capture_output=True, text=True, check=False
        )
        if cc.returncode != 0:
            return cc
        return subprocess.run([str(exe)], capture_output=True, text=True, check=True)


@check(
    "registration", "ioctl numbers and struct sizes agree with gcc on the header (if gcc exists)"
)
def test_numbers_agree_with_gcc(accel_conformance: Conformance) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc on this machine (the C cross-check is optional)")
    driver = accel_conformance.driver()
    if driver.uapi is None:
        pytest.skip(f"driver {driver.name} has no uAPI header")
    base = _gcc_probe(
        "#include <linux/types.h>\n#include <linux/ioctl.h>\nint main(void){return 0;}\n", []
    )
    if base is None or base.returncode != 0:
        pytest.skip("gcc cannot compile against <linux/types.h> here (no kernel headers)")
    table = sorted(driver.ioctl_table().values(), key=lambda d: d.cmd)
    header = driver.uapi.path
    lines = ["#include <stdio.h>", f'#include "{header.name}"', "int main(void) {"]
    lines += [f'printf("%lu\\n", (unsigned long){d.name});' for d in table]
    structs = sorted({d.arg_type for d in table if d.arg_type is not None})
    lines += [f'printf("%zu\\n", sizeof({s}));' for s in structs]
    lines.append("return 0; }")
    run = _gcc_probe("\n".join(lines), [CORE_HEADER.parent, header.parent])
    assert run is not None
    assert run.returncode == 0, f"gcc cannot compile {header.name}:\n{run.stderr}"
    got = [int(x) for x in run.stdout.split()]
    want = [d.cmd for d in table] + [driver.uapi.sizeof(s) for s in structs]
    names = [d.name for d in table] + [f"sizeof({s})" for s in structs]
    wrong = [f"{n}: python {w:#x}, gcc {g:#x}" for n, w, g in zip(names, want, got, strict=True)]
    wrong = [w for w, a, b in zip(wrong, want, got, strict=True) if a != b]
    assert not wrong, f"{header.name}: the loader and gcc disagree: " + "; ".join(wrong)
