"""The one ioctl dispatch function, and the core ioctls (``drm_ioctl``).

:func:`dispatch` is the only way into a handler. In order it checks:

1. unplugged device → ``ENODEV`` (only INFO's identity/status answer afterwards);
2. type byte not ``'d'`` → ``ENOTTY``;
3. unknown number → ``ENOTTY`` (the documented rule, ``drm-uapi.rst``: "this
   IOCTL does not exist"; the kernel's code returns ``EINVAL`` for numbers in the
   ``'d'`` space it does not know — accelcore follows the documentation);
4. copy in: the user's struct may be shorter (the tail is zero-filled) or longer
   (the extra is ignored); only if both numbers have the write direction;
5. permission: root-only (``EACCES``), control node (``EACCES``), device in reset
   (``EBUSY``) or malfunctioning (``EIO``), compute owner (``EBUSY``);
6. the handler, then copy out — also when it failed, so that restartable ioctls
   can report progress; an ``EFAULT`` during copy-out wins.

A handler that raises an errno error returns that errno. Any other exception is an
**oops**: logged with its traceback, the device tainted, the caller gets ``EIO``,
and the engine goes on. An interrupted wait raises
:class:`~accelcore.errors.RestartSyscall`; the system-call layer
(:mod:`accelcore.syscalls`) then restarts the call (the task has ``SA_RESTART``
semantics) or fails it with ``EINTR``. Steps 4 and 6 are
:func:`accelcore.ioctl.run_ioctl`, which every file with an ioctl table shares.
PRIME lives in :mod:`accelcore.prime`, ``GEM_CLOSE`` in :mod:`accelcore.gem`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from _cffi_backend import from_buffer  # FFI.from_buffer's backend (see accelcore.ioctl)

from .device import DeviceStatus
from .driver import (
    DRM_COMMAND_BASE,
    DRM_COMMAND_END,
    DRM_IOCTL_BASE,
    DriverFeature,
    IoctlDesc,
    IoctlFlags,
)
from .errors import (
    Busy,
    DeviceIOError,
    InvalidArgument,
    NoDevice,
    NotTTY,
    PermissionDenied,
)
from .gem import gem_close_ioctl
from .info import info_ioctl
from .ioctl import IoctlCallBase, IoctlNode, IoctlPlan, ioctl_plan, run_ioctl, run_plan
from .prime import prime_fd_to_handle_ioctl, prime_handle_to_fd_ioctl
from .syncobj import syncobj_ioctls  # rows and handlers live with the syncobjs
from .uapi import CORE

if TYPE_CHECKING:
    from .device import AccelDevice
    from .file import AccelFile
    from .task import Task

__all__ = [
    "CORE_IOCTLS",
    "IoctlCall",
    "IoctlCallBase",
    "IoctlNode",
    "dispatch",
    "lookup",
    "run_ioctl",
]


class IoctlCall(IoctlCallBase):
    """An ioctl on an accel file: :class:`IoctlCallBase` plus the file and device.

    Attributes:
        file: The open file the ioctl was made on.
        device: ``file.device``.
    """

    __slots__ = ("device", "file")

    def __init__(
        self, file: AccelFile, task: Task, cmd: int, desc: IoctlDesc, buf: bytearray
    ) -> None:
        # One construction: the base's fields set here, not through super().
        dev = file.device
        self.task = task
        self.cmd = cmd
        self.desc = desc
        self.buf = buf
        self.clock = dev.clock
        ptype = desc.ptype
        self.args = None if ptype is None else from_buffer(ptype, buf, False)
        self.file = file
        self.device = dev


_ROOT_ONLY = IoctlFlags.ROOT_ONLY.value
_OWNER = IoctlFlags.OWNER.value
_CONTROL_ALLOW = IoctlFlags.CONTROL_ALLOW.value
_RESET_OK = IoctlFlags.RESET_OK.value
_UNPLUGGED_OK = IoctlFlags.UNPLUGGED_OK.value
#: Flags whose check needs more than the row: the caller's creds, the owner.
_CHECKED = _ROOT_ONLY | _OWNER
_OPERATIONAL = DeviceStatus.OPERATIONAL
_UNPLUGGED = DeviceStatus.UNPLUGGED
#: Plans a device keeps (distinct caller numbers); a caller cycling through
#: sizes of one number gets uncached plans past this, not unbounded memory.
_PLANS_KEPT = 256


def permit(file: AccelFile, task: Task, desc: IoctlDesc) -> None:
    """The core's permission checks for an accel file (see the module docstring)."""
    bits = desc.bits
    dev = file.device
    if not bits & _CHECKED and dev.status is _OPERATIONAL and not file.control:
        return  # the common case: nothing else to check
    if bits & _ROOT_ONLY and not task.creds.is_admin:
        raise PermissionDenied(f"{desc.name} needs CAP_SYS_ADMIN (caller uid {task.creds.uid})")
    if file.control and not bits & _CONTROL_ALLOW:
        raise PermissionDenied(f"{desc.name} is not allowed on control node of {dev.name}")
    if dev.status != DeviceStatus.OPERATIONAL and not bits & _RESET_OK:
        if dev.status == DeviceStatus.IN_RESET:
            raise Busy(f"{dev.name} is in reset; {desc.name} refused")
        raise DeviceIOError(f"{dev.name} is {dev.status.name.lower()}; {desc.name} refused")
    if bits & _OWNER:
        dev.ownership.require(file)


