"""Accel devices: lifecycle, managed release, the unplug guard, status and oopses.

Lifetime follows ``drm_dev``: **allocate** (a minor is reserved) → **register**
(the minor, ``/dev`` node and sysfs node become visible) → optionally **unplug**
(every operation but close gets ``ENODEV``; CPU mappings are zapped) →
**unregister** → **release** at the last reference, when the managed release
actions run in reverse order of registration and the minor is freed. Open files,
buffer objects and exported dma-bufs each hold a reference, so nothing is freed
while something still uses it, and nothing outlives its last user.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .driver import AccelDriver, DriverFeature, InfoDesc, IoctlDesc
from .errors import InvalidArgument, NoDevice
from .ownership import Ownership
from .resources import release_scope
from .sysfs import SysfsNode

if TYPE_CHECKING:
    from .file import AccelFile
    from .gem import BufferObject
    from .subsystem import Subsystem

__all__ = ["AccelDevice", "BusDevice", "DeviceState", "DeviceStatus", "Oops"]

#: The namespace of :attr:`AccelDevice.unique_id`.
_UNIQUE_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "accel.accelcore")

ACCEL_MAJOR = 261
#: Character major of control nodes (``accel_controlDN``, minor N). The accel core
#: has no control nodes; habanalabs' ``hl_controlD`` nodes, which they model, were
#: char devices of a dynamically allocated major, and dynamic majors are handed
#: out from 511 down (``CHRDEV_MAJOR_DYN_EXT_START``), so this is the first one.
ACCEL_CONTROL_MAJOR = 511


class BusDevice(Protocol):
    """What the core needs of a device's parent on a bus (a PCI function)."""

    @property
    def sysfs(self) -> SysfsNode | None: ...

    @property
    def address(self) -> object: ...


class DeviceState(enum.Enum):
    """Where a device is in its lifetime."""

    ALLOCATED = "allocated"
    REGISTERED = "registered"
    UNPLUGGED = "unplugged"
    UNREGISTERED = "unregistered"
    RELEASED = "released"


class DeviceStatus(enum.IntEnum):
    """What INFO reports as the device's health (``ACCEL_STATUS_*``)."""

    OPERATIONAL = 0
    IN_RESET = 1
    MALFUNCTION = 2
    NEEDS_RESET = 3
    UNPLUGGED = 4


_UNPLUGGED = DeviceStatus.UNPLUGGED


@dataclass(frozen=True, slots=True)
class Oops:
    """A driver bug caught by the core: an exception that was not an errno error."""

    device: str
    where: str
    exception: str
    traceback: str


