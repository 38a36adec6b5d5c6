"""DRM_IOCTL_VERSION and the common INFO ioctl, for owners and non-owners."""

from __future__ import annotations

from typing import Any

from accelcore.driver import OwnershipPolicy
from accelcore.testing.conformance import check
from accelcore.testing.conformance.rig import INFO_OPS, Rig
from accelcore.testing.conformance.session import Conformance
from accelcore.uapi import CORE
from accelcore.userspace import Process


@check("version-info", "VERSION names the driver, with the two-call length pattern")
def test_version_two_calls(accel_conformance: Conformance) -> None:
    rig = accel_conformance.rig()
    proc = rig.process()
    fd = rig.open(proc)
    first = CORE.new("struct drm_version")
    proc.ioctl(fd, CORE.DRM_IOCTL_VERSION, first)
    drv = rig.driver
    assert (first.version_major, first.version_minor, first.version_patchlevel) == drv.version
    assert first.name_len == len(drv.name.encode()), (
        f"VERSION name_len {first.name_len} != len({drv.name!r})"
    )
    bufs = {
        f: proc.alloc(max(int(getattr(first, f + "_len")), 1)) for f in ("name", "date", "desc")
    }
    second = CORE.new("struct drm_version")
    for f, b in bufs.items():
        setattr(second, f + "_len", getattr(first, f + "_len"))
        setattr(second, f, b.addr)
    proc.ioctl(fd, CORE.DRM_IOCTL_VERSION, second)
    got = {f: bytes(b.view[: getattr(first, f + "_len")]).decode() for f, b in bufs.items()}
    assert got["name"] == drv.name, f"VERSION name {got['name']!r} != driver name {drv.name!r}"
    assert got["desc"] == drv.desc, f"VERSION desc {got['desc']!r} != driver desc {drv.desc!r}"
    assert second.name_len == first.name_len


def _owner_and_other(rig: Rig) -> tuple[Process, int, tuple[Process, int] | None]:
    """An owning file, and a non-owner's file if the policy allows one."""
    owner = rig.process()
    ofd = rig.open(owner)
    if rig.policy != OwnershipPolicy.PER_PROCESS:
        owner.ioctl(ofd, CORE.DRM_IOCTL_SET_MASTER, 0)
    other = rig.process()
    if rig.policy != OwnershipPolicy.EXCLUSIVE_OPEN:
        return owner, ofd, (other, rig.open(other))
    if rig.devices[0].control_path is not None:
        return owner, ofd, (other, rig.open(other, control=True))
    return owner, ofd, None


def _check_info(rig: Rig, proc: Process, fd: int, who: str) -> list[str]:
    problems: list[str] = []
    for op, (name, ctype, array) in INFO_OPS.items():
        where = f"INFO {name} ({who})"
        zero, _ = rig.info(proc, fd, op, 0)
        n = int(zero.actual_size)
        elem = CORE.sizeof(ctype)
        if (array and n % elem) or (not array and n != elem):
            problems.append(f"{where}: actual_size {n} is not {'k * ' if array else ''}{elem}")
            continue
        full, data = rig.info(proc, fd, op, n)
        if full.actual_size != n:
            problems.append(f"{where}: actual_size {full.actual_size} then {n}")
        answer = data[:n]
        if data[n:] != b"\xa5" * (len(data) - n):
            problems.append(f"{where}: wrote past return_size {n}")
        larger, ldata = rig.info(proc, fd, op, n + 64)
        if larger.actual_size != n or ldata[:n] != answer or ldata[n : n + 64] != b"\xa5" * 64:
            problems.append(f"{where}: return_size {n + 64} (larger than the answer) mishandled")
        if n:
            small = max(elem // 2, 1) if not array else elem * (n // elem // 2) + elem // 2
            s, sdata = rig.info(proc, fd, op, small)
            cut = small - small % elem if array else small
            if s.actual_size != n:
                problems.append(f"{where}: actual_size {s.actual_size} != {n} for a short buffer")
            if sdata[:cut] != answer[:cut] or sdata[cut:] != b"\xa5" * (len(sdata) - cut):
                problems.append(f"{where}: return_size {small} (smaller) not cut to {cut} bytes")
        if name == "device":
            problems += _check_device(rig, CORE.from_bytes(ctype, answer), where)
        if name == "status":
            st = CORE.from_bytes(ctype, answer)
            if st.status != CORE.ACCEL_STATUS_OPERATIONAL:
                problems.append(f"{where}: status {st.status} on a healthy device")
            if st.open_count != len(rig.devices[0].files):
                problems.append(f"{where}: open_count {st.open_count} != open files")
        if name == "clients" and n // elem != len(rig.devices[0].files):
            problems.append(f"{where}: {n // elem} clients for {len(rig.devices[0].files)} files")
    return problems


def _check_device(rig: Rig, dev: Any, where: str) -> list[str]:
    out = []
    driver = CORE.ffi.string(dev.driver).decode()
    if driver != rig.name:
        out.append(f"{where}: driver {driver!r} != {rig.name!r}")
    if dev.minor != rig.devices[0].minor:
        out.append(f"{where}: minor {dev.minor} != {rig.devices[0].minor}")
    if dev.ownership_policy != int(rig.policy):
        out.append(f"{where}: ownership_policy {dev.ownership_policy} != {int(rig.policy)}")
    return out


@check("version-info", "every core INFO query answers owner and non-owner, cut to return_size")
def test_info_core_queries(accel_conformance: Conformance) -> None:
    rig = accel_conformance.rig()
    owner, ofd, other = _owner_and_other(rig)
    problems = _check_info(rig, owner, ofd, "owner")
    if other is not None:
        problems += _check_info(rig, other[0], other[1], "non-owner")
    assert not problems, f"driver {rig.name}:\n  " + "\n  ".join(problems)
    if other is None:
        accel_conformance.report("INFO: owner only (exclusive open without a control node)")
