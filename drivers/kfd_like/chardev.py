"""``/dev/kfd``: the one compute node for every GPU, and its ioctl dispatch.

``/dev/kfd`` is not an accel node, so it looks ioctls up in the driver's own table;
:func:`kfd_dispatch` follows ``kfd_ioctl`` in ``kfd_chardev.c``:

1. wrong type or unknown number → ``ENOTTY`` (table-driven: the driver's ioctl
   table, built from its ``@ioctl`` methods and header);
2. a process other than the opener → ``EBADF`` ("Only the process that opened
   /dev/kfd can use the file descriptor");
3. copy in ``_IOC_SIZE(cmd)`` bytes, zero-extended to the kernel's size;
4. the handler, with a :class:`KfdCall` (the core's call object, with the KFD file
   and process in place of an accel file);
5. copy out for ``IOC_OUT`` ioctls, **also when the handler failed** (``n_success``
   and ``WAIT_EVENTS``' remaining timeout rely on it); an interrupted handler is
   restarted or fails with ``EINTR`` by the task's policy; an exception that is not
   an errno error is an oops (``EIO``).

Steps 3-5 are the core's :func:`accelcore.dispatch.run_ioctl`, the same code accel
files run, so the two paths cannot drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from accelcore import (
    DRM_IOCTL_BASE,
    BadFd,
    Clock,
    IoctlCallBase,
    IoctlDesc,
    Mapping,
    NotTTY,
    OpenFile,
    run_ioctl,
)

if TYPE_CHECKING:
    from accelcore import Task

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

    # -- what the core's run_ioctl needs of the file --------------------------------
    def ioctl_lookup(self, cmd: int) -> IoctlDesc | None:
        """The table row for ``cmd`` (by type and number), or ``None``."""
        if (cmd >> 8) & 0xFF != DRM_IOCTL_BASE:
            return None
        return self.driver.kfd_ioctls.get(cmd & 0xFF)

    def ioctl_call(self, task: Task, cmd: int, desc: IoctlDesc, buf: bytearray) -> KfdCall:
        return KfdCall(self, task, cmd, desc, buf, self.driver.subsystem.clock)

    def ioctl_permit(self, task: Task, desc: IoctlDesc) -> None:
        """Nothing beyond the same-process check :func:`kfd_dispatch` made."""

    def ioctl_oops(self, where: str, exc: BaseException) -> str:
        return f"/dev/kfd: {self.driver.subsystem.record_oops(where, exc, device='kfd').exception}"

    def mmap(self, task: Task, offset: int, length: int, writable: bool) -> Mapping:
        with self.driver.subsystem.clock.lock:
            self.check_same_process(task)
            return self.driver.kfd_mmap(self, offset, length, writable)

    def release(self) -> None:
        with self.driver.subsystem.clock.lock:
            self.driver.kfd_release(self)


class KfdCall(IoctlCallBase):
    """An ioctl on ``/dev/kfd``: the core's call object with the KFD file and process
    in place of an accel file and device."""

    __slots__ = ("kfd_file", "process")

    def __init__(
        self, kfd_file: KfdFile, task: Task, cmd: int, desc: IoctlDesc, buf: bytearray, clock: Clock
    ) -> None:
        super().__init__(task, cmd, desc, buf, clock)
        self.kfd_file = kfd_file
        self.process = kfd_file.process


def kfd_dispatch(file: KfdFile, task: Task, cmd: int, argp: int) -> int:
    """Run ioctl ``cmd`` on a ``/dev/kfd`` file (see the module docstring for the order).

    Raises:
        AccelError: the errno of the failure.
    """
    driver = file.driver
    sub = driver.subsystem
    with sub.clock.lock:
        desc = file.ioctl_lookup(cmd)
        if desc is None:
            raise NotTTY(f"/dev/kfd has no ioctl {cmd:#010x} (nr {cmd & 0xFF:#04x})")
        file.check_same_process(task)
        return run_ioctl(file, task, cmd, argp, desc)
