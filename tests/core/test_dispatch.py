"""ioctl dispatch: order of checks, size compatibility, copy rules, oopses, restarts."""

from __future__ import annotations

import errno

import pytest

from accelcore import CORE, IoctlFlags, Process, Subsystem, VirtualClock
from accelcore.testing import make_driver
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import ioc

from .conftest import Rig


def _errno(exc: pytest.ExceptionInfo[OSError]) -> int:
    return exc.value.errno or 0


def test_version_reports_driver(rig_both: Rig) -> None:
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    name = p.alloc(32)
    v = CORE.new("struct drm_version", name=name.addr, name_len=32)
    p.ioctl(fd, CORE.DRM_IOCTL_VERSION, v)
    assert (v.version_major, v.name_len, bytes(name.view[:6])) == (1, 6, b"vaccel")


def test_version_length_query_copies_nothing(rig_both: Rig) -> None:
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    v = CORE.new("struct drm_version")
    p.ioctl(fd, CORE.DRM_IOCTL_VERSION, v)
    assert (v.name_len, v.desc_len, v.date_len) == (6, len("virtual accelerator"), 1)


def test_wrong_type_is_enotty(rig_both: Rig) -> None:
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    with pytest.raises(OSError) as e:
        p.ioctl(fd, ioc.IOWR(ord("x"), 0x41, 16), bytearray(16))
    assert _errno(e) == errno.ENOTTY


@pytest.mark.parametrize("nr", [0x4F, 0x9F, 0x03, 0xFF])
def test_unknown_number_is_enotty(rig_both: Rig, nr: int) -> None:
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    with pytest.raises(OSError) as e:
        p.ioctl(fd, ioc.IOWR(ord("d"), nr, 16), bytearray(16))
    assert _errno(e) == errno.ENOTTY


def test_short_struct_is_zero_extended(rig_both: Rig) -> None:
    """A caller with an older, shorter struct: the kernel sees zeros in the tail."""
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    short = bytearray((5).to_bytes(8, "little"))  # only 'value', no 'result'
    cmd = ioc.IOWR(ord("d"), V.ioctls["DRM_IOCTL_VACCEL_NOP"].nr, 8)
    p.ioctl(fd, cmd, short)
    assert int.from_bytes(short, "little") == 5  # only the user's 8 bytes come back


def test_long_struct_tail_is_ignored_and_returned(rig_both: Rig) -> None:
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    buf = bytearray(24)
    buf[:8] = (41).to_bytes(8, "little")
    buf[16:] = b"TAILDATA"
    cmd = ioc.IOWR(ord("d"), V.ioctls["DRM_IOCTL_VACCEL_NOP"].nr, 24)
    p.ioctl(fd, cmd, buf)
    assert int.from_bytes(buf[8:16], "little") == 42
    assert buf[16:] == b"TAILDATA"


def test_read_only_caller_gets_no_copy_in(rig_both: Rig) -> None:
    """Copy-in happens only when both numbers have the write direction."""
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    buf = bytearray(16)
    buf[:8] = (41).to_bytes(8, "little")
    cmd = ioc.IOR(ord("d"), V.ioctls["DRM_IOCTL_VACCEL_NOP"].nr, 16)
    p.ioctl(fd, cmd, buf)
    assert int.from_bytes(buf[8:16], "little") == 1  # handler saw value 0


def test_bad_user_pointer_is_efault(rig_both: Rig) -> None:
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    with pytest.raises(OSError) as e:
        p.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, 0xDEAD0000)
    assert _errno(e) == errno.EFAULT


def test_null_pointer_is_efault(rig_both: Rig) -> None:
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    with pytest.raises(OSError) as e:
        p.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, 0)
    assert _errno(e) == errno.EFAULT


def test_nonzero_padding_is_einval(rig_both: Rig) -> None:
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    with pytest.raises(OSError) as e:
        p.ioctl(fd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=1, pad=1))
    assert _errno(e) == errno.EINVAL


def test_unknown_flags_are_einval(rig_both: Rig) -> None:
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    with pytest.raises(OSError) as e:
        p.ioctl(
            fd, V.DRM_IOCTL_VACCEL_CREATE_BO, V.new("struct vaccel_create_bo", size=4096, flags=2)
        )
    assert _errno(e) == errno.EINVAL
    assert "flags is 0x2" in str(e.value)