def lookup(dev: AccelDevice, cmd: int) -> IoctlDesc | None:
    """The table row for ``cmd`` (by type and number only), or ``None``."""
    if (cmd >> 8) & 0xFF != DRM_IOCTL_BASE:
        return None
    nr = cmd & 0xFF
    if DRM_COMMAND_BASE <= nr < DRM_COMMAND_END:
        return dev.ioctls.get(nr)
    return CORE_IOCTLS.get(nr)


def dispatch(file: AccelFile, task: Task, cmd: int, argp: int) -> int:
    """Run ioctl ``cmd`` on ``file`` for ``task`` with its argument at ``argp``.

    Returns:
        The handler's return value (0 for most ioctls).

    Raises:
        AccelError: the errno of the failure (see the module docstring for order).
    """
    dev = file.device
    lock = dev.clock.lock
    lock.acquire()  # not ``with``: its __enter__/__exit__ protocol costs twice as much
    try:
        plan = dev.ioctl_plans.get(cmd)  # the device's plan for this number, found once
        if plan is None or dev.status is _UNPLUGGED:
            plan = _plan(dev, cmd, plan)
        return run_plan(file, task, cmd, argp, plan)
    finally:
        lock.release()


def _plan(dev: AccelDevice, cmd: int, plan: IoctlPlan | None) -> IoctlPlan:
    """:func:`dispatch`'s steps 1-3 where the kept plan does not settle them: the
    first call of ``cmd`` on ``dev`` (its plan is made, and kept), and any call
    after unplug.

    Raises:
        NoDevice: the device is unplugged and the row is not ``UNPLUGGED_OK``.
        NotTTY: the type byte is not ``'d'``, or no row has the number.
    """
    if plan is None:
        desc = lookup(dev, cmd)
        if desc is not None:
            plan = ioctl_plan(cmd, desc)
            if len(dev.ioctl_plans) < _PLANS_KEPT:
                dev.ioctl_plans[cmd] = plan
    if dev.status is _UNPLUGGED and (plan is None or not plan.desc.bits & _UNPLUGGED_OK):
        raise NoDevice(f"{dev.name} was unplugged")
    if plan is None:
        if (cmd >> 8) & 0xFF != DRM_IOCTL_BASE:
            raise NotTTY(f"ioctl {cmd:#010x} has type {(cmd >> 8) & 0xFF:#04x}, not 'd'")
        raise NotTTY(
            f"{dev.name} ({dev.driver.name}) has no ioctl number "
            f"{cmd & 0xFF:#04x} (cmd {cmd:#010x})"
        )
    return plan


# -- the core ioctls -------------------------------------------------------------


def _copy_field(call: IoctlCall, value: str | None, len_field: str, ptr_field: str) -> None:
    # drm_copy_field: a NULL string is reported as empty (the kernel's 2022 fix
    # of exactly this oops); registration also refuses a driver without a name.
    data = (value or "").encode()
    args = call.args
    n = min(len(data), getattr(args, len_field))
    ptr = getattr(args, ptr_field)
    if n and ptr:
        call.copy_to_user(ptr, data[:n])
    setattr(args, len_field, len(data))


def _version(call: IoctlCall) -> None:
    drv = call.device.driver
    a = call.args
    a.version_major, a.version_minor, a.version_patchlevel = drv.version
    _copy_field(call, drv.name, "name_len", "name")
    _copy_field(call, "0", "date_len", "date")  # "Driver date is deprecated"
    _copy_field(call, drv.desc, "desc_len", "desc")


