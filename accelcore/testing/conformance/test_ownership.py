"""Ownership of the compute context, per the policy the driver declares (seeds 000/001)."""

from __future__ import annotations

import errno

import pytest

from accelcore.driver import IoctlFlags, OwnershipPolicy
from accelcore.testing.conformance import check
from accelcore.testing.conformance.rig import Rig, example_setup
from accelcore.testing.conformance.session import Conformance
from accelcore.uapi import CORE

SINGLE = (OwnershipPolicy.LAZY_SINGLE, OwnershipPolicy.EXCLUSIVE_OPEN)


def _require(conf: Conformance, *policies: OwnershipPolicy) -> None:
    if conf.driver.ownership not in policies:
        pytest.skip(
            f"driver {conf.name} declares policy {conf.driver.ownership.name}: not applicable"
        )


def _errno_of(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    return 0


def _compute_example(rig: Rig) -> str | None:
    """An example ioctl that needs the compute context (OWNER), if the driver has one."""
    found = [
        desc.name
        for desc in rig.devices[0].ioctls.values()
        if IoctlFlags.OWNER in desc.flags
        and desc.name in rig.examples()
        and rig.on_accel(desc.name)
    ]
    # Prefer an example with no setup steps: the call itself is what is checked.
    found.sort(key=lambda n: example_setup(rig.driver, n) is not None)
    return found[0] if found else None


def _owner_of(rig: Rig) -> object:
    return rig.devices[0].ownership.owner


@check("ownership", "a second would-be owner gets EBUSY (single-owner policies)")
def test_second_owner_busy(accel_conformance: Conformance) -> None:
    _require(accel_conformance, *SINGLE)
    rig = accel_conformance.rig()
    a, b = rig.process(), rig.process()
    fa = rig.open(a)
    a.ioctl(fa, CORE.DRM_IOCTL_SET_MASTER, 0)
    if rig.policy == OwnershipPolicy.EXCLUSIVE_OPEN:
        got = _errno_of(rig.open, b)
        assert got == errno.EBUSY, f"second open of an owned exclusive-open device: errno {got}"
        return
    fb = rig.open(b)
    got = _errno_of(b.ioctl, fb, CORE.DRM_IOCTL_SET_MASTER, 0)
    assert got == errno.EBUSY, f"SET_MASTER by a second file while owned: errno {got}, not EBUSY"
    name = _compute_example(rig)
    if name is not None:
        got = _errno_of(rig.run_example, b, fb, name)
        assert got == errno.EBUSY, f"{name} by a non-owner while owned: errno {got}, not EBUSY"


@check("ownership", "an INFO-only file becomes the owner when the device is free (lazy policy)")
def test_info_only_file_upgrades(accel_conformance: Conformance) -> None:
    _require(accel_conformance, OwnershipPolicy.LAZY_SINGLE)
    rig = accel_conformance.rig()
    a, b = rig.process(), rig.process()
    fa, fb = rig.open(a), rig.open(b)
    rig.info(b, fb, CORE.ACCEL_INFO_DEVICE)
    a.ioctl(fa, CORE.DRM_IOCTL_SET_MASTER, 0)
    a.close(fa)
    assert _owner_of(rig) is None, "the owner's last close did not free the device"
    name = _compute_example(rig)
    if name is not None:
        rig.run_example(b, fb, name)
    else:
        b.ioctl(fb, CORE.DRM_IOCTL_SET_MASTER, 0)
    owner = _owner_of(rig)
    assert owner is not None and owner is rig.file_of(b, fb), (
        "the INFO-only file did not become the owner of the free device"
    )


@check("ownership", "a dup'd descriptor shares ownership (same open file description)")
def test_dup_shares_ownership(accel_conformance: Conformance) -> None:
    _require(accel_conformance, *SINGLE)
    rig = accel_conformance.rig()
    a = rig.process()
    fa = rig.open(a)
    a.ioctl(fa, CORE.DRM_IOCTL_SET_MASTER, 0)
    fd2 = a.dup(fa)
    got = _errno_of(a.ioctl, fd2, CORE.DRM_IOCTL_SET_MASTER, 0)
    assert got == 0, f"SET_MASTER on a dup of the owner's descriptor: errno {got}"
    name = _compute_example(rig)
    if name is not None:
        got = _errno_of(rig.run_example, a, fd2, name)
        assert got == 0, f"{name} on a dup of the owner's descriptor: errno {got}"


@check("ownership", "the owner's last close (not the first) frees the device for a new owner")
def test_last_close_frees(accel_conformance: Conformance) -> None:
    _require(accel_conformance, *SINGLE)
    rig = accel_conformance.rig()
    a, b = rig.process(), rig.process()
    fa = rig.open(a)
    a.ioctl(fa, CORE.DRM_IOCTL_SET_MASTER, 0)
    fd2 = a.dup(fa)
    a.close(fa)
    assert _owner_of(rig) is not None, "closing one of two descriptors freed the ownership"
    a.close(fd2)
    assert _owner_of(rig) is None, "the owner's last close did not free the device"
    fb = rig.open(b)
    got = _errno_of(b.ioctl, fb, CORE.DRM_IOCTL_SET_MASTER, 0)
    assert got == 0, f"a new owner after the last close: errno {got}"


@check("ownership", "per-process contexts: SET_MASTER is EINVAL, two files both compute")
def test_per_process_contexts(accel_conformance: Conformance) -> None:
    _require(accel_conformance, OwnershipPolicy.PER_PROCESS)
    rig = accel_conformance.rig()
    a, b = rig.process(), rig.process()
    fa, fb = rig.open(a), rig.open(b)
    got = _errno_of(a.ioctl, fa, CORE.DRM_IOCTL_SET_MASTER, 0)
    assert got == errno.EINVAL, f"SET_MASTER under per-process contexts: errno {got}, not EINVAL"
    name = rig.context_example()
    if name is None:
        pytest.skip(
            f"driver {rig.name} declares no example that makes a compute context (an OWNER "
            f"ioctl, or one whose `example_setup` acquires a context)"
        )
    for proc, fd, who in ((a, fa, "first"), (b, fb, "second")):
        got = _errno_of(rig.run_example, proc, fd, name)
        assert got == 0, f"{name} by the {who} of two files: errno {got}"