def test_second_owner_is_ebusy(rig_both: Rig) -> None:
    rig = rig_both
    a, b = rig.process(), rig.process()
    fa, fb = a.open("/dev/accel/accel0"), b.open("/dev/accel/accel0")
    rig.create_bo(a, fa)
    with pytest.raises(OSError) as e:
        rig.create_bo(b, fb)
    assert _errno(e) == errno.EBUSY
    assert f"pid {a.pid}" in str(e.value)


def test_root_only_ioctl_refuses_user(rig: Rig) -> None:
    sub = Subsystem(VirtualClock())
    drv = make_driver(
        "rootonly",
        header="""
        /* cffi:begin */
        struct r_args { __u64 v; };
        /* cffi:end */
        #define DRM_IOCTL_R_SET DRM_IOW(DRM_COMMAND_BASE, struct r_args)
    """,
        ioctls={"DRM_IOCTL_R_SET": (lambda call: None, IoctlFlags.ROOT_ONLY)},
    )
    sub.register_driver(drv)
    sub.create_device(drv)
    user, root = Process(sub, uid=1000), Process(sub, uid=0)
    assert drv.uapi is not None
    cmd = drv.uapi.DRM_IOCTL_R_SET
    root.ioctl(root.open("/dev/accel/accel0"), cmd, bytearray(8))
    with pytest.raises(OSError) as e:
        user.ioctl(user.open("/dev/accel/accel0"), cmd, bytearray(8))
    assert _errno(e) == errno.EACCES
    user.exit()
    root.exit()


def test_unplugged_device_is_enodev_first(rig_both: Rig) -> None:
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    rig.sub.remove_device(rig.dev)
    rig.expect.update(
        minors=-1,
        devices=-1,
    )
    with pytest.raises(OSError) as e:  # even a wrong type reports ENODEV first
        p.ioctl(fd, ioc.IOWR(ord("x"), 1, 8), bytearray(8))
    assert _errno(e) == errno.ENODEV


def _oops_driver() -> tuple[Subsystem, Process, int, int]:
    sub = Subsystem(VirtualClock())

    def boom(call: object) -> None:
        raise KeyError("driver bug")

    drv = make_driver(
        "oopsy",
        header="""
        /* cffi:begin */
        struct o_args { __u64 v; };
        /* cffi:end */
        #define DRM_IOCTL_O_BOOM DRM_IOWR(DRM_COMMAND_BASE, struct o_args)
    """,
        ioctls={"DRM_IOCTL_O_BOOM": boom},
    )
    sub.register_driver(drv)
    sub.create_device(drv)
    p = Process(sub)
    assert drv.uapi is not None
    return sub, p, p.open("/dev/accel/accel0"), drv.uapi.DRM_IOCTL_O_BOOM


def test_oops_returns_eio_and_taints(caplog: pytest.LogCaptureFixture) -> None:
    sub, p, fd, cmd = _oops_driver()
    with pytest.raises(OSError) as e:
        p.ioctl(fd, cmd, bytearray(8))
    assert _errno(e) == errno.EIO
    dev = sub.device(0)
    assert dev.tainted and "KeyError" in dev.oopses[0].exception
    assert "Traceback" in dev.oopses[0].traceback
    assert "oops on accel0" in caplog.text


def test_engine_keeps_running_after_oops() -> None:
    _sub, p, fd, cmd = _oops_driver()
    with pytest.raises(OSError):
        p.ioctl(fd, cmd, bytearray(8))
    v = CORE.new("struct drm_version")
    assert p.ioctl(fd, CORE.DRM_IOCTL_VERSION, v) == 0


