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

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .device import DeviceStatus
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
    regions…), and ``encode`` turns one source into the bytes of its uAPI struct
    (a query without ``encode`` answers those bytes itself). An array query
    encodes only the elements the caller's buffer takes, so asking for one client
    costs the same with one open file or a thousand (the engine lock is held for
    the call: no query may take time proportional to the machine).
    """

    op: int
    name: str
    answer_type: str
    answer: Callable[[AccelDevice], Sequence[Any]]
    encode: Callable[[Any], bytes] | None = None
    array: bool = False
    unplugged_ok: bool = False
    #: ``sizeof(answer_type)``, resolved once.
    size: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", CORE.sizeof(self.answer_type))


_UNPLUGGED = DeviceStatus.UNPLUGGED

#: struct-module codes of the header's integer types.
_CODES = {
    "uint8_t": "B",
    "int8_t": "b",
    "uint16_t": "H",
    "int16_t": "h",
    "uint32_t": "I",
    "int32_t": "i",
    "uint64_t": "Q",
    "int64_t": "q",
}


def _packer(ctype: str, *names: str) -> struct.Struct:
    """A :class:`struct.Struct` for ``ctype`` of the core header, laid out from the
    header (offsets, sizes, padding), whose values are ``names`` in that order.

    ``names`` must be every field, in the header's order, except that a ``pad``
    field may be left out (it then packs as zero and unpacks to nothing): the
    header stays the one source of the layout, and a struct that changes there
    fails here, at import, not in an answer. A ``char[N]`` field takes bytes and
    keeps its last byte NUL (a longer value is cut, as ``strscpy`` does).
    """
    layout = CORE.layout(ctype)
    fields = [f for f in layout.fields if f.name != "pad" or "pad" in names]
    if tuple(f.name for f in fields) != names:
        raise TypeError(f"{ctype} has fields {[f.name for f in fields]}, not {list(names)}")
    fmt, at = "=", 0
    for f in layout.fields:
        fmt += f"{f.offset - at}x" if f.offset > at else ""
        if f not in fields:
            fmt += f"{f.size}x"
        elif f.ctype.startswith("char["):
            fmt += f"{f.size - 1}sx"
        else:
            fmt += _CODES[f.ctype]
        at = f.offset + f.size
    fmt += f"{layout.size - at}x" if layout.size > at else ""
    packer = struct.Struct(fmt)
    assert packer.size == layout.size, (ctype, fmt)
    return packer


_DEVICE = _packer(
    "struct accel_info_device",
    "driver",
    "bus_id",
    "version_major",
    "version_minor",
    "version_patchlevel",
    "minor",
    "vendor",
    "device",
    "subsystem_vendor",
    "subsystem_device",
    "class_code",
    "ownership_policy",
    "features",
)
_STATUS = _packer(
    "struct accel_info_status", "status", "flags", "reset_count", "oops_count", "open_count"
)
_OWNERSHIP = _packer(
    "struct accel_info_ownership",
    "state",
    "policy",
    "owner_client_id",
    "owner_pid",
    "pin_count",
    "pinned_bytes",
)
_CLIENT = _packer(
    "struct accel_info_client",
    "client_id",
    "pid",
    "uid",
    "flags",
    "handles",
    "memory_bytes",
    "engine_time_ns",
    "name",
    "comm",
)
_MEMORY_REGION = _packer("struct accel_info_memory_region", "name", "total_bytes", "used_bytes")
_ENGINE = _packer(
    "struct accel_info_engine",
    "name",
    "engine_class",
    "busy",
    "busy_time_ns",
    "submitted",
    "completed",
)
#: The argument of ``ACCEL_IOCTL_INFO``, read from the kernel copy in one step.
_ARGS = _packer(
    "struct accel_info",
    "return_pointer",
    "return_size",
    "op",
    "index",
    "flags",
    "actual_size",
    "pad",
)


def _device(dev: AccelDevice) -> list[bytes]:
    drv = dev.driver
    parent = dev.parent
    feats = drv.features
    features = (
        (CORE.ACCEL_FEATURE_GEM if DriverFeature.GEM in feats else 0)
        | (CORE.ACCEL_FEATURE_PRIME if DriverFeature.PRIME in feats else 0)
        | (CORE.ACCEL_FEATURE_CONTROL_NODE if DriverFeature.CONTROL_NODE in feats else 0)
        | (CORE.ACCEL_FEATURE_SYNCOBJ if DriverFeature.SYNCOBJ in feats else 0)
        | (CORE.ACCEL_FEATURE_SYNCOBJ_TIMELINE if DriverFeature.SYNCOBJ_TIMELINE in feats else 0)
    )
    ids = (
        int(getattr(parent, attr, 0) or 0)
        for attr in ("vendor", "device", "subsystem_vendor", "subsystem_device", "class_code")
    )
    return [
        _DEVICE.pack(
            drv.name.encode(),
            dev.bus_id.encode(),
            *drv.version,
            dev.minor,
            *ids,
            int(drv.ownership),
            features,
        )
    ]


def _status(dev: AccelDevice) -> list[bytes]:
    return [
        _STATUS.pack(
            dev.status,
            CORE.ACCEL_STATUS_FLAG_TAINTED if dev.oopses else 0,
            dev.reset_count,
            len(dev.oopses),
            len(dev.files),
        )
    ]


def _ownership(dev: AccelDevice) -> list[bytes]:
    own = dev.ownership
    owner = own.owner
    return [
        _OWNERSHIP.pack(
            own.state,
            own.policy,
            0 if owner is None else owner.client_id,
            0 if owner is None else owner.pid,
            len(own.pins),
            own.pinned_bytes,
        )
    ]


def _clients(dev: AccelDevice) -> Sequence[AccelFile]:
    return dev.files


def _client(f: AccelFile) -> bytes:
    return _CLIENT.pack(
        f.client_id,
        f.pid,
        f.uid,
        (CORE.ACCEL_CLIENT_OWNER if f.is_owner else 0)
        | (CORE.ACCEL_CLIENT_CONTROL if f.control else 0)
        | (CORE.ACCEL_CLIENT_ADMIN if f.admin else 0),
        len(f.handles),
        f.memory_bytes,
        f.engine_time_ns,
        f.client_name.encode(),
        f.comm.encode(),
    )


def _memory(dev: AccelDevice) -> list[bytes]:
    return [
        _MEMORY_REGION.pack(r.name.encode(), r.total_bytes, r.used_bytes)
        for r in dev.driver.memory_regions(dev)
    ]


def _engines(dev: AccelDevice) -> list[bytes]:
    return [
        _ENGINE.pack(
            e.name.encode(),
            e.engine_class,
            int(e.busy),
            e.busy_time_ns,
            e.submitted,
            e.completed,
        )
        for e in dev.driver.engines(dev)
    ]


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
    ptr, return_size, op, index, flags, _, pad = _ARGS.unpack_from(call.buf)
    dev = call.device
    a = call.args
    if flags:
        raise InvalidArgument(f"accel_info.flags is {flags:#x}, must be 0")
    if pad:
        raise InvalidArgument(f"accel_info.pad is {pad:#x}, must be 0")
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
        if dev.status is _UNPLUGGED and not q.unplugged_ok:
            raise NoDevice(f"{dev.name} was unplugged")
        sources = q.answer(dev)
        if q.array:
            elem_size = q.size
            first = min(index, len(sources))
            # actual_size counts every element from index on, but only the whole
            # elements the buffer takes are encoded.
            a.actual_size = (len(sources) - first) * elem_size
            sources = sources[first : first + return_size // elem_size]
        elif index:
            raise InvalidArgument(f"accel_info.index is {index} for a non-array query")
        encode = q.encode
        data = b"".join(sources if encode is None else [encode(i) for i in sources])
        if not q.array:
            a.actual_size = len(data)
    n = min(return_size, len(data))
    if elem_size:
        n -= n % elem_size
    if return_size and not ptr:
        raise BadAddress("accel_info.return_pointer is NULL with a non-zero return_size")
    if n:
        call.task.mm.copy_to_user(ptr, data if n == len(data) else data[:n])
