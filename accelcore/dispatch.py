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
:class:`~accelcore.errors.RestartSyscall`; the call is then restarted (the task
has ``SA_RESTART`` semantics) or fails with ``EINTR``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from .clock import Deadlock, WaitResult
from .device import DeviceStatus
from .driver import DRM_COMMAND_BASE, DRM_COMMAND_END, DRM_IOCTL_BASE, IoctlDesc, IoctlFlags
from .errors import (
    AccelError,
    Busy,
    DeviceIOError,
    Interrupted,
    InvalidArgument,
    NoDevice,
    NotSupported,
    NotTTY,
    PermissionDenied,
    RestartSyscall,
    error_for_errno,
)
from .fence import Fence, wait_fences
from .uapi import CORE
from .uapi.ioc import IOC_IN, IOC_OUT, IOC_SIZEMASK

if TYPE_CHECKING:
    from .clock import Clock
    from .device import AccelDevice
    from .file import AccelFile
    from .task import Task
    from .vfs import OpenFile

__all__ = ["CORE_IOCTLS", "IoctlCall", "IoctlCallBase", "dispatch", "lookup", "run_ioctl"]


class IoctlCallBase:
    """What every ioctl handler gets, on any kind of file: the calling task, the
    arguments, user memory, interruptible waits and descriptors.

    Accel files get :class:`IoctlCall`; a driver-wide node such as KFD's
    ``/dev/kfd`` subclasses this and runs its table through :func:`run_ioctl`.

    Attributes:
        task: The calling task (may differ from the opener after fd passing).
        cmd: The ioctl number as the caller passed it.
        desc: The table row.
        args: The argument struct (a cffi pointer into the kernel copy); write
            results into it. ``None`` for ioctls without an argument.
        clock: The device clock (waits run on it).
    """

    __slots__ = ("args", "buf", "clock", "cmd", "desc", "task")

    def __init__(self, task: Task, cmd: int, desc: IoctlDesc, buf: bytearray, clock: Clock) -> None:
        self.task = task
        self.cmd = cmd
        self.desc = desc
        self.buf = buf
        self.clock = clock
        self.args: Any = None
        if desc.ptype is not None:
            self.args = desc.uapi.ffi.from_buffer(desc.ptype, buf)  # type: ignore[union-attr]

    # -- user memory -------------------------------------------------------------
    def copy_from_user(self, addr: int, length: int) -> bytes:
        """Read user memory; ``EFAULT`` if the range is not mapped."""
        return self.task.mm.copy_from_user(addr, length)

    def copy_to_user(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Write user memory; ``EFAULT`` if the range is not mapped or read-only."""
        self.task.mm.copy_to_user(addr, data)

    def user_view(self, addr: int, length: int, *, write: bool = False) -> memoryview:
        """Pin user memory and get a zero-copy view (``pin_user_pages``)."""
        return self.task.mm.user_view(addr, length, write=write)

    def read_struct(self, ctype: str, addr: int) -> Any:
        """Copy a struct of the ioctl's header in from user memory."""
        uapi = self.desc.uapi or CORE
        return uapi.from_bytes(ctype, self.copy_from_user(addr, uapi.sizeof(ctype)))

    def write_struct(self, addr: int, value: Any) -> None:
        """Copy a struct out to user memory."""
        uapi = self.desc.uapi or CORE
        self.copy_to_user(addr, uapi.to_bytes(value))

    # -- sleeping ----------------------------------------------------------------
    def wait(
        self,
        predicate: Callable[[], bool],
        timeout_ns: int | None = None,
        *,
        deadline: int | None = None,
    ) -> bool:
        """An interruptible wait point: sleep until ``predicate()`` holds.

        Args:
            predicate: Checked with the engine lock held.
            timeout_ns: Relative timeout; ``None`` (and no deadline) waits forever.
            deadline: Absolute device time instead of a timeout (survives restarts).

        Returns:
            ``True`` if the predicate holds, ``False`` on timeout.

        Raises:
            RestartSyscall: a signal arrived; let it propagate.
        """
        self._check_declared_wait()
        if deadline is None and timeout_ns is not None:
            deadline = self.clock.now() + timeout_ns
        self.task.enter_wait()
        result = self.clock.wait_until(predicate, deadline, lambda: self.task.signal_pending)
        if result is WaitResult.INTERRUPTED:
            raise RestartSyscall(f"{self.desc.name} interrupted while waiting")
        return result is WaitResult.DONE

    def wait_fences(self, fences: Iterable[Fence], timeout_ns: int | None = None) -> bool:
        """Wait for fences at an interruptible wait point; ``False`` on timeout."""
        self._check_declared_wait()
        deadline = None if timeout_ns is None else self.clock.now() + timeout_ns
        return wait_fences(fences, self.clock, deadline, self.task)

    def _check_declared_wait(self) -> None:
        # Transports run undeclared ioctls without a way to interrupt them, and the
        # restart checker only interrupts declared ones: sleeping in one is a bug.
        if not self.desc.waits:
            raise RuntimeError(f"{self.desc.name} sleeps but is not declared with waits=True")

    # -- files ---------------------------------------------------------------------
    def install_fd(self, file: OpenFile, *, cloexec: bool = True) -> int:
        """Give the caller a descriptor for ``file`` (takes over one reference)."""
        return self.task.files.install(file, cloexec=cloexec)

    def get_file(self, fd: int) -> OpenFile:
        """The caller's file behind ``fd``; ``EBADF`` if it is not open."""
        return self.task.files.get(fd)


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
        super().__init__(task, cmd, desc, buf, file.device.subsystem.clock)
        self.file = file
        self.device = file.device


_ROOT_ONLY = IoctlFlags.ROOT_ONLY.value
_OWNER = IoctlFlags.OWNER.value
_CONTROL_ALLOW = IoctlFlags.CONTROL_ALLOW.value
_RESET_OK = IoctlFlags.RESET_OK.value
_UNPLUGGED_OK = IoctlFlags.UNPLUGGED_OK.value


def permit(file: AccelFile, task: Task, desc: IoctlDesc) -> None:
    """The core's permission checks for an accel file (see the module docstring)."""
    bits = desc.bits
    dev = file.device
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
    with dev.subsystem.clock.lock:
        desc = lookup(dev, cmd)
        if dev.status == DeviceStatus.UNPLUGGED and (desc is None or not desc.bits & _UNPLUGGED_OK):
            raise NoDevice(f"{dev.name} was unplugged")
        if desc is None:
            if (cmd >> 8) & 0xFF != DRM_IOCTL_BASE:
                raise NotTTY(f"ioctl {cmd:#010x} has type {(cmd >> 8) & 0xFF:#04x}, not 'd'")
            raise NotTTY(
                f"{dev.name} ({dev.driver.name}) has no ioctl number "
                f"{cmd & 0xFF:#04x} (cmd {cmd:#010x})"
            )
        return run_ioctl(file, task, cmd, argp, desc)


class IoctlNode(Protocol):
    """A file whose ioctls run through :func:`run_ioctl`: it builds the call object,
    checks permission, and records oopses (accel files, KFD's ``/dev/kfd``)."""

    def ioctl_call(self, task: Task, cmd: int, desc: IoctlDesc, buf: bytearray) -> IoctlCallBase:
        """The handler's call object over the kernel copy ``buf``."""
        ...

    def ioctl_permit(self, task: Task, desc: IoctlDesc) -> None:
        """Raise if ``task`` may not make this call now."""
        ...

    def ioctl_oops(self, where: str, exc: BaseException) -> str:
        """Record a driver bug; returns the line that describes it."""
        ...


def run_ioctl(node: IoctlNode, task: Task, cmd: int, argp: int, desc: IoctlDesc) -> int:
    """The half of every ioctl path after the table lookup (call with the lock held).

    Copies the argument in (zero-extended to the table's size), checks
    permission, runs the handler, copies out also when it failed, restarts or
    fails with ``EINTR`` after a signal, delivers a signal pending at return, and
    turns any exception that is not an errno error into an oops (``EIO``).
    Accel files use it through :func:`accelcore.dispatch.dispatch`; driver-wide
    nodes (``/dev/kfd``) call it after their own lookup.

    Args:
        node: The file the ioctl was made on.
        task: The caller.
        cmd: The ioctl number as the caller passed it.
        argp: The user address of the argument.
        desc: The table row found for ``cmd``.
    """
    user_size = (cmd >> 16) & IOC_SIZEMASK
    in_size = user_size if cmd & desc.cmd & IOC_IN else 0
    out_size = user_size if cmd & desc.cmd & IOC_OUT else 0
    ksize = max(in_size, out_size, (desc.cmd >> 16) & IOC_SIZEMASK)
    while True:
        buf = bytearray(ksize)
        if in_size:
            buf[:in_size] = task.mm.user_view(argp, in_size)
        node.ioctl_permit(task, desc)
        call = node.ioctl_call(task, cmd, desc, buf)
        try:
            ret = desc.func(call)
        except RestartSyscall:
            _copy_out(task, argp, buf, out_size)
            task.deliver_signal()
            if task.restart_syscalls:
                continue
            raise Interrupted(f"{desc.name} interrupted by a signal") from None
        except AccelError:
            _copy_out(task, argp, buf, out_size)
            task.deliver_signal()
            raise
        except OSError as exc:
            _copy_out(task, argp, buf, out_size)
            task.deliver_signal()
            if exc.errno:
                raise error_for_errno(exc.errno, f"{desc.name}: {exc.strerror}") from exc
            raise _oops(node, desc, exc) from exc
        except Deadlock:
            raise  # a virtual-time test waited forever: the harness's error, not an oops
        except Exception as exc:
            raise _oops(node, desc, exc) from exc
        _copy_out(task, argp, buf, out_size)
        # A signal that arrived as the call completed is delivered on the way
        # back to user space; it must not interrupt the next call.
        task.deliver_signal()
        return ret or 0


def _copy_out(task: Task, argp: int, buf: bytearray, out_size: int) -> None:
    if out_size:
        task.mm.copy_to_user(argp, memoryview(buf)[:out_size])


def _oops(node: IoctlNode, desc: IoctlDesc, exc: Exception) -> DeviceIOError:
    return DeviceIOError(f"oops in {desc.name} on {node.ioctl_oops(desc.name, exc)}")


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


def _gem_close(call: IoctlCall) -> None:
    from .driver import DriverFeature

    if DriverFeature.GEM not in call.device.driver.features:
        raise NotSupported(f"{call.device.driver.name} has no buffer objects (GEM)")
    if call.args.pad:
        raise InvalidArgument(f"drm_gem_close.pad is {call.args.pad:#x}, must be 0")
    file = call.file
    handle = call.args.handle
    file.handles.delete(handle)
    file.forget_prime(handle)


def _get_cap(call: IoctlCall) -> None:
    from .driver import DriverFeature

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


def _require_prime(call: IoctlCall) -> None:
    from .driver import DriverFeature

    if DriverFeature.PRIME not in call.device.driver.features:
        raise NotSupported(f"{call.device.driver.name} does not support dma-buf (PRIME)")


def _prime_handle_to_fd(call: IoctlCall) -> None:
    _require_prime(call)
    a = call.args
    valid = CORE.DRM_CLOEXEC | CORE.DRM_RDWR
    if a.flags & ~valid:
        raise InvalidArgument(
            f"PRIME_HANDLE_TO_FD flags {a.flags:#o} has unknown bits {a.flags & ~valid:#o}"
        )
    file = call.file
    bo = file.handles.lookup(a.handle)
    dmabuf = bo.dma_buf
    if dmabuf is not None and not dmabuf.released:
        dmabuf.get()
    else:
        dmabuf = call.device.driver.prime_export(file, bo, a.flags)
        bo.dma_buf = dmabuf
        call.device.ownership.exported(file, dmabuf)
    if dmabuf not in file.prime:
        file.prime[dmabuf] = a.handle
        dmabuf.get()
    try:
        a.fd = call.install_fd(dmabuf, cloexec=bool(a.flags & CORE.DRM_CLOEXEC))
    except AccelError:
        dmabuf.put()
        raise


def _prime_fd_to_handle(call: IoctlCall) -> None:
    from .dmabuf import require_dmabuf
    from .gem import BufferObject, GemDmaBufOps

    _require_prime(call)
    a = call.args
    file = call.file
    dmabuf = require_dmabuf(call.get_file(a.fd), a.fd)
    if dmabuf in file.prime:
        a.handle = file.prime[dmabuf]
        return
    bo = dmabuf.priv
    if (
        isinstance(dmabuf.ops, GemDmaBufOps)
        and isinstance(bo, BufferObject)
        and bo.device is call.device
    ):
        existing = file.handles.handle_of(bo)
        handle = existing if existing is not None else file.handles.create(bo)
    else:
        imported = call.device.driver.prime_import(file, dmabuf)
        try:
            handle = file.handles.create(imported)
        finally:
            imported.put()
    file.prime[dmabuf] = handle
    dmabuf.get()
    a.handle = handle


def _set_client_name(call: IoctlCall) -> None:
    n = call.args.name_len
    if n > CORE.DRM_CLIENT_NAME_MAX_LEN:
        raise InvalidArgument(f"client name length {n} exceeds {CORE.DRM_CLIENT_NAME_MAX_LEN}")
    raw = call.copy_from_user(call.args.name, n) if n else b""
    if any(not 0x21 <= ch <= 0x7E for ch in raw):
        raise InvalidArgument(f"client name {raw!r} must be printable ASCII without spaces")
    call.file.client_name = raw.decode()


def _info(call: IoctlCall) -> None:
    from .info import info_ioctl

    info_ioctl(call)


def _core_table() -> dict[int, IoctlDesc]:
    f = IoctlFlags
    rows: list[tuple[str, IoctlFlags, Callable[[IoctlCall], None]]] = [
        ("DRM_IOCTL_VERSION", f.CONTROL_ALLOW | f.RESET_OK, _version),
        ("DRM_IOCTL_GEM_CLOSE", f.RESET_OK, _gem_close),
        ("DRM_IOCTL_GET_CAP", f.CONTROL_ALLOW | f.RESET_OK, _get_cap),
        ("DRM_IOCTL_SET_MASTER", f.NONE, _set_master),
        ("DRM_IOCTL_DROP_MASTER", f.RESET_OK, _drop_master),
        ("DRM_IOCTL_PRIME_HANDLE_TO_FD", f.OWNER, _prime_handle_to_fd),
        ("DRM_IOCTL_PRIME_FD_TO_HANDLE", f.OWNER, _prime_fd_to_handle),
        ("DRM_IOCTL_SET_CLIENT_NAME", f.CONTROL_ALLOW | f.RESET_OK, _set_client_name),
        ("ACCEL_IOCTL_INFO", f.CONTROL_ALLOW | f.RESET_OK | f.UNPLUGGED_OK, _info),
    ]
    table = {}
    for name, flags, func in rows:
        d = CORE.ioctls[name]
        table[d.nr] = IoctlDesc(d.cmd, name, flags, func, d.arg_type, uapi=CORE)
    from .syncobj import syncobj_ioctls  # rows and handlers live with the syncobjs

    for name, flags, func, waits in syncobj_ioctls():
        d = CORE.ioctls[name]
        table[d.nr] = IoctlDesc(d.cmd, name, flags, func, d.arg_type, waits, uapi=CORE)
    return table


#: The core ioctls by number.
CORE_IOCTLS: dict[int, IoctlDesc] = _core_table()
