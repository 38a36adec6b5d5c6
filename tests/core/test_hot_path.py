"""What the in-process hot path remembers must never change an answer: per-number
ioctl plans, the two-range address-space cache, the early permission exit, and
header constants as plain attributes."""

from __future__ import annotations

import errno

import pytest

from accelcore import CORE, Process
from accelcore.device import DeviceStatus
from accelcore.task import AddressSpace
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import ioc, load_uapi

from .conftest import Rig

NOP_NR = V.ioctls["DRM_IOCTL_VACCEL_NOP"].nr


def _errno(exc: pytest.ExceptionInfo[OSError]) -> int:
    return exc.value.errno or 0


def test_each_size_of_one_number_keeps_its_own_plan(rig: Rig) -> None:
    """Full, short (zero-extended) and read-only calls of one ioctl, interleaved:
    a plan found for one caller's number is never used for another's."""
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    short_cmd = ioc.IOWR(ord("d"), NOP_NR, 8)
    read_cmd = ioc.IOR(ord("d"), NOP_NR, 16)
    for value in (41, 7, 99):
        full = V.new("struct vaccel_nop", value=value)
        p.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, full)
        assert full.result == value + 1
        short = bytearray(value.to_bytes(8, "little"))
        p.ioctl(fd, short_cmd, short)
        assert int.from_bytes(short, "little") == value  # only the user's 8 bytes return
        ro = bytearray(value.to_bytes(8, "little") + bytes(8))
        p.ioctl(fd, read_cmd, ro)
        assert int.from_bytes(ro[8:], "little") == 1  # no copy-in: the handler saw 0


def test_permission_checks_follow_the_device_after_a_plan_is_kept(rig: Rig) -> None:
    """The early exit is taken only on an operational device: a call that ran
    (its plan kept) is refused once the device is in reset, then runs again."""
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    bo = V.new("struct vaccel_create_bo", size=4096)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    rig.dev.set_status(DeviceStatus.IN_RESET)
    with pytest.raises(OSError) as e:
        p.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, V.new("struct vaccel_create_bo", size=4096))
    assert _errno(e) == errno.EBUSY
    rig.dev.set_status(DeviceStatus.MALFUNCTION)
    with pytest.raises(OSError) as e:
        p.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, V.new("struct vaccel_create_bo", size=4096))
    assert _errno(e) == errno.EIO
    rig.dev.set_status(DeviceStatus.OPERATIONAL)
    again = V.new("struct vaccel_create_bo", size=4096)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, again)
    assert again.handle != bo.handle


def test_a_kept_plan_does_not_outlive_the_unplug(rig: Rig) -> None:
    """After hot-unplug a number that ran before is ENODEV; INFO STATUS still answers."""
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, V.new("struct vaccel_nop", value=1))
    out = p.alloc(64)
    q = CORE.new(
        "struct accel_info", op=CORE.ACCEL_INFO_STATUS, return_pointer=out.addr, return_size=64
    )
    p.ioctl(fd, CORE.ACCEL_IOCTL_INFO, q)
    rig.sub.remove_device(rig.dev)
    rig.expect.update(minors=-1, devices=-1)
    with pytest.raises(OSError) as e:
        p.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, V.new("struct vaccel_nop", value=1))
    assert _errno(e) == errno.ENODEV
    p.ioctl(fd, CORE.ACCEL_IOCTL_INFO, q)
    status = CORE.from_bytes("struct accel_info_status", bytes(out.view[: q.actual_size]))
    assert status.status == DeviceStatus.UNPLUGGED


def test_address_cache_of_two_ranges_checks_every_access() -> None:
    """Accesses alternating between two ranges (an ioctl's argument and its answer)
    are served from the cache, but its bounds, write checks and unmaps still hold."""
    mm = AddressSpace()
    a = mm.alloc(64)
    ro = bytearray(b"read-only range!")
    b = mm.map(ro, writable=False)
    for _ in range(3):
        mm.copy_to_user(a.addr, b"xy")
        assert mm.copy_from_user(b, 4) == b"read"
    with pytest.raises(OSError) as e:  # the read-only range is cached, still read-only
        mm.copy_to_user(b, b"no")
    assert _errno(e) == errno.EFAULT
    with pytest.raises(OSError) as e:  # past the end of a cached range
        mm.copy_from_user(a.addr + 60, 8)
    assert _errno(e) == errno.EFAULT
    mm.free(a)
    with pytest.raises(OSError) as e:  # a cached range that was unmapped
        mm.copy_from_user(a.addr, 2)
    assert _errno(e) == errno.EFAULT
    assert mm.copy_from_user(b, 4) == b"read"


