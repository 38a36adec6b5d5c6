"""``/dev/kfd``: the one compute node for every GPU, and its ioctl dispatch.

The accel core dispatches ioctls only on accel files, so ``/dev/kfd`` has its own
dispatcher, :func:`kfd_dispatch`, built from the same pieces and in the same order
as the core's (``kfd_ioctl`` in ``kfd_chardev.c``):

1. wrong type or unknown number → ``ENOTTY`` (table-driven: the driver's ioctl
   table, built from its ``@ioctl`` methods and header);
2. a process other than the opener → ``EBADF`` ("Only the process that opened
   /dev/kfd can use the file descriptor");
3. copy in ``_IOC_SIZE(cmd)`` bytes, zero-extended to the kernel's size;
4. the handler, with a :class:`KfdCall` (an :class:`~accelcore.IoctlCall` whose
   wait points, user-memory access and fd helpers work without an accel device);
5. copy out for ``IOC_OUT`` ioctls, **also when the handler failed** (``n_success``
   and ``WAIT_EVENTS``' remaining timeout rely on it); an interrupted handler is
   restarted or fails with ``EINTR`` by the task's policy, as the core does; an
   exception that is not an errno error is an oops (``EIO``).
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

from accelcore import (
    AccelError,
    BadFd,
    Deadlock,
    DeviceIOError,
    Interrupted,
    IoctlCall,
    Mapping,
    OpenFile,
    RestartSyscall,
)
from accelcore.clock import Clock
from accelcore.device import Oops
from accelcore.driver import DRM_IOCTL_BASE, IoctlDesc
from accelcore.errors import NotTTY, error_for_errno
from accelcore.uapi.ioc import IOC_IN, IOC_OUT, IOC_SIZEMASK

from .abi import KFD_UAPI

if TYPE_CHECKING:
    from accelcore import Subsystem, Task

    from .driver import KfdLikeDriver
    from .process import KfdProcess

__all__ = ["KfdCall", "KfdFile", "kfd_dispatch"]


class KfdFile(OpenFile):
    """An open of ``/dev/kfd``: a reference on the opener's :class:`KfdProcess`."""

    kind = "kfd"

    def __init__(self, driver: KfdLikeDriver, process: KfdProcess, task: Task, flags: int) -> None:
        super().__init__(flags=flags)
        self.driver = driver
        self.process = process
        self.pid = task.pid

    def check_same_process(self, task: Task) -> None:
        """Refuse use by another process (a forked child, a receiver of the fd).

        Raises:
            BadFd: ``task`` is not the opener.
        """
        if task.pid != self.pid:
            raise BadFd(
                f"/dev/kfd file of pid {self.pid} used by pid {task.pid}; child "
                "processes need to open /dev/kfd themselves"
            )

    def ioctl(self, task: Task, cmd: int, argp: int) -> int:
        return kfd_dispatch(self, task, cmd, argp)

    def mmap(self, task: Task, offset: int, length: int, writable: bool) -> Mapping:
        with self.driver.subsystem.clock.lock:
            self.check_same_process(task)
            return self.driver.kfd_mmap(self, offset, length, writable)

    def release(self) -> None:
        with self.driver.subsystem.clock.lock:
            self.driver.kfd_release(self)


class KfdCall(IoctlCall):
    """An ioctl on ``/dev/kfd``: :class:`~accelcore.IoctlCall` without an accel file.

    ``file`` and ``device`` are not set (there is no accel device behind
    ``/dev/kfd``); handlers use :attr:`kfd_file` and :attr:`process`.
    """

    __slots__ = ("_clock", "kfd_file", "process")

    def __init__(
        self, kfd_file: KfdFile, task: Task, cmd: int, desc: IoctlDesc, buf: bytearray, clock: Clock
    ) -> None:
        # Deliberately not IoctlCall.__init__: it needs an AccelFile's device.
        self.kfd_file = kfd_file
        self.process = kfd_file.process
        self.task = task
        self.cmd = cmd
        self.desc = desc
        self.buf = buf
        self._clock = clock
        self.args: Any = None
        if desc.arg_type is not None:
            self.args = KFD_UAPI.ffi.from_buffer(desc.arg_type + " *", buf)

    @property
    def clock(self) -> Clock:
        return self._clock

    def read_struct(self, ctype: str, addr: int) -> Any:
        return KFD_UAPI.from_bytes(ctype, self.copy_from_user(addr, KFD_UAPI.sizeof(ctype)))

    def write_struct(self, addr: int, value: Any) -> None:
        self.copy_to_user(addr, KFD_UAPI.to_bytes(value))


def kfd_dispatch(file: KfdFile, task: Task, cmd: int, argp: int) -> int:
    """Run ioctl ``cmd`` on a ``/dev/kfd`` file (see the module docstring for the order).

    Raises:
        AccelError: the errno of the failure.
    """
    driver = file.driver
    sub = driver.subsystem
    with sub.clock.lock:
        desc = driver.kfd_ioctls.get(cmd & 0xFF) if (cmd >> 8) & 0xFF == DRM_IOCTL_BASE else None
        if desc is None:
            raise NotTTY(f"/dev/kfd has no ioctl {cmd:#010x} (nr {cmd & 0xFF:#04x})")
        file.check_same_process(task)
        user_size = (cmd >> 16) & IOC_SIZEMASK
        in_size = user_size if cmd & desc.cmd & IOC_IN else 0
        out_size = user_size if cmd & desc.cmd & IOC_OUT else 0
        ksize = max(in_size, out_size, (desc.cmd >> 16) & IOC_SIZEMASK)
        while True:
            buf = bytearray(ksize)
            if in_size:
                buf[:in_size] = task.mm.copy_from_user(argp, in_size)
            call = KfdCall(file, task, cmd, desc, buf, sub.clock)
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
                raise
            except Deadlock:
                raise  # a test waited forever in virtual time: not a driver bug
            except OSError as exc:
                _copy_out(task, argp, buf, out_size)
                if exc.errno:
                    raise error_for_errno(exc.errno, f"{desc.name}: {exc.strerror}") from exc
                raise _oops(sub, desc, exc) from exc
            except Exception as exc:
                raise _oops(sub, desc, exc) from exc
            _copy_out(task, argp, buf, out_size)
            # A signal that arrived at a wait point that was already satisfied is
            # delivered on the way back to user space, not at the next syscall.
            task.deliver_signal()
            return ret or 0


def _copy_out(task: Task, argp: int, buf: bytearray, out_size: int) -> None:
    if out_size:
        task.mm.copy_to_user(argp, memoryview(buf)[:out_size])


def _oops(sub: Subsystem, desc: IoctlDesc, exc: Exception) -> DeviceIOError:
    tb = "".join(traceback.format_exception(exc))
    oops = Oops("kfd", desc.name, f"{type(exc).__name__}: {exc}", tb)
    sub.oopses.append(oops)
    return DeviceIOError(f"oops in {desc.name} on /dev/kfd: {oops.exception}")
