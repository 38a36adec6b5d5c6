"""Hot-unplug with open files (IGT core_hotunplug) and reset recovery.

After a hot-unplug every ioctl but the INFO identity and status queries gets
``ENODEV``; files, mappings and exported buffers stay valid objects, and
everything is freed when the last of them goes.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest

from accelcore.device import DeviceState
from accelcore.driver import IoctlFlags, OwnershipPolicy
from accelcore.testing.conformance import check
from accelcore.testing.conformance.rig import Rig
from accelcore.testing.conformance.session import Conformance
from accelcore.uapi import CORE
from accelcore.userspace import Process


def _errno_of(fn: Any, *args: Any) -> tuple[int, str]:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno or 0, str(exc.strerror)
    return 0, ""


def _after_unplug(
    rig: Rig, proc: Process, fd: int, prepared: dict[str, bytes] | None = None
) -> list[str]:
    """What a file of an unplugged device must answer; the problems found."""
    wrong = []
    calls: list[tuple[str, Any]] = [
        ("VERSION", lambda: proc.ioctl(fd, CORE.DRM_IOCTL_VERSION, CORE.new("struct drm_version"))),
        ("GET_CAP", lambda: proc.ioctl(fd, CORE.DRM_IOCTL_GET_CAP, CORE.new("struct drm_get_cap"))),
        ("SET_MASTER", lambda: proc.ioctl(fd, CORE.DRM_IOCTL_SET_MASTER, 0)),
        ("INFO ownership", lambda: rig.info(proc, fd, CORE.ACCEL_INFO_OWNERSHIP, 64)),
        ("INFO clients", lambda: rig.info(proc, fd, CORE.ACCEL_INFO_CLIENTS, 64)),
    ]
    for name, payload in (prepared or {}).items():
        cmd = rig.ioctl_def(name).cmd
        calls.append(
            (f"{name} (example)", lambda c=cmd, p=payload: proc.ioctl(fd, c, bytearray(p) or 0))
        )
    for what, fn in calls:
        got, msg = _errno_of(fn)
        if got != errno.ENODEV:
            wrong.append(f"{what} after unplug: {errno.errorcode.get(got, got)} {msg}, not ENODEV")
    got, msg = _errno_of(rig.info, proc, fd, CORE.ACCEL_INFO_DEVICE)
    if got:
        wrong.append(f"INFO device after unplug: errno {got} {msg} (identity must answer)")
    try:
        st = rig.info_status(proc, fd)
    except OSError as exc:
        wrong.append(f"INFO status after unplug: {exc}")
    else:
        if st.status != CORE.ACCEL_STATUS_UNPLUGGED:
            wrong.append(f"INFO status after unplug is {st.status}, not UNPLUGGED")
    return wrong


def _released(dev: Any) -> bool:
    return dev.state is DeviceState.RELEASED


def _gone(rig: Rig) -> None:
    """The unplugged device must be fully released by the end: expect it gone."""
    rig.expect.update({"devices": -1, "minors": -1})


@check("hot-unplug", "unplug with an open file: ENODEV but INFO identity/status, freed at close")
def test_unplug_with_open_file(accel_conformance: Conformance) -> None:
    rig = accel_conformance.rig()
    proc = rig.process()
    fd = rig.open(proc)
    prepared = {}
    for name in rig.examples():
        if rig.on_accel(name):
            prepared[name] = rig.prepare(proc, name, fd).payload
            rig.run_example(proc, fd, name)
    dev = rig.devices[0]
    rig.unplug()
    _gone(rig)
    wrong = _after_unplug(rig, proc, fd, prepared)
    assert not wrong, f"driver {rig.name}:\n  " + "\n  ".join(wrong)
    assert not _released(dev), "device released while a file is still open"
    proc.close(fd)
    assert _released(dev), (
        f"device not released after its last file closed (state {dev.state.value}, "
        f"{dev.refcount} references left)"
    )


@check("hot-unplug", "unplug with a buffer object and a CPU mapping: mapping zapped, no fault")
def test_unplug_with_bo_and_mapping(accel_conformance: Conformance) -> None:
    accel_conformance.require_bo_create()
    rig = accel_conformance.rig()
    proc = rig.process()
    fd = rig.open(proc)
    h = rig.create_bo(proc, fd)
    file: Any = rig.file_of(proc, fd)
    bo = file.handles.lookup(h)
    dev = rig.devices[0]
    offset = dev.mmap_offset(bo)
    m = proc.mmap(fd, bo.size, offset)
    engine_side = rig.engine_mapping(proc, m)
    m.view[:4] = b"\x01\x02\x03\x04"
    rig.unplug()
    _gone(rig)
    wrong = _after_unplug(rig, proc, fd)
    try:
        m.view[:4] = b"\x05\x06\x07\x08"  # must not fault
        _ = bytes(m.view[:4])
    except Exception as exc:
        wrong.append(f"access to a CPU mapping after unplug failed: {exc!r}")
    # Through the server the client's pages are the memfd it was passed, which
    # the server cannot revoke: the zap shows on the server's mapping.
    if not engine_side.zapped:
        wrong.append("the CPU mapping of a buffer object was not zapped at unplug")
    assert not wrong, f"driver {rig.name}:\n  " + "\n  ".join(wrong)
    proc.munmap(m)
    proc.close(fd)
    assert _released(dev), (
        f"device not released after its last file and mapping went ({dev.refcount} refs left)"
    )


@check("hot-unplug", "unplug with a dma-buf held by another process: freed at its last close")
def test_unplug_with_exported_dmabuf(accel_conformance: Conformance) -> None:
    accel_conformance.require_prime()
    accel_conformance.require_bo_create()
    rig = accel_conformance.rig()
    a, b = rig.process(), rig.process()
    fd = rig.open(a)
    h = rig.create_bo(a, fd)
    exp = CORE.new("struct drm_prime_handle", handle=h, flags=CORE.DRM_CLOEXEC | CORE.DRM_RDWR)
    a.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, exp)
    held = a.send_fd(exp.fd, b)
    a.close(exp.fd)
    dev = rig.devices[0]
    rig.unplug()
    _gone(rig)
    wrong = _after_unplug(rig, a, fd)
    a.exit()
    if _released(dev):
        wrong.append("device released while another process still holds its dma-buf")
    m = b.mmap(held, 4096)
    m.view[:2] = b"ok"
    b.munmap(m)
    b.close(held)
    if not _released(dev):
        wrong.append(f"device not released after the last dma-buf fd closed ({dev.refcount} refs)")
    assert not wrong, f"driver {rig.name}:\n  " + "\n  ".join(wrong)


def _run_example(rig: Rig, proc: Process, fd: int) -> str | None:
    """Run the first compute (OWNER) example, else any example; its name."""
    examples = rig.examples()
    descs = sorted(rig.devices[0].ioctls.values(), key=lambda d: IoctlFlags.OWNER not in d.flags)
    for d in descs:
        if d.name in examples and rig.on_accel(d.name):
            rig.run_example(proc, fd, d.name)
            return d.name
    return None


@check("reset", "after reset(): operational, reset_count+1, owner and next owner run an example")
def test_reset_recovery(accel_conformance: Conformance) -> None:
    rig = accel_conformance.rig()
    if not rig.examples():
        pytest.skip(f"driver {rig.name} declares no examples for its ioctls")
    a = rig.process()
    fa = rig.open(a)
    name = _run_example(rig, a, fa)
    before = rig.info_status(a, fa)
    got, msg = _errno_of(rig.devices[0].reset, "conformance")
    assert got == 0, (
        f"driver {rig.name}: reset() failed with errno {got} ({msg}); device status is now "
        f"{rig.devices[0].status.name}"
    )
    st = rig.info_status(a, fa)
    assert st.status == CORE.ACCEL_STATUS_OPERATIONAL, f"status {st.status} after reset"
    assert st.reset_count == before.reset_count + 1, (
        f"reset_count {st.reset_count} after reset, was {before.reset_count}"
    )
    got, msg = _errno_of(_run_example, rig, a, fa)
    assert got == 0, f"the owner's {name} after reset: errno {got} ({msg})"
    a.close(fa)
    b = rig.process()
    if rig.policy == OwnershipPolicy.EXCLUSIVE_OPEN:
        got, msg = _errno_of(rig.open, b)
        assert got == 0, f"opening after the owner left a reset device: errno {got} ({msg})"
    fb = rig.open(b)
    got, msg = _errno_of(_run_example, rig, b, fb)
    assert got == 0, f"the next owner's {name} after reset: errno {got} ({msg})"