def test_header_constants_are_attributes_and_method_names_stay_methods(tmp_path) -> None:
    """A constant is an instance attribute (no lookup miss per ``CORE.X``); a
    constant named like a method stays in :attr:`constants` only; a name that is
    no constant raises AttributeError naming it."""
    u = load_uapi(
        tmp_path / "t.h",
        text="#define FOO_COUNT 7\n#define sizeof 3\n"
        "/* cffi:begin */\nstruct t { int a; };\n/* cffi:end */\n",
    )
    assert vars(u)["FOO_COUNT"] == 7 and u.FOO_COUNT == 7
    assert u.constants["sizeof"] == 3 and u.sizeof("struct t") == 4
    assert vars(CORE)["ACCEL_IOCTL_INFO"] == CORE.ioctls["ACCEL_IOCTL_INFO"].cmd
    with pytest.raises(AttributeError, match="NO_SUCH_NAME"):
        _ = u.NO_SUCH_NAME


def test_restart_after_a_fast_first_attempt(rig: Rig) -> None:
    """The system-call layer's first attempt runs without its restart loop; an
    interrupted one still fails EINTR without SA_RESTART and leaves no signal
    pending for the next call."""
    p: Process = rig.process()
    fd = p.open("/dev/accel/accel0")
    bo = V.new("struct vaccel_create_bo", size=4096)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    job = V.new("struct vaccel_submit", handle=bo.handle, fill=1, delay_ns=10**9)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
    p.task.inject_interrupts(0)
    with pytest.raises(OSError) as e:
        p.ioctl(
            fd, V.DRM_IOCTL_VACCEL_WAIT, V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=-1)
        )
    assert _errno(e) == errno.EINTR
    assert not p.task.signal_pending
    wait = V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=-1)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, wait)


def test_a_read_only_range_served_from_the_cache_gives_read_only_views() -> None:
    """The cache keeps a read-only range's view read-only: a pinned view of it
    cannot write it, however many times the range was used before."""
    mm = AddressSpace()
    rw = mm.alloc(64)
    b = mm.map(bytearray(b"read-only range!"), writable=False)
    for _ in range(3):  # the read-only range is the hot one, then the warm one
        assert mm.user_view(b, 4).readonly
        assert not mm.user_view(rw.addr, 4).readonly
    with pytest.raises(OSError) as e:
        mm.user_view(b, 4, write=True)
    assert _errno(e) == errno.EFAULT


def test_device_status_set_by_value_still_takes_the_permission_checks(rig: Rig) -> None:
    """Dispatch compares the status by identity: a status given as its integer
    value is stored as the member, so the device in reset still refuses."""
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, V.new("struct vaccel_create_bo", size=4096))
    rig.dev.set_status(int(DeviceStatus.IN_RESET))
    assert rig.dev.status is DeviceStatus.IN_RESET
    with pytest.raises(OSError) as e:
        p.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, V.new("struct vaccel_create_bo", size=4096))
    assert _errno(e) == errno.EBUSY
    rig.dev.set_status(DeviceStatus.OPERATIONAL)


def test_ioctl_arguments_of_every_kind_and_the_refused_ones(rig: Rig) -> None:
    """Process.ioctl tests for a cffi struct first: structs of any header, buffers
    and bytes still work; a cffi object without a buffer and any other object are
    EINVAL naming the argument, and nothing is left behind."""
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    s = V.new("struct vaccel_nop", value=5)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, s)
    assert s.result == 6
    raw = bytearray(V.to_bytes(V.new("struct vaccel_nop", value=9)))
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, raw)
    assert V.from_bytes("struct vaccel_nop", raw).result == 10
    for bad in (V.ffi.cast("int", 3), 1.5, [1, 2]):
        with pytest.raises(OSError, match="is not an address, a buffer or a cffi struct") as e:
            p.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, bad)
        assert _errno(e) == errno.EINVAL
