"""The ioctl machinery every file shares: the call object and :func:`run_ioctl`.

Accel files (:mod:`accelcore.dispatch`), driver-wide nodes such as KFD's
``/dev/kfd``, and the files the core owns (dma-buf, udmabuf, sync files) all run
their ioctls through :func:`run_ioctl` over a table of
:class:`~accelcore.driver.IoctlDesc` rows: copy in (zero-extended to the
table's size), permission, the handler, copy out also when it failed, and oops
capture. :class:`IoctlTableFile` is the whole ioctl path of a file whose only
check is the table lookup.

An interrupted handler raises :class:`~accelcore.errors.RestartSyscall` after
its copy-out; the system-call layer (:mod:`accelcore.syscalls`) delivers the
signal and restarts the call or fails it with ``EINTR``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

# cffi's backend function that FFI.from_buffer forwards to once it has resolved a
# type name: the rows hold resolved pointer types (IoctlDesc.ptype), so the call
# object makes its args over the kernel copy without that wrapper.
from _cffi_backend import from_buffer

from .clock import Deadlock, WaitResult
from .driver import IoctlDesc, IoctlFlags
from .errors import AccelError, DeviceIOError, NotTTY, RestartSyscall, error_for_errno
from .fence import Fence, wait_fences
from .uapi import CORE
from .uapi.ioc import IOC_IN, IOC_OUT, IOC_SIZEMASK

if TYPE_CHECKING:
    from .clock import Clock
    from .task import Task
    from .vfs import OpenFile

__all__ = [
    "FileIoctlCall",
    "IoctlCallBase",
    "IoctlNode",
    "IoctlPlan",
    "IoctlTableFile",
    "ioctl_plan",
    "run_ioctl",
    "run_plan",
]

log = logging.getLogger("accelcore")


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
            self.args = from_buffer(desc.ptype, buf, False)

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


class IoctlPlan:
    """What :func:`run_ioctl` needs to know of one ioctl number on one table row,
    computed once (:func:`~accelcore.ioctl.ioctl_plan`): the row, and the sizes that the caller's
    number and the row's number together give.

    Attributes:
        desc: The table row.
        in_size: Bytes copied in (the caller's size, if both numbers write).
        out_size: Bytes copied out (the caller's size, if both numbers read).
        ksize: The kernel copy's size: the larger of the caller's and the table's.
    """

    __slots__ = ("desc", "in_size", "ksize", "out_size")

    def __init__(self, cmd: int, desc: IoctlDesc) -> None:
        user_size = (cmd >> 16) & IOC_SIZEMASK
        self.desc = desc
        self.in_size = user_size if cmd & desc.cmd & IOC_IN else 0
        self.out_size = user_size if cmd & desc.cmd & IOC_OUT else 0
        self.ksize = max(self.in_size, self.out_size, (desc.cmd >> 16) & IOC_SIZEMASK)


def ioctl_plan(cmd: int, desc: IoctlDesc) -> IoctlPlan:
    """The plan of ``cmd`` on row ``desc``, made on first use and kept on the row."""
    plans = desc.plans
    plan = plans.get(cmd)
    if plan is None:
        plan = IoctlPlan(cmd, desc)
        if len(plans) < 64:  # bounded: a caller may cycle through sizes of one number
            plans[cmd] = plan
    return plan


def run_ioctl(node: IoctlNode, task: Task, cmd: int, argp: int, desc: IoctlDesc) -> int:
    """The half of every ioctl path after the table lookup (call with the lock held).

    Copies the argument in (zero-extended to the table's size), checks
    permission, runs the handler, copies out also when it failed (an interrupted
    handler's :class:`~accelcore.errors.RestartSyscall` propagates after its
    copy-out, for :mod:`accelcore.syscalls` to restart or fail with ``EINTR``),
    and turns any exception that is not an errno error into an oops (``EIO``).
    Accel files use it through :func:`accelcore.dispatch.dispatch` (with the
    device's plan, :func:`~accelcore.ioctl.run_plan`); driver-wide nodes
    (``/dev/kfd``) and the core's own files (:class:`IoctlTableFile`) call it
    after their own lookup.

    Args:
        node: The file the ioctl was made on.
        task: The caller.
        cmd: The ioctl number as the caller passed it.
        argp: The user address of the argument.
        desc: The table row found for ``cmd``.
    """
    return run_plan(node, task, cmd, argp, ioctl_plan(cmd, desc))


def run_plan(node: IoctlNode, task: Task, cmd: int, argp: int, plan: IoctlPlan) -> int:
    """:func:`~accelcore.ioctl.run_ioctl` with the plan already found
    (:func:`~accelcore.ioctl.ioctl_plan`); the same arguments, ``plan`` for ``desc``."""
    desc = plan.desc
    in_size = plan.in_size
    out_size = plan.out_size
    mm = task.mm
    if in_size:
        buf = bytearray(mm.user_view(argp, in_size))
        if in_size < plan.ksize:
            buf.extend(bytes(plan.ksize - in_size))
    else:
        buf = bytearray(plan.ksize)
    node.ioctl_permit(task, desc)
    call = node.ioctl_call(task, cmd, desc, buf)
    try:
        ret = desc.func(call)
    except AccelError:  # RestartSyscall too: the system-call layer restarts the call
        _copy_out(task, argp, buf, out_size)
        raise
    except OSError as exc:
        _copy_out(task, argp, buf, out_size)
        if exc.errno:
            raise error_for_errno(exc.errno, f"{desc.name}: {exc.strerror}") from exc
        raise _oops(node, desc, exc) from exc
    except Deadlock:
        raise  # a virtual-time test waited forever: the harness's error, not an oops
    except Exception as exc:
        raise _oops(node, desc, exc) from exc
    if out_size:
        mm.copy_to_user(argp, buf if out_size == len(buf) else memoryview(buf)[:out_size])
    return ret or 0


def _copy_out(task: Task, argp: int, buf: bytearray, out_size: int) -> None:
    if out_size:
        task.mm.copy_to_user(argp, memoryview(buf)[:out_size])


def _oops(node: IoctlNode, desc: IoctlDesc, exc: Exception) -> DeviceIOError:
    return DeviceIOError(f"oops in {desc.name} on {node.ioctl_oops(desc.name, exc)}")


class FileIoctlCall(IoctlCallBase):
    """An ioctl on a file of an :class:`IoctlTableFile`: the call object with the file.

    Attributes:
        file: The open file the ioctl was made on (a dma-buf, a sync file…).
    """

    __slots__ = ("file",)

    def __init__(
        self, file: OpenFile, task: Task, cmd: int, desc: IoctlDesc, buf: bytearray, clock: Clock
    ) -> None:
        # One construction: the base's fields set here, not through super().
        self.task = task
        self.cmd = cmd
        self.desc = desc
        self.buf = buf
        self.clock = clock
        ptype = desc.ptype
        self.args = None if ptype is None else from_buffer(ptype, buf, False)
        self.file = file


def ioctl_table(
    uapi: Any, rows: Iterable[tuple[str, Callable[[Any], int | None]]]
) -> dict[int, IoctlDesc]:
    """A table for :class:`IoctlTableFile`: ``(ioctl name in the header, handler)`` rows,
    keyed by the whole ioctl number."""
    table = {}
    for name, func in rows:
        d = uapi.ioctls[name]
        table[d.cmd] = IoctlDesc(d.cmd, name, IoctlFlags.NONE, func, d.arg_type, uapi=uapi)
    return table


class IoctlTableFile:
    """The ioctl path of a file the core owns (dma-buf, udmabuf, sync file): a lookup
    of the whole number in :attr:`IOCTLS` (``ENOTTY`` if absent: these files switch
    on the full ``cmd``, as ``dma_buf_ioctl`` and ``udmabuf_ioctl`` do), then
    :func:`run_ioctl`. Mix in before :class:`~accelcore.vfs.OpenFile`.

    Subclasses set :attr:`IOCTLS` and implement :meth:`ioctl_clock`; they may
    override :meth:`ioctl_permit` and :meth:`ioctl_oops`.
    """

    #: The file's ioctls by number.
    IOCTLS: ClassVar[Mapping[int, IoctlDesc]] = {}
    kind: ClassVar[str]

    def ioctl_lookup(self, cmd: int) -> IoctlDesc | None:
        """The table row for ``cmd``, or ``None``."""
        return self.IOCTLS.get(cmd)

    def ioctl(self, task: Task, cmd: int, argp: int) -> int:
        desc = self.ioctl_lookup(cmd)
        if desc is None:
            raise NotTTY(f"{self.kind} file has no ioctl {cmd:#010x}")
        return run_ioctl(self, task, cmd, argp, desc)

    def ioctl_clock(self) -> Clock:
        """The clock handlers wait on."""
        raise NotImplementedError

    def ioctl_call(self, task: Task, cmd: int, desc: IoctlDesc, buf: bytearray) -> FileIoctlCall:
        file: Any = self
        return FileIoctlCall(file, task, cmd, desc, buf, self.ioctl_clock())

    def ioctl_permit(self, task: Task, desc: IoctlDesc) -> None:
        """No checks beyond the handler's own (the file's mode is not modelled)."""

    def ioctl_oops(self, where: str, exc: BaseException) -> str:
        """Record a bug in a handler (here: log it); returns the line describing it."""
        log.error("oops in %s on a %s file", where, self.kind, exc_info=exc)
        return f"{self.kind} file: {exc!r}"
