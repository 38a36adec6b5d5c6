"""The driver model: :class:`AccelDriver`, ioctl and INFO descriptors, policies.

A driver is a subclass of :class:`AccelDriver` that declares, as data, what the
kernel's ``struct drm_driver`` and ``struct pci_driver`` declare: a name and
version, the PCI ids it binds to, a uAPI header, an ioctl table, an ownership
policy and INFO queries. Behaviour goes in the callbacks it overrides (probe,
remove, open, postclose, context creation, mmap, reset, sysfs attributes).

Ioctls are methods marked with :func:`ioctl`, naming the ioctl's ``#define`` in
the driver's header; the number and argument struct come from the header::

    class Mini(AccelDriver):
        name = "mini"
        uapi = load_uapi(HERE / "mini.h", include=[CORE])

        @ioctl("DRM_IOCTL_MINI_NOP")
        def nop(self, call: IoctlCall) -> None:
            call.args.result = 1

The core checks the table and the header's structs (the "botching up ioctls"
rules) when the driver registers, and refuses a driver that breaks them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .errors import InvalidArgument
from .uapi import CORE, Uapi, check_uapi
from .uapi.ioc import IocNumber, decode

if TYPE_CHECKING:
    from . import vfs
    from .device import AccelDevice
    from .dispatch import IoctlCall
    from .dmabuf import DmaBuf
    from .file import AccelFile
    from .gem import BufferObject
    from .subsystem import Subsystem
    from .sysfs import AttributeGroup

__all__ = [
    "DRM_COMMAND_BASE",
    "DRM_COMMAND_END",
    "DRM_IOCTL_BASE",
    "AccelDriver",
    "DriverFeature",
    "EngineInfo",
    "InfoDesc",
    "IoctlDesc",
    "IoctlFlags",
    "MemoryRegionInfo",
    "OwnershipPolicy",
    "info_query",
    "ioctl",
]

DRM_IOCTL_BASE = ord("d")
DRM_COMMAND_BASE = 0x40
DRM_COMMAND_END = 0xA0


class IoctlFlags(enum.Flag):
    """Who may call an ioctl, and when. No flag: any opener, device operational."""

    NONE = 0
    #: Needs ``CAP_SYS_ADMIN`` (``DRM_ROOT_ONLY``); ``EACCES`` otherwise.
    ROOT_ONLY = enum.auto()
    #: The caller needs the compute context; under a single-owner policy it must
    #: be (or, lazily, become) the owner, and gets ``EBUSY`` when someone else is.
    OWNER = enum.auto()
    #: Allowed on a control node (INFO-only files); ``EACCES`` there otherwise.
    CONTROL_ALLOW = enum.auto()
    #: Allowed while the device is in reset or malfunctioning.
    RESET_OK = enum.auto()
    #: Allowed after hot-unplug (identity and status queries).
    UNPLUGGED_OK = enum.auto()


class OwnershipPolicy(enum.IntEnum):
    """How a driver shares its device between openers (DESIGN §3, seeds 000/001)."""

    #: One compute context per device, created at the first ioctl that needs it;
    #: an INFO-only file may upgrade while nobody owns (habanalabs, 2019).
    LAZY_SINGLE = 0
    #: The owner is fixed at open; a second compute open gets ``EBUSY``.
    EXCLUSIVE_OPEN = 1
    #: Every file gets its own context; nobody owns the device (KFD).
    PER_PROCESS = 2


class DriverFeature(enum.Flag):
    """Optional core services a driver uses."""

    NONE = 0
    #: Buffer objects with handles (``GEM_CLOSE``).
    GEM = 1
    #: dma-buf export and import of buffer objects (PRIME).
    PRIME = 2
    #: A second node per device, ``accel_controlD<N>``, that answers INFO only.
    CONTROL_NODE = 4
    #: Binary syncobjs: the core's ``DRM_IOCTL_SYNCOBJ_*`` ioctls (``DRIVER_SYNCOBJ``);
    #: without it they fail with ``EOPNOTSUPP``. See :mod:`accelcore.syncobj`.
    SYNCOBJ = 8
    #: Timeline syncobjs too (``DRIVER_SYNCOBJ_TIMELINE``): TIMELINE_WAIT,
    #: TIMELINE_SIGNAL, QUERY, TRANSFER and timeline points in the others.
    SYNCOBJ_TIMELINE = 16


@dataclass(frozen=True, slots=True)
class IoctlDesc:
    """One row of an ioctl table (``struct drm_ioctl_desc``)."""

    cmd: int
    name: str
    flags: IoctlFlags
    #: The handler; it receives the call object of the node it runs on (an
    #: :class:`~accelcore.dispatch.IoctlCall` on accel files).
    func: Callable[[Any], int | None]
    arg_type: str | None
    #: Ioctls with blocking waits; the restart checker interrupts each wait point.
    waits: bool = False
    #: Ioctls that act on several devices in one call (seed 004).
    multi_device: bool = False
    #: The header the argument type comes from (resolved once, for dispatch speed).
    uapi: Uapi | None = None
    #: ``flags.value``, and the cffi pointer type of the argument: derived once here
    #: because enum-flag tests and type lookups cost more than the rest of dispatch.
    bits: int = field(init=False, default=0)
    ptype: Any = field(init=False, default=None)
    #: :class:`~accelcore.ioctl.IoctlPlan` by the caller's ioctl number, made on
    #: first use (:func:`~accelcore.ioctl.ioctl_plan`).
    plans: dict[int, Any] = field(init=False, default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", self.flags.value)
        if self.arg_type is not None and self.uapi is not None:
            object.__setattr__(self, "ptype", self.uapi.ffi.typeof(self.arg_type + " *"))

    @property
    def number(self) -> IocNumber:
        return decode(self.cmd)


@dataclass(frozen=True, slots=True)
class InfoDesc:
    """One INFO query: its op, the struct it answers with, and when it answers."""

    op: int
    name: str
    func: Callable[[IoctlCall, Any], bytes]
    answer_type: str | None
    unplugged_ok: bool = False


@dataclass(frozen=True, slots=True)
class MemoryRegionInfo:
    """A memory region for INFO (``drm-total-<region>`` in fdinfo terms)."""

    name: str
    total_bytes: int
    used_bytes: int


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """An engine for INFO: busy now, busy time, submitted and completed jobs."""

    name: str
    engine_class: int
    busy: bool
    busy_time_ns: int
    submitted: int
    completed: int


@dataclass(frozen=True, slots=True)
class _IoctlMark:
    name: str
    flags: IoctlFlags
    waits: bool
    multi_device: bool


@dataclass(frozen=True, slots=True)
class _InfoMark:
    op: int | str
    answer_type: str | None
    unplugged_ok: bool


F = TypeVar("F", bound=Callable[..., Any])


def ioctl(
    name: str,
    flags: IoctlFlags = IoctlFlags.NONE,
    *,
    waits: bool = False,
    multi_device: bool = False,
) -> Callable[[F], F]:
    """Mark a driver method as the handler of the ioctl ``name`` of its header.

    Args:
        name: The ``#define`` of the ioctl number (``DRM_IOCTL_HL_CS``).
        flags: Permission and state rules (:class:`IoctlFlags`).
        waits: The handler may sleep (the restart checker will interrupt it).
        multi_device: The handler acts on several devices (seed 004 checks).
    """

    def mark(fn: F) -> F:
        fn.__accel_ioctl__ = _IoctlMark(name, flags, waits, multi_device)  # type: ignore[attr-defined]
        return fn

    return mark


def info_query(
    op: int | str, answer_type: str | None = None, *, unplugged_ok: bool = False
) -> Callable[[F], F]:
    """Mark a driver method as the answer to the driver INFO query ``op``.

    The method is called as ``method(call, device)`` and returns the answer's
    bytes (or a cffi struct); the core cuts it to the caller's ``return_size``.
    ``op`` may be a constant's name in the driver's header.
    """

    def mark(fn: F) -> F:
        fn.__accel_info__ = _InfoMark(op, answer_type, unplugged_ok)  # type: ignore[attr-defined]
        return fn

    return mark


class AccelDriver:
    """Base class of accel drivers. Override class attributes and callbacks.

    Every class attribute a driver may set is listed here (the callbacks are
    the methods below); a test keeps this list complete.

    Attributes:
        name: Driver name (``drm_driver.name``), also the dma-buf exporter name,
            the prefix of its accounting keys, and what ``accelctl`` shows.
        desc: One-line description (``DRM_IOCTL_VERSION``'s ``desc``).
        version: ``(major, minor, patchlevel)`` reported by ``DRM_IOCTL_VERSION``.
        uapi: The driver's loaded header (:func:`~accelcore.load_uapi`), or
            ``None`` for a driver with no ioctls. Checked at registration.
        pci_ids: The PCI ids it binds to (:class:`accelcore.pci.PciDeviceId`);
            empty for a driver of virtual devices only.
        ownership: The :class:`OwnershipPolicy` (who may hold the compute context).
        features: :class:`DriverFeature` flags: ``GEM`` (handles, ``GEM_CLOSE``),
            ``PRIME`` (dma-buf export/import), ``CONTROL_NODE`` (an INFO-only
            node), ``SYNCOBJ`` / ``SYNCOBJ_TIMELINE`` (the syncobj ioctls).
            By default ``GEM | PRIME``.
        node_mode: Permission bits of its ``/dev/accel/accelN`` nodes (0o666).
        node_gid: Group of the nodes.
        max_handles: Handles one file may hold (``ENOMEM`` past it).
        device_model: Conformance declaration: the PCI device model (a name
            registered with :func:`accelcore.pci.register_device_model`) the
            suite instantiates to test the driver; ``None``: virtual devices.
        examples: Conformance declaration: valid arguments per ioctl name
            (``{"DRM_IOCTL_X": {"field": value}}``, nested fields dotted), which
            the suite varies for its negative matrix (``flags=~0``, ``pad=1``
            must be ``EINVAL``), restart checks and fuzzing. Ioctls without an
            example are skipped with that reason.
        bo_create: Conformance declaration: how to make a buffer object,
            ``(ioctl name, fields, name of the handle field)``, for the
            handle, mmap, PRIME and unplug checks; ``None`` skips them.
        bo_setup: Conformance declaration: a ``Setup`` of steps
            (``accelcore.testing.conformance.steps``) that makes a buffer
            object when one ioctl is not enough (``None``: use ``bo_create``).
        example_setup: Conformance declaration: per ioctl name, the ``Setup``
            steps its example needs first (a buffer before a submit, a job
            before a wait) and which example fields come from their results.
        failing_examples: Conformance declaration: per ioctl name, calls
            (``Fails``: fields, errno, why) that must fail with that errno and
            change nothing.
        legacy_ignored_fields: Conformance declaration: per ioctl name, the
            ``pad``/``flags`` fields a legacy uAPI never checked, left out of
            the negative matrix.

    Hooks (methods a driver may define, looked up by the conformance suite):
    ``inject_failure(dev, position)`` makes the next multi-device call fail at
    device ``position``, for the partial-failure check.
    """

    name: ClassVar[str] = "accel"
    desc: ClassVar[str] = ""
    version: ClassVar[tuple[int, int, int]] = (1, 0, 0)
    uapi: ClassVar[Uapi | None] = None
    pci_ids: ClassVar[Sequence[Any]] = ()
    ownership: ClassVar[OwnershipPolicy] = OwnershipPolicy.LAZY_SINGLE
    features: ClassVar[DriverFeature] = DriverFeature.GEM | DriverFeature.PRIME
    node_mode: ClassVar[int] = 0o666
    node_gid: ClassVar[int] = 0
    max_handles: ClassVar[int] = 65536

    # -- what the conformance suite needs to know (declarations, not behaviour) ----
    # (documented in the class docstring's Attributes)
    device_model: ClassVar[str | None] = None
    examples: ClassVar[Mapping[str, Mapping[str, int]]] = {}
    bo_setup: ClassVar[Any] = None
    example_setup: ClassVar[Mapping[str, Any]] = {}
    failing_examples: ClassVar[Mapping[str, Sequence[Any]]] = {}
    legacy_ignored_fields: ClassVar[Mapping[str, Sequence[str]]] = {}
    bo_create: ClassVar[tuple[str, Mapping[str, int], str] | None] = None

    # -- table construction ----------------------------------------------------
    def ioctl_table(self) -> dict[int, IoctlDesc]:
        """The driver ioctls by number (``nr``), built from the marked methods.

        Raises:
            InvalidArgument: an ioctl is not in the header, not a DRM ioctl, outside
                the driver range 0x40..0x9F, or shares a number with another.
        """
        table: dict[int, IoctlDesc] = {}
        for attr in dir(type(self)):
            fn = getattr(type(self), attr, None)
            mark = getattr(fn, "__accel_ioctl__", None)
            if not isinstance(mark, _IoctlMark):
                continue
            if self.uapi is None or mark.name not in self.uapi.ioctls:
                raise InvalidArgument(
                    f"driver {self.name}: ioctl {mark.name} (method {attr}) is not defined "
                    f"in its uAPI header"
                )
            d = self.uapi.ioctls[mark.name]
            if d.type != DRM_IOCTL_BASE:
                raise InvalidArgument(
                    f"driver {self.name}: ioctl {mark.name} has type {d.type:#x}, not 'd'"
                )
            if not DRM_COMMAND_BASE <= d.nr < DRM_COMMAND_END:
                raise InvalidArgument(
                    f"driver {self.name}: ioctl {mark.name} number {d.nr:#x} is outside the "
                    f"driver range {DRM_COMMAND_BASE:#x}..{DRM_COMMAND_END - 1:#x}"
                )
            if d.nr in table:
                raise InvalidArgument(
                    f"driver {self.name}: ioctls {table[d.nr].name} and {mark.name} share "
                    f"number {d.nr:#x}"
                )
            table[d.nr] = IoctlDesc(
                d.cmd,
                mark.name,
                mark.flags,
                getattr(self, attr),
                d.arg_type,
                mark.waits,
                mark.multi_device,
                self.uapi,
            )
        return table

    def info_table(self) -> dict[int, InfoDesc]:
        """The driver INFO queries by op, built from the marked methods."""
        table: dict[int, InfoDesc] = {}
        for attr in dir(type(self)):
            fn = getattr(type(self), attr, None)
            mark = getattr(fn, "__accel_info__", None)
            if not isinstance(mark, _InfoMark):
                continue
            op = mark.op
            if isinstance(op, str):
                if self.uapi is None or op not in self.uapi.constants:
                    raise InvalidArgument(f"driver {self.name}: INFO op {op} is not in its header")
                op = self.uapi.constants[op]
            if op < CORE.ACCEL_INFO_DRIVER_BASE:
                raise InvalidArgument(
                    f"driver {self.name}: INFO op {op:#x} ({attr}) is below the driver range "
                    f"{CORE.ACCEL_INFO_DRIVER_BASE:#x}"
                )
            if op in table:
                raise InvalidArgument(f"driver {self.name}: two INFO queries use op {op:#x}")
            table[op] = InfoDesc(op, attr, getattr(self, attr), mark.answer_type, mark.unplugged_ok)
        return table

    def check_identity(self) -> None:
        """Refuse an identity the core cannot report (``DRM_IOCTL_VERSION``, INFO,
        fdinfo, sysfs, listings): a name that is not a non-empty string of
        printable ASCII without spaces, a description that is not a string (use
        ``""`` for none), or a version that is not three integers in [0, 2**31).
        (``DRM_IOCTL_VERSION`` itself also reports a missing string as ``""``, as
        the kernel has since its 2022 fix of ``drm_copy_field``.)

        Raises:
            InvalidArgument: the message names the attribute and its value.
        """
        name = self.name
        if not isinstance(name, str) or not name or any(not 0x21 <= ord(c) <= 0x7E for c in name):
            raise InvalidArgument(
                f"driver {type(self).__name__}: name {name!r} must be a non-empty string "
                "of printable ASCII without spaces"
            )
        desc: object = self.desc
        if not isinstance(desc, str):
            raise InvalidArgument(f"driver {name}: desc {desc!r} must be a string ('' for none)")
        version = self.version
        if (
            not isinstance(version, tuple)
            or len(version) != 3
            or not all(type(v) is int and 0 <= v < 1 << 31 for v in version)
        ):
            raise InvalidArgument(
                f"driver {name}: version {version!r} must be (major, minor, patchlevel) "
                "with each in [0, 2**31)"
            )

    def check_uapi(self) -> None:
        """Refuse a header that breaks the uAPI rules, naming struct and field.

        Raises:
            InvalidArgument: the first violations, one per line.
        """
        if self.uapi is None:
            return
        problems = check_uapi(self.uapi)
        if problems:
            lines = "\n  ".join(str(p) for p in problems)
            raise InvalidArgument(
                f"driver {self.name}: uAPI header {self.uapi.path.name} breaks the ioctl "
                f"rules:\n  {lines}"
            )

    # -- callbacks (override what the driver needs) ----------------------------
    def registered(self, subsystem: Subsystem) -> None:
        """The driver was registered (module init): create driver-wide nodes here,
        such as KFD's ``/dev/kfd``, with ``subsystem.add_node``."""

    def unregistered(self, subsystem: Subsystem) -> None:
        """The driver is going away (module exit): remove what :meth:`registered` made."""

    def in_use(self) -> list[str]:
        """What user space still holds of this driver beyond its devices' files and
        buffers, which the core counts itself: files of driver-wide nodes such as
        KFD's ``/dev/kfd``. One line per holder kind; while any is returned,
        :meth:`~accelcore.subsystem.Subsystem.unregister_driver` refuses with
        ``EBUSY`` (the module reference count of ``rmmod``)."""
        return []

    def probe(self, dev: AccelDevice) -> None:
        """Set up a newly allocated device (before it is registered).

        Register release actions with ``dev.add_action``; if probe raises, they run
        and nothing is left behind.
        """

    def remove(self, dev: AccelDevice) -> None:
        """The device is going away (driver unbind, hot-unplug). Stop the hardware."""

    def open(self, file: AccelFile) -> None:
        """A file was opened on one of the driver's nodes; raise to refuse."""

    def postclose(self, file: AccelFile) -> None:
        """A file is being released, after its handles are gone."""

    def context_create(self, file: AccelFile) -> Any:
        """Create the compute context of ``file`` (lazily, or at open)."""
        return object()

    def context_destroy(self, file: AccelFile, context: Any) -> None:
        """Tear the context down: revoke in-flight work (fences complete with error)."""

    def mmap(self, file: AccelFile, offset: int, length: int, writable: bool) -> vfs.Mapping | None:
        """Map driver memory at ``offset``; ``None`` lets the core map buffer objects."""
        return None

    def reset(self, dev: AccelDevice, reason: str) -> None:
        """Reset the hardware (hard reset); in-flight work has already been aborted."""

    def attribute_groups(self, dev: AccelDevice) -> Sequence[AttributeGroup]:
        """sysfs attributes of the device (on the parent, like real drivers)."""
        return ()

    def memory_regions(self, dev: AccelDevice) -> Sequence[MemoryRegionInfo]:
        """Memory regions for INFO."""
        return ()

    def engines(self, dev: AccelDevice) -> Sequence[EngineInfo]:
        """Engines for INFO."""
        return ()

    def accounting(self) -> dict[str, int]:
        """Counts of the driver's own live resources (queues, events, page-table
        entries…), merged into :meth:`Subsystem.accounting` for leak checks."""
        return {}

    def fdinfo(self, file: AccelFile) -> dict[str, str]:
        """Driver lines for the file's fdinfo (``drm-engine-<name>: <ns> ns``…)."""
        return {}

    def prime_import(self, file: AccelFile, dmabuf: DmaBuf) -> BufferObject:
        """Import a foreign dma-buf; the default attaches statically and maps it
        (:func:`accelcore.gem.import_dmabuf`)."""
        # Calls up: gem imports this module (DriverFeature), so the default hook
        # imports gem at run time, as drm_driver's NULL gem_prime_import falls back
        # to drm_gem_prime_import (drm_prime.c) above the driver model.
        from .gem import import_dmabuf

        return import_dmabuf(file.device, dmabuf)

    def prime_export(self, file: AccelFile, bo: BufferObject, flags: int) -> DmaBuf:
        """Export ``bo`` as a dma-buf; the default shares its memory and its
        reservation object (``drm_gem_prime_export``), so the job fences a driver
        adds to ``bo.resv`` are the dma-buf's fences too."""
        # Calls up: dmabuf and gem import this module (IoctlDesc via ioctl,
        # DriverFeature), so the default hook imports them at run time.
        from .dmabuf import DmaBuf
        from .gem import GemDmaBufOps

        dmabuf = DmaBuf(
            GemDmaBufOps(self.name),
            bo.memory,
            bo.offset,
            bo.size,
            exporter=file.device.name,
            registry=file.device.subsystem.dmabufs,
            priv=bo,
            flags=flags,
            resv=bo.resv,
        )
        bo.get()  # the dma-buf's reference, dropped by GemDmaBufOps.release
        return dmabuf
