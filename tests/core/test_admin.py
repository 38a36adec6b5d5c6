"""accelcore.admin in process: the same operations and privilege rules the server's
control ops serve (tests/server/test_control_ops.py runs them through a server)."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from accelcore import Process
from accelcore.admin import ROOT, Admin, Holder, TriggerLimit
from accelcore.clock import VirtualClock
from accelcore.errors import NoEntry, PermissionDenied, TryAgain
from accelcore.machine import Machine
from accelcore.task import Credentials
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.testing.vaccel import VAccelDriver
from accelcore.uapi import CORE

USER = Credentials(uid=1000, gid=1000)


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = Machine()
    driver = m.add_driver(VAccelDriver())
    for _ in range(2):
        m.subsystem.create_device(driver)
    yield m
    m.shutdown()


@pytest.fixture
def admin(machine: Machine) -> Admin:
    return Admin(machine.subsystem, trigger_limit=TriggerLimit(burst=2, interval_ns=1_000_000))


def test_files_shows_a_user_only_its_own_clients(machine: Machine, admin: Admin) -> None:
    base = machine.subsystem.accounting()
    mine, theirs = Process(machine.subsystem, uid=1000), Process(machine.subsystem, uid=1001)
    fd = mine.open("/dev/accel/accel0")
    theirs.open("/dev/accel/accel1")
    assert [(r.device, r.uid, r.holders) for r in admin.files(USER)] == [
        ("accel0", 1000, [Holder(mine.pid, fd)])
    ]
    assert sorted(r.uid for r in admin.files(ROOT)) == [1000, 1001]
    mine.exit()
    theirs.exit()
    assert machine.subsystem.accounting() == base


def test_bufinfo_is_root_only(machine: Machine, admin: Admin) -> None:
    proc = Process(machine.subsystem, uid=1000)
    fd = proc.open("/dev/accel/accel0")
    bo = V.new("struct vaccel_create_bo", size=4096)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    ph = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC)
    proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
    with pytest.raises(PermissionDenied) as exc:
        admin.bufinfo(USER)
    assert exc.value.errno == errno.EACCES
    (buf,) = admin.bufinfo(ROOT)
    assert (buf.exporter, buf.holders) == ("accel0", [Holder(proc.pid, ph.fd)])
    proc.exit()


def test_reset_by_a_user_is_eacces_and_changes_nothing(machine: Machine, admin: Admin) -> None:
    with pytest.raises(PermissionDenied):
        admin.reset("accel0", "test", USER)
    assert machine.subsystem.device("accel0").reset_count == 0
    assert admin.reset("accel0", "test", ROOT).reset_count == 1


def test_trigger_budget_refills_with_device_time(machine: Machine, admin: Admin) -> None:
    assert len(admin.trigger(USER)) == 2  # the whole budget (2 devices)
    with pytest.raises(TryAgain) as exc:
        admin.trigger(USER, "accel0")
    assert exc.value.errno == errno.EAGAIN and "uid 1000" in str(exc.value)
    assert len(admin.trigger(ROOT)) == 2  # admin is not limited
    assert len(admin.trigger(Credentials(uid=1001))) == 2  # budgets are per uid
    assert isinstance(machine.clock, VirtualClock)
    machine.clock.advance(1_000_000)
    assert [e.device for e in admin.trigger(USER, "accel1")] == ["accel1"]


def test_store_of_an_unknown_attribute_is_enoent(admin: Admin) -> None:
    with pytest.raises(NoEntry, match="no attribute 'nope' on accel0"):
        admin.store_attribute("accel0", "nope", "1", ROOT)


def test_an_unknown_device_is_enoent_for_every_operation(admin: Admin) -> None:
    for call in (
        lambda: admin.attributes("accel9", ROOT),
        lambda: admin.reset("accel9", "x", ROOT),
        lambda: admin.trigger(ROOT, "accel9"),
    ):
        with pytest.raises(NoEntry, match="accel9"):
            call()