def test_copy_out_happens_when_handler_fails() -> None:
    sub = Subsystem(VirtualClock())

    def progress_then_fail(call: object) -> None:
        call.args.done = 3  # type: ignore[attr-defined]
        raise OSError(errno.ENOMEM, "out of memory at item 3")

    drv = make_driver(
        "partial",
        header="""
        /* cffi:begin */
        struct p_args { __u32 todo; __u32 done; };
        /* cffi:end */
        #define DRM_IOCTL_P_DO DRM_IOWR(DRM_COMMAND_BASE, struct p_args)
    """,
        ioctls={"DRM_IOCTL_P_DO": progress_then_fail},
    )
    sub.register_driver(drv)
    sub.create_device(drv)
    p = Process(sub)
    assert drv.uapi is not None
    args = drv.uapi.new("struct p_args", todo=5)
    with pytest.raises(OSError) as e:
        p.ioctl(p.open("/dev/accel/accel0"), drv.uapi.DRM_IOCTL_P_DO, args)
    assert (_errno(e), args.done) == (errno.ENOMEM, 3)


def _submit_and_wait(rig: Rig, p: Process, fd: int) -> object:
    h, _ = rig.create_bo(p, fd)
    s = V.new("struct vaccel_submit", handle=h, fill=7, delay_ns=1000)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, s)
    return V.new("struct vaccel_wait", seqno=s.seqno, timeout_ns=-1)


def test_interrupted_wait_returns_eintr(rig_both: Rig) -> None:
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    w = _submit_and_wait(rig, p, fd)
    p.task.inject_interrupts(0)
    with pytest.raises(OSError) as e:
        p.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, w)
    assert _errno(e) == errno.EINTR
    assert p.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, w) == 0  # the retry completes


def test_interrupted_wait_restarts_with_sa_restart(rig_both: Rig) -> None:
    rig = rig_both
    p = rig.process(restart=True)
    fd = p.open("/dev/accel/accel0")
    w = _submit_and_wait(rig, p, fd)
    p.task.inject_interrupts(0)
    assert p.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, w) == 0
    assert p.task.wait_points_seen == 2  # interrupted once, then restarted


def test_wait_timeout_is_etimedout(rig_both: Rig) -> None:
    rig = rig_both
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    s = V.new("struct vaccel_submit", handle=h, fill=1, delay_ns=10_000)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, s)
    with pytest.raises(OSError) as e:
        p.ioctl(
            fd, V.DRM_IOCTL_VACCEL_WAIT, V.new("struct vaccel_wait", seqno=s.seqno, timeout_ns=10)
        )
    assert _errno(e) == errno.ETIMEDOUT


def test_control_node_allows_info_and_refuses_compute() -> None:
    from accelcore import DriverFeature
    from accelcore.testing import VAccelDriver

    class Ctl(VAccelDriver):
        name = "vaccelctl"
        features = VAccelDriver.features | DriverFeature.CONTROL_NODE

    sub = Subsystem(VirtualClock())
    drv = Ctl()
    sub.register_driver(drv)
    sub.create_device(drv)
    p = Process(sub)
    fd = p.open("/dev/accel/accel_controlD0")
    info = CORE.new("struct accel_info", op=CORE.ACCEL_INFO_STATUS)
    assert p.ioctl(fd, CORE.ACCEL_IOCTL_INFO, info) == 0
    with pytest.raises(OSError) as e:
        p.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, V.new("struct vaccel_create_bo", size=4096))
    assert _errno(e) == errno.EACCES


def test_sleeping_in_an_undeclared_ioctl_is_an_oops() -> None:
    """Transports and the restart checker rely on ``waits=True``: a handler that
    sleeps without it is a driver bug, reported as an oops."""
    sub = Subsystem(VirtualClock())
    drv = make_driver(
        "sleepy",
        header="""
        /* cffi:begin */
        struct s_args { __u64 v; };
        /* cffi:end */
        #define DRM_IOCTL_S_NAP DRM_IOWR(DRM_COMMAND_BASE, struct s_args)
    """,
        ioctls={"DRM_IOCTL_S_NAP": lambda call: call.wait(lambda: True)},
    )
    sub.register_driver(drv)
    sub.create_device(drv)
    p = Process(sub)
    assert drv.uapi is not None
    with pytest.raises(OSError) as e:
        p.ioctl(p.open("/dev/accel/accel0"), drv.uapi.DRM_IOCTL_S_NAP, bytearray(8))
    assert _errno(e) == errno.EIO and "not declared with waits=True" in str(e.value)
