"""accelcore: a Python model of the Linux compute-accelerator ("accel") subsystem.

The public API for driver authors and tool authors. Layers (DESIGN §2):

* uAPI — :mod:`accelcore.uapi`: C headers via cffi, the ``_IOC`` codec, the
  uAPI rules checker;
* core engine — :class:`Subsystem`, :class:`AccelDriver`, :class:`AccelDevice`,
  :class:`AccelFile`, the dispatcher, INFO, ownership, buffer objects, dma-buf,
  fences, the job scheduler, syncobjs, managed resources, sysfs — sans-I/O (a
  thread runs only in :class:`RealClock`);
* buses — :mod:`accelcore.pci`, the simulated PCI backend;
* transports — :class:`Process` in one interpreter, :mod:`accelcore.server`
  across processes.

The public API is this module's ``__all__`` and that of the public subpackages
(:mod:`accelcore.uapi`, :mod:`accelcore.pci`, :mod:`accelcore.server`,
:mod:`accelcore.testing`); ``tests/core/public_api.txt`` is its snapshot. The
engine's modules behind the facade (``accelcore.gem``, ``accelcore.dispatch``,
…) are private: drivers import from here.
"""

from __future__ import annotations

from .batch import Batch, BatchedIoctl
from .clock import (
    NSEC_PER_MSEC,
    NSEC_PER_SEC,
    NSEC_PER_USEC,
    Clock,
    Deadlock,
    RealClock,
    Timer,
    VirtualClock,
    WaitResult,
)
from .device import AccelDevice, DeviceState, DeviceStatus, Oops
from .dispatch import IoctlCall
from .dmabuf import (
    Attachment,
    DmaBuf,
    DmaBufOps,
    DmaMapping,
    ImporterOps,
    SgEntry,
    require_dmabuf,
)
from .driver import (
    DRM_IOCTL_BASE,
    AccelDriver,
    DriverFeature,
    EngineInfo,
    IoctlDesc,
    IoctlFlags,
    MemoryRegionInfo,
    OwnershipPolicy,
    info_query,
    ioctl,
)
from .errors import (
    AccelError,
    BadAddress,
    BadFd,
    Busy,
    DeviceIOError,
    Interrupted,
    InvalidArgument,
    NoDevice,
    NoEntry,
    NoMemory,
    NoSpace,
    NotPermitted,
    NotSupported,
    NotTTY,
    PermissionDenied,
    RestartSyscall,
    TimedOut,
    TooManyFiles,
    TryAgain,
    error_for_errno,
)
from .fence import Fence, FenceArray, FenceContext, ReservationObject, Usage
from .file import AccelFile
from .gem import BufferObject, GemDmaBufOps, HandleTable, import_dmabuf
from .ioctl import IoctlCallBase, IoctlNode, run_ioctl
from .machine import Machine
from .memory import (
    FILL_CHUNK,
    PAGE_SIZE,
    DeviceMemory,
    MemoryBlock,
    RangeAllocator,
    SharedMemory,
    page_align,
)
from .ownership import OwnerState
from .resources import IdTable, ResourceScope, context_scope, device_scope, file_scope
from .sched import SchedEntity, SchedJob, SchedStat, Scheduler, SchedulerOps
from .subsystem import DevNode, Subsystem
from .sync_file import SyncFile
from .syncobj import Syncobj, lookup_syncobj
from .sysfs import Attribute, AttributeGroup, SysfsNode, SysfsTree, Uevent
from .task import AddressSpace, Credentials, Task, UserBuffer
from .uapi import CORE, Uapi, load_uapi
from .userspace import Process
from .vfs import Mapping, OpenFile

__version__ = "0.1.0"

__all__ = [
    "CORE",
    "DRM_IOCTL_BASE",
    "FILL_CHUNK",
    "NSEC_PER_MSEC",
    "NSEC_PER_SEC",
    "NSEC_PER_USEC",
    "PAGE_SIZE",
    "AccelDevice",
    "AccelDriver",
    "AccelError",
    "AccelFile",
    "AddressSpace",
    "Attachment",
    "Attribute",
    "AttributeGroup",
    "BadAddress",
    "BadFd",
    "Batch",
    "BatchedIoctl",
    "BufferObject",
    "Busy",
    "Clock",
    "Credentials",
    "Deadlock",
    "DevNode",
    "DeviceIOError",
    "DeviceMemory",
    "DeviceState",
    "DeviceStatus",
    "DmaBuf",
    "DmaBufOps",
    "DmaMapping",
    "DriverFeature",
    "EngineInfo",
    "Fence",
    "FenceArray",
    "FenceContext",
    "GemDmaBufOps",
    "HandleTable",
    "IdTable",
    "ImporterOps",
    "Interrupted",
    "InvalidArgument",
    "IoctlCall",
    "IoctlCallBase",
    "IoctlDesc",
    "IoctlFlags",
    "IoctlNode",
    "Machine",
    "Mapping",
    "MemoryBlock",
    "MemoryRegionInfo",
    "NoDevice",
    "NoEntry",
    "NoMemory",
    "NoSpace",
    "NotPermitted",
    "NotSupported",
    "NotTTY",
    "Oops",
    "OpenFile",
    "OwnerState",
    "OwnershipPolicy",
    "PermissionDenied",
    "Process",
    "RangeAllocator",
    "RealClock",
    "ReservationObject",
    "ResourceScope",
    "RestartSyscall",
    "SchedEntity",
    "SchedJob",
    "SchedStat",
    "Scheduler",
    "SchedulerOps",
    "SgEntry",
    "SharedMemory",
    "Subsystem",
    "SyncFile",
    "Syncobj",
    "SysfsNode",
    "SysfsTree",
    "Task",
    "TimedOut",
    "Timer",
    "TooManyFiles",
    "TryAgain",
    "Uapi",
    "Uevent",
    "Usage",
    "UserBuffer",
    "VirtualClock",
    "WaitResult",
    "__version__",
    "context_scope",
    "device_scope",
    "error_for_errno",
    "file_scope",
    "import_dmabuf",
    "info_query",
    "ioctl",
    "load_uapi",
    "lookup_syncobj",
    "page_align",
    "require_dmabuf",
    "run_ioctl",
]
