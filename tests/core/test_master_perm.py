"""SET_MASTER / DROP_MASTER permission (``drm_master_check_perm``): only the file's
opener or ``CAP_SYS_ADMIN``; everyone else holding the descriptor gets EACCES."""

from __future__ import annotations

import errno

import pytest

from accelcore import CORE, Process

from .conftest import Rig

USER = 1000


def _errno(p: Process, fd: int, cmd: int) -> int:
    try:
        p.ioctl(fd, cmd)
    except OSError as exc:
        return exc.errno or 0
    return 0


def _owned(rig: Rig) -> tuple[Process, int]:
    owner = rig.process(uid=USER, gid=USER)
    fd = owner.open("/dev/accel/accel0")
    owner.ioctl(fd, CORE.DRM_IOCTL_SET_MASTER)
    return owner, fd


def test_opener_without_cap_sys_admin_may_set_and_drop(rig: Rig) -> None:
    owner, fd = _owned(rig)
    assert rig.dev.ownership.owner is not None
    owner.ioctl(fd, CORE.DRM_IOCTL_DROP_MASTER)
    assert rig.dev.ownership.owner is None


@pytest.mark.parametrize("cmd", [CORE.DRM_IOCTL_DROP_MASTER, CORE.DRM_IOCTL_SET_MASTER])
def test_passed_descriptor_cannot_set_or_drop_master(rig: Rig, cmd: int) -> None:
    owner, fd = _owned(rig)
    other = rig.process(uid=USER, gid=USER)  # same uid: still not the opener
    passed = owner.send_fd(fd, other)
    assert _errno(other, passed, cmd) == errno.EACCES
    assert rig.dev.ownership.owner is rig.dev.files[0]  # the owner keeps its context


def test_forked_child_cannot_drop_the_parents_master(rig: Rig) -> None:
    owner, fd = _owned(rig)
    child = owner.fork()
    assert _errno(child, fd, CORE.DRM_IOCTL_DROP_MASTER) == errno.EACCES
    assert rig.dev.ownership.owner is not None


def test_non_opener_is_refused_before_the_state_checks(rig: Rig) -> None:
    # A file that is not the owner: the opener would get EINVAL, a stranger EACCES.
    _owned(rig)
    opener = rig.process(uid=USER, gid=USER)
    fd = opener.open("/dev/accel/accel0")
    stranger = rig.process(uid=USER + 1, gid=USER + 1)
    passed = opener.send_fd(fd, stranger)
    assert _errno(opener, fd, CORE.DRM_IOCTL_DROP_MASTER) == errno.EINVAL
    assert _errno(stranger, passed, CORE.DRM_IOCTL_DROP_MASTER) == errno.EACCES
    assert _errno(opener, fd, CORE.DRM_IOCTL_SET_MASTER) == errno.EBUSY
    assert _errno(stranger, passed, CORE.DRM_IOCTL_SET_MASTER) == errno.EACCES


def test_cap_sys_admin_may_drop_a_passed_descriptor(rig: Rig) -> None:
    owner, fd = _owned(rig)
    admin = rig.process(uid=0)
    passed = owner.send_fd(fd, admin)
    admin.ioctl(passed, CORE.DRM_IOCTL_DROP_MASTER)
    assert rig.dev.ownership.owner is None