class AccelDevice:
    """One accelerator as the core sees it. Created by :meth:`Subsystem.create_device`.

    Attributes:
        driver: The bound driver.
        parent: The bus device (PCI function), or ``None`` for a virtual device.
        minor: The accel minor (``/dev/accel/accel<minor>``).
        private: The driver's per-device state (set it in ``probe``).
        status: The :class:`DeviceStatus` INFO reports.
    """

    def __init__(
        self,
        subsystem: Subsystem,
        driver: AccelDriver,
        parent: BusDevice | None,
        minor: int,
        ioctls: dict[int, IoctlDesc],
        info: dict[int, InfoDesc],
    ) -> None:
        self.subsystem = subsystem
        #: ``subsystem.clock``: device time, and the engine lock (``clock.lock``).
        self.clock = subsystem.clock
        self.driver = driver
        self.parent = parent
        self.minor = minor
        self.name = f"accel{minor}"
        self.ioctls = ioctls
        #: ioctl number -> :class:`~accelcore.ioctl.IoctlPlan` (row and sizes),
        #: filled by :func:`~accelcore.dispatch.dispatch` on first use.
        self.ioctl_plans: dict[int, Any] = {}
        self.info_queries = info
        self.state = DeviceState.ALLOCATED
        self.status = DeviceStatus.OPERATIONAL
        self.private: Any = None
        self.files: list[AccelFile] = []
        self.buffers: set[BufferObject] = set()
        self.mmap_offsets: dict[int, BufferObject] = {}
        self.oopses: list[Oops] = []
        self.reset_count = 0
        self.opens_total = 0
        self.ownership = Ownership(self, driver.ownership)
        self.sysfs: SysfsNode | None = None
        self.control_sysfs: SysfsNode | None = None
        self._refs = 1
        self._actions: list[tuple[str, Callable[[], None]]] = []
        self._next_mmap_offset = 0x1_0000_0000

    # -- identity ----------------------------------------------------------------
    @property
    def node_path(self) -> str:
        """The compute node, ``/dev/accel/accel<minor>``."""
        return f"/dev/accel/{self.name}"

    @property
    def control_path(self) -> str | None:
        """The control node, if the driver has one."""
        if DriverFeature.CONTROL_NODE in self.driver.features:
            return f"/dev/accel/accel_controlD{self.minor}"
        return None

    @property
    def bus_id(self) -> str:
        """The parent's bus address (``0000:00:10.0``), or ``virtual``."""
        return str(self.parent.address) if self.parent is not None else "virtual"

    @property
    def unique_id(self) -> str:
        """A stable identifier of the device (sysfs ``unique_id``, as amdgpu's; what
        ``nvidia-smi`` calls the UUID): a UUID derived from the driver and the bus
        address (the minor for a virtual device), so the same machine description
        gives the same identifiers on every run and in every transport."""
        where = self.bus_id if self.parent is not None else f"virtual/{self.minor}"
        return str(uuid.uuid5(_UNIQUE_ID_NAMESPACE, f"{self.driver.name}/{where}"))

    @property
    def unplugged(self) -> bool:
        return self.status is _UNPLUGGED

    @property
    def tainted(self) -> bool:
        """Whether an oops happened on this device."""
        return bool(self.oopses)

    # -- references and managed release -------------------------------------------
    @property
    def refcount(self) -> int:
        return self._refs

    def get(self) -> AccelDevice:
        """Take a reference (``drm_dev_get``)."""
        if self.state is DeviceState.RELEASED:
            raise NoDevice(f"{self.name} is already released")
        self._refs += 1
        return self

    def put(self) -> None:
        """Drop a reference; the last one releases the device."""
        self._refs -= 1
        if self._refs == 0:
            self._release()

    def add_action(self, action: Callable[[], None], name: str | None = None) -> None:
        """Run ``action`` at the final release, before actions added earlier."""
        self._actions.append((name or str(getattr(action, "__name__", "action")), action))

    def release_action(self, action: Callable[[], None]) -> None:
        """Run a registered action now and forget it (``drmm_release_action``).

        Raises:
            InvalidArgument: ``action`` was never added.
        """
        for i, (_, fn) in enumerate(self._actions):
            if fn is action:
                del self._actions[i]
                action()
                return
        raise InvalidArgument(f"{self.name}: release action {action!r} was not registered")

    @property
    def managed_actions(self) -> list[str]:
        """Names of the pending release actions, in the order they will run."""
        return [name for name, _ in reversed(self._actions)]

    def _release(self) -> None:
        while self._actions:
            name, action = self._actions.pop()
            try:
                action()
            except Exception as exc:  # a release action must not stop the others
                self.record_oops(f"release action {name}", exc)
        release_scope("device", self, self)
        self.subsystem.minors.release(self.minor)
        self.subsystem.devices_released(self)
        self.state = DeviceState.RELEASED

    # -- the unplug guard ---------------------------------------------------------
    @contextmanager
    def enter(self) -> Iterator[AccelDevice]:
        """Run a block only while the device is present (``drm_dev_enter``).

        Raises:
            NoDevice: the device was unplugged.
        """
        if self.status == DeviceStatus.UNPLUGGED:
            raise NoDevice(f"{self.name} was unplugged")
        yield self

    # -- health ---------------------------------------------------------------------
    def record_oops(self, where: str, exc: BaseException) -> Oops:
        """Log a driver bug with its traceback and taint the device."""
        oops = self.subsystem.record_oops(where, exc, device=self.name)
        self.oopses.append(oops)
        return oops

    def set_status(self, status: DeviceStatus) -> None:
        """Change the health status and announce it with a ``change`` uevent."""
        status = DeviceStatus(status)  # a member, so checks can compare by identity
        if status is self.status:
            return
        self.status = status
        if self.sysfs is not None and self.sysfs in self.subsystem.sysfs:
            self.subsystem.sysfs.emit("change", self.sysfs, {"STATUS": status.name})

    def reset(self, reason: str = "requested") -> None:
        """Hard-reset the device: abort every context's work, reset the hardware.

        Every file's context is torn down through the driver (its in-flight work
        completes with an error), then the driver's ``reset`` runs, then the
        device is operational again with ``reset_count`` incremented and a
        ``change`` uevent with ``RESET=1``. Ownership survives: the owner keeps
        its file, and its next compute ioctl creates a fresh context.

        Raises:
            NoDevice: the device was unplugged.
            AccelError: the driver's reset failed (the device is now MALFUNCTION).
        """
        with self.enter():
            self.begin_reset()
            self.finish_reset(reason)

    def begin_reset(self) -> None:
        """First half of a reset: status IN_RESET, every context aborted.

        A PCI function reset calls this from ``reset_prepare``, before the
        hardware resets, and :meth:`finish_reset` from ``reset_done``.
        """
        self.set_status(DeviceStatus.IN_RESET)
        for file in list(self.files):
            self.ownership.abort_context(file)

    def finish_reset(self, reason: str) -> None:
        """Second half: the driver re-initializes the hardware; the device is
        operational again, ``reset_count`` goes up and a ``RESET=1`` uevent is sent.

        Raises:
            AccelError: the driver's reset failed (the device is now MALFUNCTION;
                a non-errno exception is recorded as an oops instead).
        """
        try:
            self.driver.reset(self, reason)
        except Exception as exc:
            self.set_status(DeviceStatus.MALFUNCTION)
            if isinstance(exc, OSError) and exc.errno:
                raise
            self.record_oops("reset", exc)
            return
        self.reset_count += 1
        self.status = DeviceStatus.OPERATIONAL
        if self.sysfs is not None:
            self.subsystem.sysfs.emit(
                "change", self.sysfs, {"RESET": "1", "REASON": reason, "STATUS": "OPERATIONAL"}
            )

    # -- mmap offsets (drm_vma_offset_manager) ----------------------------------
    def mmap_offset(self, bo: BufferObject) -> int:
        """The fake offset at which files holding ``bo`` can mmap it."""
        if bo.mmap_offset is None:
            bo.mmap_offset = self._next_mmap_offset
            self._next_mmap_offset += bo.size
            self.mmap_offsets[bo.mmap_offset] = bo
        return bo.mmap_offset

    def __repr__(self) -> str:
        return f"<AccelDevice {self.name} {self.driver.name} {self.state.value}>"