def _get_cap(call: IoctlCall) -> None:
    cap = call.args.capability
    feats = call.device.driver.features
    if cap == CORE.DRM_CAP_PRIME:
        call.args.value = (
            CORE.DRM_PRIME_CAP_IMPORT | CORE.DRM_PRIME_CAP_EXPORT
            if DriverFeature.PRIME in feats
            else 0
        )
    elif cap == CORE.DRM_CAP_TIMESTAMP_MONOTONIC:
        call.args.value = 1
    elif cap == CORE.DRM_CAP_SYNCOBJ:
        call.args.value = int(DriverFeature.SYNCOBJ in feats)
    elif cap == CORE.DRM_CAP_SYNCOBJ_TIMELINE:
        call.args.value = int(DriverFeature.SYNCOBJ_TIMELINE in feats)
    else:
        raise InvalidArgument(f"unknown capability {cap:#x}")


def _master_check_perm(call: IoctlCall) -> None:
    """``drm_master_check_perm``: only the file's opener, or ``CAP_SYS_ADMIN``.

    The kernel lets a task without ``CAP_SYS_ADMIN`` set or drop master only on a
    file it opened itself (``file_priv->pid == task_tgid(current)``) that was
    master before; anyone else who got the descriptor (passed, inherited over
    ``fork``) gets ``EACCES``, so a passed fd cannot revoke its owner's context.
    Under the lazy-owner model any opener may become owner with its first
    ``OWNER`` ioctl, so accelcore does not also require ``was_master`` (see the
    deviations table of the guide).

    Raises:
        PermissionDenied: the caller is not the opener and lacks ``CAP_SYS_ADMIN``.
    """
    file, task = call.file, call.task
    if task.pid == file.pid or task.creds.is_admin:
        return
    raise PermissionDenied(
        f"{call.desc.name}: pid {task.pid} is not the opener (pid {file.pid}) of client "
        f"{file.client_id} on {call.device.name} and lacks CAP_SYS_ADMIN"
    )


def _set_master(call: IoctlCall) -> None:
    _master_check_perm(call)
    call.device.ownership.acquire(call.file)


def _drop_master(call: IoctlCall) -> None:
    _master_check_perm(call)
    call.device.ownership.drop(call.file)


def _set_client_name(call: IoctlCall) -> None:
    n = call.args.name_len
    if n > CORE.DRM_CLIENT_NAME_MAX_LEN:
        raise InvalidArgument(f"client name length {n} exceeds {CORE.DRM_CLIENT_NAME_MAX_LEN}")
    raw = call.copy_from_user(call.args.name, n) if n else b""
    if any(not 0x21 <= ch <= 0x7E for ch in raw):
        raise InvalidArgument(f"client name {raw!r} must be printable ASCII without spaces")
    call.file.client_name = raw.decode()


def _core_table() -> dict[int, IoctlDesc]:
    f = IoctlFlags
    rows: list[tuple[str, IoctlFlags, Callable[[IoctlCall], None]]] = [
        ("DRM_IOCTL_VERSION", f.CONTROL_ALLOW | f.RESET_OK, _version),
        ("DRM_IOCTL_GEM_CLOSE", f.RESET_OK, gem_close_ioctl),
        ("DRM_IOCTL_GET_CAP", f.CONTROL_ALLOW | f.RESET_OK, _get_cap),
        ("DRM_IOCTL_SET_MASTER", f.NONE, _set_master),
        ("DRM_IOCTL_DROP_MASTER", f.RESET_OK, _drop_master),
        ("DRM_IOCTL_PRIME_HANDLE_TO_FD", f.OWNER, prime_handle_to_fd_ioctl),
        ("DRM_IOCTL_PRIME_FD_TO_HANDLE", f.OWNER, prime_fd_to_handle_ioctl),
        ("DRM_IOCTL_SET_CLIENT_NAME", f.CONTROL_ALLOW | f.RESET_OK, _set_client_name),
        ("ACCEL_IOCTL_INFO", f.CONTROL_ALLOW | f.RESET_OK | f.UNPLUGGED_OK, info_ioctl),
    ]
    table = {}
    for name, flags, func in rows:
        d = CORE.ioctls[name]
        table[d.nr] = IoctlDesc(d.cmd, name, flags, func, d.arg_type, uapi=CORE)
    for name, flags, func, waits in syncobj_ioctls():
        d = CORE.ioctls[name]
        table[d.nr] = IoctlDesc(d.cmd, name, flags, func, d.arg_type, waits, uapi=CORE)
    return table


#: The core ioctls by number.
CORE_IOCTLS: dict[int, IoctlDesc] = _core_table()
