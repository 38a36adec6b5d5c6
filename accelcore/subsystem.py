"""The subsystem: the registry that ties drivers, devices, minors, nodes and tasks.

One :class:`Subsystem` is one simulated kernel's accel subsystem. It holds the
engine's clock (and so its lock), the sysfs tree, the minor allocator, the
``/dev`` nodes, the registered drivers, every device from allocation to final
release, every live dma-buf, and the oopses caught. It is sans-I/O: transports
(the in-process :mod:`accelcore.userspace` and the server) drive it with calls.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from .clock import Clock, VirtualClock, WaitResult
from .device import (
    ACCEL_CONTROL_MAJOR,
    ACCEL_MAJOR,
    AccelDevice,
    BusDevice,
    DeviceState,
    DeviceStatus,
    Oops,
)
from .dmabuf import DmaBufRegistry
from .driver import AccelDriver, DriverFeature, InfoDesc, IoctlDesc, OwnershipPolicy
from .errors import (
    AccelError,
    Busy,
    DeviceIOError,
    InvalidArgument,
    NoEntry,
    PermissionDenied,
    RestartSyscall,
)
from .fence import FenceContext
from .file import AccelFile
from .memory import LIVE
from .minors import MinorAllocator
from .ownership import OwnerState
from .resources import ResourceRegistry
from .sysfs import Attribute, SysfsNode, SysfsTree
from .task import Credentials, Task
from .udmabuf import UdmabufFile
from .vfs import OpenFile

__all__ = ["DevNode", "Subsystem"]

log = logging.getLogger("accelcore")

Opener = Callable[[Task, int], OpenFile]


@dataclass(frozen=True, slots=True)
class DevNode:
    """An entry under ``/dev``: who may open it and what opening it makes."""

    path: str
    mode: int
    uid: int
    gid: int
    opener: Opener
    devnum: tuple[int, int] | None = None
    kind: str = "accel"

    def permits(self, creds: Credentials, flags: int) -> bool:
        """Whether ``creds`` may open the node with ``flags`` (mode, owner, group)."""
        if creds.is_admin:
            return True
        acc = flags & os.O_ACCMODE
        need = {os.O_RDONLY: 4, os.O_WRONLY: 2}.get(acc, 6)
        if creds.uid == self.uid:
            bits = (self.mode >> 6) & 7
        elif creds.in_group(self.gid):
            bits = (self.mode >> 3) & 7
        else:
            bits = self.mode & 7
        return bits & need == need


@dataclass(frozen=True, slots=True)
class _Registration:
    driver: AccelDriver
    ioctls: dict[int, IoctlDesc]
    info: dict[int, InfoDesc]


class Subsystem:
    """The accel subsystem of one simulated machine.

    Args:
        clock: Device time; a :class:`~accelcore.clock.VirtualClock` by default.
        sysfs: The sysfs tree to publish devices in (shared with the PCI bus).
    """

    def __init__(self, clock: Clock | None = None, sysfs: SysfsTree | None = None) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        if self.clock.oops_handler is None:
            # Timers and fence callbacks run for the device, not for the waiter
            # that happens to run them: their oopses are recorded here.
            self.clock.oops_handler = self.record_oops
        self.sysfs = sysfs if sysfs is not None else SysfsTree()
        self.minors: MinorAllocator[AccelDevice] = MinorAllocator()
        self.nodes: dict[str, DevNode] = {}
        self.devices: list[AccelDevice] = []
        self.oopses: list[Oops] = []
        self.tasks: dict[int, Task] = {}
        self.dmabufs = DmaBufRegistry(
            FenceContext(self.clock, "accelcore", "stub"), record_oops=self.record_oops
        )
        #: Managed resources of devices, files and contexts (``drmm_*``, ``xa_alloc``).
        self.resources = ResourceRegistry()
        self._drivers: dict[str, _Registration] = {}
        self._pids = itertools.count(1000)
        self.add_node(
            DevNode(
                "/dev/udmabuf",
                0o666,
                0,
                0,
                lambda task, flags: UdmabufFile(self.dmabufs),
                (10, 125),
                "misc",
            )
        )

    # -- drivers -----------------------------------------------------------------
    def register_driver(self, driver: AccelDriver) -> None:
        """Check and register ``driver`` (``drm_dev_init``'s checks, plus the uAPI rules).

        Raises:
            InvalidArgument: its name, description or version cannot be reported
                (:meth:`~accelcore.driver.AccelDriver.check_identity`), a driver
                of that name exists, its ioctl table or INFO queries are
                inconsistent, or its uAPI breaks the rules (the message names the
                struct and field).
        """
        with self.clock.lock:
            driver.check_identity()
            if driver.name in self._drivers:
                raise InvalidArgument(f"a driver named {driver.name!r} is already registered")
            driver.check_uapi()
            ioctls = driver.ioctl_table()
            info = driver.info_table()
            if DriverFeature.PRIME in driver.features and DriverFeature.GEM not in driver.features:
                raise InvalidArgument(f"driver {driver.name}: PRIME needs GEM")
            self._drivers[driver.name] = _Registration(driver, ioctls, info)
            try:
                driver.registered(self)
            except BaseException:
                del self._drivers[driver.name]
                raise

    def driver_users(self, driver: AccelDriver) -> list[str]:
        """What holds ``driver`` (its module reference count), one line per kind.

        Counted by the core: open files of its devices (a CPU mapping holds its
        file), and every other reference on one of its devices — buffer objects,
        and the dma-bufs that hold them — including devices already unplugged but
        not yet released. Added by the driver: :meth:`AccelDriver.in_use` (files
        of driver-wide nodes).
        """
        users = []
        for dev in self.devices:
            if dev.driver is not driver:
                continue
            files = len(dev.files)
            others = dev.refcount - files - (dev.state is DeviceState.REGISTERED)
            if files:
                users.append(f"{files} open file(s) of {dev.name}")
            if others > 0:
                users.append(f"{others} buffer or dma-buf reference(s) on {dev.name}")
        return users + driver.in_use()

    def unregister_driver(self, driver: AccelDriver) -> None:
        """``rmmod``: remove every device of ``driver``, then forget it.

        Refused while anything of the driver is in use (:meth:`driver_users`), as
        the kernel's module reference count refuses ``rmmod``: no open file,
        mapping or dma-buf is ever left pointing at a driver that is gone. Close
        them (or end their processes) and try again; a device hot-unplug
        (:meth:`remove_device`) is the way to take hardware away under users.

        Raises:
            Busy: the driver is in use (the message says by what).
        """
        with self.clock.lock:
            users = self.driver_users(driver)
            if users:
                raise Busy(f"driver {driver.name} is in use: {'; '.join(users)}")
            for dev in [
                d for d in self.devices if d.driver is driver and d.state is DeviceState.REGISTERED
            ]:
                self.remove_device(dev)
            if self._drivers.pop(driver.name, None) is not None:
                driver.unregistered(self)

    @property
    def drivers(self) -> dict[str, AccelDriver]:
        """Registered drivers by name."""
        return {name: r.driver for name, r in self._drivers.items()}

    # -- devices -------------------------------------------------------------------
    def create_device(self, driver: AccelDriver, parent: BusDevice | None = None) -> AccelDevice:
        """Allocate, probe and register a device of ``driver`` (a PCI probe does this).

        If probe fails, the device's release actions run and its minor is freed:
        nothing is left behind.

        Raises:
            InvalidArgument: ``driver`` is not registered.
            NoSpace: all 256 minors are in use.
            AccelError: probe refused the device (a non-errno exception from probe
                is an oops and becomes ``EIO``).
        """
        with self.clock.lock:
            reg = self._drivers.get(driver.name)
            if reg is None or reg.driver is not driver:
                raise InvalidArgument(f"driver {driver.name!r} is not registered")
            minor = self.minors.reserve()
            dev = AccelDevice(self, driver, parent, minor, reg.ioctls, reg.info)
            self.devices.append(dev)
            try:
                driver.probe(dev)
                self._register(dev)
            except BaseException as exc:
                dev.state = DeviceState.UNREGISTERED
                dev.status = DeviceStatus.UNPLUGGED
                if dev.sysfs is not None and dev.sysfs in self.sysfs:
                    self._unregister(dev)
                err: BaseException = exc
                if not isinstance(exc, AccelError) and isinstance(exc, Exception):
                    err = DeviceIOError(
                        f"probe of {driver.name} oopsed: {dev.record_oops('probe', exc).exception}"
                    )
                dev.put()
                raise err from exc
            return dev

    def _register(self, dev: AccelDevice) -> None:
        drv = dev.driver
        parent_node = dev.parent.sysfs if dev.parent is not None else None
        node = SysfsNode(
            dev.name,
            parent=parent_node,
            subsystem="accel",
            kind="class",
            devnum=(ACCEL_MAJOR, dev.minor),
            devname=f"accel/{dev.name}",
            devtype="accel_minor",
            subdir="accel" if parent_node is not None else "virtual/accel",
        )
        node.add_attribute(Attribute.ro("unique_id", lambda: dev.unique_id))
        for group in drv.attribute_groups(dev):
            node.add_group(group)
        node.oops_handler = dev.record_oops
        dev.sysfs = node
        self.sysfs.add(node)
        self.add_node(
            DevNode(
                dev.node_path,
                drv.node_mode,
                0,
                drv.node_gid,
                lambda task, flags: self._open_accel(dev, task, flags, False),
                (ACCEL_MAJOR, dev.minor),
            )
        )
        if dev.control_path is not None:
            ctl = SysfsNode(
                f"accel_controlD{dev.minor}",
                parent=parent_node,
                subsystem="accel",
                kind="class",
                devnum=(ACCEL_CONTROL_MAJOR, dev.minor),
                devname=f"accel/accel_controlD{dev.minor}",
                devtype="accel_control",
                subdir="accel" if parent_node is not None else "virtual/accel",
            )
            ctl.add_attribute(Attribute.ro("compute_node", lambda: dev.name))
            dev.control_sysfs = ctl
            self.sysfs.add(ctl)
            self.add_node(
                DevNode(
                    dev.control_path,
                    0o666,
                    0,
                    0,
                    lambda task, flags: self._open_accel(dev, task, flags, True),
                    (ACCEL_CONTROL_MAJOR, dev.minor),
                    "control",
                )
            )
        self.minors.publish(dev.minor, dev)
        dev.state = DeviceState.REGISTERED

    def _unregister(self, dev: AccelDevice) -> None:
        self.minors.hide(dev.minor)
        for path in (dev.node_path, dev.control_path):
            if path is not None:
                self.nodes.pop(path, None)
        for node in (dev.control_sysfs, dev.sysfs):
            if node is not None and node in self.sysfs:
                self.sysfs.remove(node)

    def remove_device(self, dev: AccelDevice) -> None:
        """Unbind and unplug ``dev`` (PCI remove, hot-unplug, driver unload).

        The driver's ``remove`` runs, every file's context is torn down (in-flight
        work completes with an error), CPU mappings are zapped, and the device
        disappears from ``/dev`` and sysfs. Open files stay valid (every operation
        but close gets ``ENODEV``); the device is freed at its last reference.
        """
        with self.clock.lock:
            if dev.state is not DeviceState.REGISTERED:
                raise InvalidArgument(f"{dev.name} is not registered (state {dev.state.value})")
            dev.set_status(DeviceStatus.UNPLUGGED)
            dev.state = DeviceState.UNPLUGGED
            try:
                dev.driver.remove(dev)
            except Exception as exc:
                dev.record_oops("remove", exc)
            for file in list(dev.files):
                dev.ownership.abort_context(file)
                file.zap_mappings()
            self._unregister(dev)
            dev.state = DeviceState.UNREGISTERED
            dev.put()

    def devices_released(self, dev: AccelDevice) -> None:
        """Called by a device at its final release."""
        if dev in self.devices:
            self.devices.remove(dev)

    def device(self, which: int | str) -> AccelDevice:
        """A registered device by minor, name (``accel0``) or node path.

        Raises:
            NoEntry: no such device.
        """
        for dev in self.devices:
            if dev.state is DeviceState.REGISTERED and which in (
                dev.minor,
                dev.name,
                dev.node_path,
                dev.bus_id,
            ):
                return dev
        raise NoEntry(f"no accel device {which!r}")

    def registered_devices(self) -> list[AccelDevice]:
        """Registered devices by minor."""
        return sorted(
            (d for d in self.devices if d.state is DeviceState.REGISTERED), key=lambda d: d.minor
        )

    # -- nodes and opening -----------------------------------------------------------
    def add_node(self, node: DevNode) -> None:
        """Create a ``/dev`` entry (misc devices like ``/dev/udmabuf``, ``/dev/kfd``)."""
        with self.clock.lock:
            if node.path in self.nodes:
                raise InvalidArgument(f"device node {node.path} already exists")
            self.nodes[node.path] = node

    def remove_node(self, path: str) -> None:
        """Remove a ``/dev`` entry."""
        with self.clock.lock:
            if self.nodes.pop(path, None) is None:
                raise NoEntry(f"no device node {path}")

    def open(self, task: Task, path: str, flags: int = os.O_RDWR) -> OpenFile:
        """``open(path, flags)`` by ``task``: a new open file description.

        A driver's open may sleep at an interruptible wait point
        (:meth:`interruptible_wait`); a signal then raises
        :class:`~accelcore.errors.RestartSyscall`, and the system-call layer
        (:meth:`accelcore.syscalls.Syscalls.open_file`, the way every transport
        opens) restarts the open (the task has ``SA_RESTART``) or fails it with
        ``EINTR``, as for an ioctl. An open interrupted this way must have had no
        visible effect.

        Raises:
            NoEntry: no such node.
            PermissionDenied: the node's mode, owner and group refuse the task.
            Busy: ``O_EXCL`` (accel has no exclusive opens), or an exclusive-open
                device already has its owner.
            NoDevice: the device was unplugged meanwhile.
            RestartSyscall: a signal interrupted the driver's wait.
        """
        with self.clock.lock:
            node = self.nodes.get(path)
            if node is None:
                raise NoEntry(f"no device node {path}")
            if not node.permits(task.creds, flags):
                raise PermissionDenied(
                    f"{path} (mode {stat.filemode(stat.S_IFCHR | node.mode)}, uid "
                    f"{node.uid}, gid {node.gid}) refuses uid {task.creds.uid} "
                    f"gid {task.creds.gid}"
                )
            if flags & os.O_EXCL:
                raise Busy(f"{path}: no exclusive opens (O_EXCL)")
            return node.opener(task, flags)

    def interruptible_wait(
        self,
        task: Task,
        predicate: Callable[[], bool],
        timeout_ns: int | None = None,
        *,
        what: str = "open",
    ) -> bool:
        """An interruptible wait point outside an ioctl — in a driver's ``open``
        (``wait_event_interruptible`` in a file operation), as
        :meth:`~accelcore.dispatch.IoctlCallBase.wait` is in an ioctl.

        Args:
            task: The caller (its signals interrupt the wait).
            predicate: Checked with the engine lock held.
            timeout_ns: Relative timeout; ``None`` waits for ever.
            what: Names the wait in the restart's message.

        Returns:
            ``True`` if the predicate holds, ``False`` on timeout.

        Raises:
            RestartSyscall: a signal arrived; let it propagate, with nothing done
                yet that the restarted call would repeat.
        """
        deadline = None if timeout_ns is None else self.clock.now() + timeout_ns
        task.enter_wait()
        result = self.clock.wait_until(predicate, deadline, lambda: task.signal_pending)
        if result is WaitResult.INTERRUPTED:
            raise RestartSyscall(f"{what} interrupted while waiting")
        return result is WaitResult.DONE

    def _open_accel(self, dev: AccelDevice, task: Task, flags: int, control: bool) -> AccelFile:
        with dev.enter():
            exclusive = dev.driver.ownership == OwnershipPolicy.EXCLUSIVE_OPEN and not control
            if exclusive and dev.ownership.state is not OwnerState.FREE:
                raise Busy(f"{dev.node_path} is {dev.ownership.describe()}")
            dev.get()
            file = AccelFile(dev, task, flags, control=control)
            try:
                dev.driver.open(file)
            except BaseException:
                file.released = True
                dev.put()
                raise
            dev.files.append(file)
            dev.opens_total += 1
            if exclusive:
                dev.ownership.acquire(file)
            return file

    def record_oops(self, where: str, exc: BaseException, *, device: str = "-") -> Oops:
        """Log a driver bug with its traceback (``device`` names where, if any)."""
        tb = "".join(traceback.format_exception(exc))
        oops = Oops(device, where, f"{type(exc).__name__}: {exc}", tb)
        self.oopses.append(oops)
        log.error("oops on %s in %s: %s\n%s", device, where, oops.exception, tb)
        return oops

    # -- tasks ---------------------------------------------------------------------
    def new_task(
        self,
        *,
        uid: int = 0,
        gid: int = 0,
        comm: str = "python",
        pid: int | None = None,
        groups: tuple[int, ...] = (),
        restart_syscalls: bool = False,
    ) -> Task:
        """A task for an in-process program (``fork``+``exec`` of a new process)."""
        with self.clock.lock:
            task = Task(
                pid if pid is not None else next(self._pids),
                comm,
                Credentials(uid, gid, groups),
                restart_syscalls,
            )
            self.tasks[task.pid] = task
            return task

    def fork_task(self, parent: Task) -> Task:
        """``fork(2)``: a child task sharing every open file description of ``parent``."""
        with self.clock.lock:
            child = parent.fork(next(self._pids))
            self.tasks[child.pid] = child
            return child

    def exit_task(self, task: Task) -> None:
        """Process exit: every descriptor is closed (releasing what they held)."""
        with self.clock.lock:
            task.exit()
            self.tasks.pop(task.pid, None)

    # -- listings --------------------------------------------------------------------
    def accounting(self) -> dict[str, int]:
        """Counts of every live resource, for leak checks: each returns to its
        baseline when everything is closed."""
        with self.clock.lock:
            devs = self.devices
            counts = {
                "minors": self.minors.in_use,
                "devices": len(devs),
                "files": sum(len(d.files) for d in devs),
                "handles": sum(len(f.handles) for d in devs for f in d.files),
                "buffers": sum(len(d.buffers) for d in devs),
                "cpu_mappings": sum(len(f.mappings) for d in devs for f in d.files),
                "contexts": sum(f.context is not None for d in devs for f in d.files),
                "events": sum(f.pending_events for d in devs for f in d.files),
                "shared_memory": LIVE.regions,
                "oopses": len(self.oopses),
            }
            counts.update(self.dmabufs.counts())
            counts.update(self.resources.counts())
            for name, reg in sorted(self._drivers.items()):
                for key, value in reg.driver.accounting().items():
                    counts[f"{name}.{key}"] = value
            return counts

    def holders(self, file: OpenFile) -> list[tuple[int, int]]:
        """``(pid, fd)`` of every descriptor on ``file`` in the known tasks."""
        return [
            (pid, fd)
            for pid, t in self.tasks.items()
            for fd, f in t.files.fds().items()
            if f is file
        ]

    def __repr__(self) -> str:
        return (
            f"<Subsystem {len(self.registered_devices())} devices, drivers {list(self._drivers)}>"
        )
