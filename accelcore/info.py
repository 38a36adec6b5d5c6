"""The common INFO ioctl: a query table answered for every opener (seeds 000, 002).

``ACCEL_IOCTL_INFO`` takes a query id (``op``), a user buffer (``return_pointer``)
and its size (``return_size``). The answer is cut to that size, as habanalabs'
``HL_INFO`` does, so old binaries with smaller structs keep working; its full
size comes back in ``actual_size``, so a caller can ask with size 0 first. Array
answers (clients, memory regions, engines) start at element ``index`` and are cut
to whole elements.

INFO works for owners and non-owners, on the control node, during reset, and —
for the device identity and status queries — after hot-unplug, so a management
tool can always learn what a device is and what state it is in. Ops from
``ACCEL_INFO_DRIVER_BASE`` up go to the driver's :func:`~accelcore.driver.info_query`
methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .driver import DriverFeature
from .errors import BadAddress, InvalidArgument, NoDevice
from .uapi import CORE

if TYPE_CHECKING:
    from .device import AccelDevice
    from .dispatch import IoctlCall
    from .file import AccelFile

__all__ = ["CORE_QUERIES", "CoreQuery", "info_ioctl"]


@dataclass(frozen=True, slots=True)
class CoreQuery:
    """A core INFO query: the op, what it answers, and whether it is an array.

    ``answer`` returns the query's *sources*, cheaply (the device's files, its
    regions…), and ``encode`` turns one source into its uAPI struct. An array
    query encodes only the elements the caller's buffer takes, so asking for one
    client costs the same with one open file or a thousand (the engine lock is
    held for the call: no query may take time proportional to the machine).
    """

    op: int
    name: str
    answer_type: str
    answer: Callable[[AccelDevice], Sequence[Any]]
    encode: Callable[[Any], Any] | None = None
    array: bool = False
    unplugged_ok: bool = False
    #: ``sizeof(answer_type)``, resolved once.
    size: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", CORE.sizeof(self.answer_type))


_FFI = CORE.ffi
#: Pointer types of the answer structs and lengths of their ``char[N]`` fields,
#: resolved on first use instead of on every query.
_PTR_TYPES: dict[str, Any] = {}
_STR_LENGTHS: dict[tuple[str, str], int] = {}


def _new(ctype: str) -> Any:
    """A zeroed ``ctype`` of the core header (a cffi pointer to it)."""
    ptype = _PTR_TYPES.get(ctype)
    if ptype is None:
        ptype = _PTR_TYPES[ctype] = _FFI.typeof(ctype + " *")
    return _FFI.new(ptype)


def _set_str(owner: Any, name: str, value: str) -> None:
    """Set a ``char[N]`` field, cut to leave room for the terminating NUL."""
    ctype = _FFI.typeof(owner).item
    length = _STR_LENGTHS.get((ctype.cname, name))
    if length is None:
        length = _STR_LENGTHS[(ctype.cname, name)] = dict(ctype.fields)[name].type.length
    setattr(owner, name, value.encode()[: length - 1])


def _device(dev: AccelDevice) -> list[Any]:
    a = _new("struct accel_info_device")
    drv = dev.driver
    _set_str(a, "driver", drv.name)
    _set_str(a, "bus_id", dev.bus_id)
    a.version_major, a.version_minor, a.version_patchlevel = drv.version
    a.minor = dev.minor
    parent = dev.parent
    for attr in ("vendor", "device", "subsystem_vendor", "subsystem_device", "class_code"):
        setattr(a, attr, int(getattr(parent, attr, 0) or 0))
    a.ownership_policy = int(drv.ownership)
    a.features = (
        (CORE.ACCEL_FEATURE_GEM if DriverFeature.GEM in drv.features else 0)
        | (CORE.ACCEL_FEATURE_PRIME if DriverFeature.PRIME in drv.features else 0)
        | (CORE.ACCEL_FEATURE_CONTROL_NODE if DriverFeature.CONTROL_NODE in drv.features else 0)
        | (CORE.ACCEL_FEATURE_SYNCOBJ if DriverFeature.SYNCOBJ in drv.features else 0)
        | (
            CORE.ACCEL_FEATURE_SYNCOBJ_TIMELINE
            if DriverFeature.SYNCOBJ_TIMELINE in drv.features
            else 0
        )
    )
    return [a]


def _status(dev: AccelDevice) -> list[Any]:
    a = _new("struct accel_info_status")
    a.status = int(dev.status)
    a.flags = CORE.ACCEL_STATUS_FLAG_TAINTED if dev.tainted else 0
    a.reset_count = dev.reset_count
    a.oops_count = len(dev.oopses)
    a.open_count = len(dev.files)
    return [a]


def _ownership(dev: AccelDevice) -> list[Any]:
    own = dev.ownership
    a = _new("struct accel_info_ownership")
    a.state = int(own.state)
    a.policy = int(own.policy)
    if own.owner is not None:
        a.owner_client_id = own.owner.client_id
        a.owner_pid = own.owner.pid
    a.pin_count = len(own.pins)
    a.pinned_bytes = own.pinned_bytes
    return [a]


def _clients(dev: AccelDevice) -> Sequence[AccelFile]:
    return dev.files


def _client(f: AccelFile) -> Any:
    a = _new("struct accel_info_client")
    a.client_id = f.client_id
    a.pid = f.pid
    a.uid = f.uid
    a.flags = (
        (CORE.ACCEL_CLIENT_OWNER if f.is_owner else 0)
        | (CORE.ACCEL_CLIENT_CONTROL if f.control else 0)
        | (CORE.ACCEL_CLIENT_ADMIN if f.admin else 0)
    )
    a.handles = len(f.handles)
    a.memory_bytes = f.memory_bytes
    a.engine_time_ns = f.engine_time_ns
    _set_str(a, "name", f.client_name)
    _set_str(a, "comm", f.comm)
    return a


def _memory(dev: AccelDevice) -> list[Any]:
    out = []
    for r in dev.driver.memory_regions(dev):
        a = _new("struct accel_info_memory_region")
        _set_str(a, "name", r.name)
        a.total_bytes, a.used_bytes = r.total_bytes, r.used_bytes
        out.append(a)
    return out


def _engines(dev: AccelDevice) -> list[Any]:
    out = []
    for e in dev.driver.engines(dev):
        a = _new("struct accel_info_engine")
        _set_str(a, "name", e.name)
        a.engine_class, a.busy = e.engine_class, int(e.busy)
        a.busy_time_ns, a.submitted, a.completed = e.busy_time_ns, e.submitted, e.completed
        out.append(a)
    return out


#: The core queries by op.
CORE_QUERIES: dict[int, CoreQuery] = {
    q.op: q
    for q in (
        CoreQuery(
            CORE.ACCEL_INFO_DEVICE, "device", "struct accel_info_device", _device, unplugged_ok=True
        ),
        CoreQuery(
            CORE.ACCEL_INFO_STATUS, "status", "struct accel_info_status", _status, unplugged_ok=True
        ),
        CoreQuery(
            CORE.ACCEL_INFO_OWNERSHIP, "ownership", "struct accel_info_ownership", _ownership
        ),
        CoreQuery(
            CORE.ACCEL_INFO_CLIENTS,
            "clients",
            "struct accel_info_client",
            _clients,
            _client,
            array=True,
        ),
        CoreQuery(
            CORE.ACCEL_INFO_MEMORY, "memory", "struct accel_info_memory_region", _memory, array=True
        ),
        CoreQuery(
            CORE.ACCEL_INFO_ENGINES, "engines", "struct accel_info_engine", _engines, array=True
        ),
    )
}


def info_ioctl(call: IoctlCall) -> None:
    """Handle ``ACCEL_IOCTL_INFO``.

    Raises:
        InvalidArgument: non-zero ``flags`` or ``pad``, or an unknown ``op``.
        NoDevice: the device is unplugged and the query needs it present.
        BadAddress: ``return_size`` is non-zero and ``return_pointer`` is not
            writable user memory.
    """
    a = call.args
    dev = call.device
    if a.flags:
        raise InvalidArgument(f"accel_info.flags is {a.flags:#x}, must be 0")
    if a.pad:
        raise InvalidArgument(f"accel_info.pad is {a.pad:#x}, must be 0")
    op = a.op
    return_size = a.return_size
    elem_size = 0
    data: bytes | bytearray
    if op >= CORE.ACCEL_INFO_DRIVER_BASE:
        desc = dev.info_queries.get(op)
        if desc is None:
            raise InvalidArgument(f"unknown INFO op {op:#x} for driver {dev.driver.name}")
        if dev.unplugged and not desc.unplugged_ok:
            raise NoDevice(f"{dev.name} was unplugged")
        answer = desc.func(call, dev)
        data = (
            answer
            if isinstance(answer, bytes | bytearray)
            else (dev.driver.uapi or CORE).to_bytes(answer)
        )
        a.actual_size = len(data)
    else:
        q = CORE_QUERIES.get(op)
        if q is None:
            raise InvalidArgument(f"unknown INFO op {op:#x}")
        if dev.unplugged and not q.unplugged_ok:
            raise NoDevice(f"{dev.name} was unplugged")
        sources = q.answer(dev)
        if q.array:
            elem_size = q.size
            first = min(a.index, len(sources))
            # actual_size counts every element from index on, but only the whole
            # elements the buffer takes are encoded.
            a.actual_size = (len(sources) - first) * elem_size
            sources = sources[first : first + return_size // elem_size]
        elif a.index:
            raise InvalidArgument(f"accel_info.index is {a.index} for a non-array query")
        encode = q.encode
        if encode is not None:
            sources = [encode(i) for i in sources]
        buffer = _FFI.buffer  # the structs' bytes, joined without a copy each
        data = b"".join([buffer(i) for i in sources])
        if not q.array:
            a.actual_size = len(data)
    n = min(return_size, len(data))
    if elem_size:
        n -= n % elem_size
    if return_size and not a.return_pointer:
        raise BadAddress("accel_info.return_pointer is NULL with a non-zero return_size")
    if n:
        call.copy_to_user(a.return_pointer, data if n == len(data) else data[:n])
