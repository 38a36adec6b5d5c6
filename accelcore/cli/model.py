"""accelctl's data model, and the common INFO ioctl turned into it.

Every command builds values of these frozen dataclasses and only then renders
them (as JSON through :func:`to_json`, or as tables). The INFO part is written
against :class:`UserProgram`, the system-call surface shared by the in-process
:class:`accelcore.Process` and the devfs server's client, so a server-backed
source can reuse :func:`read_device_info` unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..device import DeviceStatus
from ..driver import EngineInfo, MemoryRegionInfo, OwnershipPolicy
from ..errors import Busy
from ..ownership import OwnerState
from ..uapi import CORE

__all__ = [
    "ClientInfo",
    "DeviceIdentity",
    "DeviceInfo",
    "DeviceSummary",
    "OwnershipInfo",
    "StatusInfo",
    "UserProgram",
    "fdinfo_engine_time_ns",
    "fdinfo_memory",
    "info_query",
    "read_device_info",
    "summary_from_info",
    "to_json",
]

#: How many times an array answer is re-read when it grew between size and fetch.
_INFO_RETRIES = 3


class UserBufferLike(Protocol):
    """User memory: an address for ioctl structs and a view of its bytes."""

    @property
    def addr(self) -> int: ...

    @property
    def view(self) -> memoryview: ...


class UserProgram(Protocol):
    """The system calls INFO needs (``accelcore.Process`` and the server client)."""

    @property
    def pid(self) -> int: ...

    def open(self, path: str, flags: int = ...) -> int: ...

    def close(self, fd: int) -> None: ...

    def ioctl(self, fd: int, cmd: int, arg: Any = ...) -> int: ...

    def alloc(self, size: int) -> Any: ...

    def free(self, buf: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """``ACCEL_INFO_DEVICE``."""

    driver: str
    version: str
    bus_id: str
    minor: int
    vendor: int
    device: int
    subsystem_vendor: int
    subsystem_device: int
    class_code: int
    ownership_policy: str
    features: list[str]


@dataclass(frozen=True, slots=True)
class StatusInfo:
    """``ACCEL_INFO_STATUS`` (``open_count`` leaves out accelctl's own open)."""

    status: str
    tainted: bool
    reset_count: int
    oops_count: int
    open_count: int


@dataclass(frozen=True, slots=True)
class OwnershipInfo:
    """``ACCEL_INFO_OWNERSHIP``."""

    state: str
    policy: str
    owner_client_id: int | None
    owner_pid: int | None
    pin_count: int
    pinned_bytes: int


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """One element of ``ACCEL_INFO_CLIENTS``."""

    client_id: int
    pid: int
    uid: int
    comm: str
    name: str
    owner: bool
    control: bool
    admin: bool
    handles: int
    memory_bytes: int
    engine_time_ns: int


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Everything the core INFO queries answer about one device."""

    name: str
    node: str
    source: str
    identity: DeviceIdentity
    status: StatusInfo
    ownership: OwnershipInfo
    clients: list[ClientInfo] = field(default_factory=list)
    memory: list[MemoryRegionInfo] = field(default_factory=list)
    engines: list[EngineInfo] = field(default_factory=list)
    #: The device's stable identifier (sysfs ``unique_id``), when the source has it.
    uuid: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    """One row of ``accelctl list``."""

    name: str
    minor: int | None
    node: str | None
    driver: str | None
    pci_address: str | None
    vendor: int | None
    device: int | None
    status: str
    owner_pid: int | None
    open_count: int | None
    source: str
    #: The device's stable identifier (sysfs ``unique_id``), when the source has it.
    uuid: str | None = None


def to_json(value: Any) -> Any:
    """A JSON-ready copy of a model value (dataclasses become dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


# -- INFO ------------------------------------------------------------------------
def info_query(proc: UserProgram, fd: int, op: int, ctype: str) -> list[Any]:
    """Ask INFO query ``op`` and split the answer into ``ctype`` structs.

    The size is asked first (``return_size`` 0), then the answer is fetched into
    user memory; an array that grew in between is asked again.

    Raises:
        OSError: the ioctl failed (an ``AccelError`` in process).
    """
    elem = CORE.sizeof(ctype)
    probe = CORE.new("struct accel_info", op=op)
    proc.ioctl(fd, CORE.ACCEL_IOCTL_INFO, probe)
    size = int(probe.actual_size)
    data = b""
    for _ in range(_INFO_RETRIES):
        if size == 0:
            return []
        buf = proc.alloc(size)
        try:
            q = CORE.new("struct accel_info", op=op, return_pointer=buf.addr, return_size=size)
            proc.ioctl(fd, CORE.ACCEL_IOCTL_INFO, q)
            got = min(size, int(q.actual_size))
            data = bytes(buf.view[: got - got % elem])
            if q.actual_size <= size:
                break
            size = int(q.actual_size)
        finally:
            proc.free(buf)
    return [CORE.from_bytes(ctype, data[i : i + elem]) for i in range(0, len(data), elem)]


def _str(chars: Any) -> str:
    text: bytes = CORE.ffi.string(chars)
    return text.decode(errors="replace")


def _enum_name(enum_cls: Any, value: int) -> str:
    try:
        name: str = enum_cls(value).name
    except ValueError:
        return f"unknown({value})"
    return name.lower()


_FEATURES = (
    ("gem", "ACCEL_FEATURE_GEM"),
    ("prime", "ACCEL_FEATURE_PRIME"),
    ("control_node", "ACCEL_FEATURE_CONTROL_NODE"),
)


def _identity(a: Any) -> DeviceIdentity:
    return DeviceIdentity(
        driver=_str(a.driver),
        version=f"{a.version_major}.{a.version_minor}.{a.version_patchlevel}",
        bus_id=_str(a.bus_id),
        minor=int(a.minor),
        vendor=int(a.vendor),
        device=int(a.device),
        subsystem_vendor=int(a.subsystem_vendor),
        subsystem_device=int(a.subsystem_device),
        class_code=int(a.class_code),
        ownership_policy=_enum_name(OwnershipPolicy, int(a.ownership_policy)),
        features=[name for name, const in _FEATURES if a.features & getattr(CORE, const)],
    )


def _status(a: Any, own_opens: int) -> StatusInfo:
    return StatusInfo(
        status=_enum_name(DeviceStatus, int(a.status)),
        tainted=bool(a.flags & CORE.ACCEL_STATUS_FLAG_TAINTED),
        reset_count=int(a.reset_count),
        oops_count=int(a.oops_count),
        open_count=max(0, int(a.open_count) - own_opens),
    )


def _ownership(a: Any) -> OwnershipInfo:
    owned = int(a.state) == OwnerState.OWNED
    return OwnershipInfo(
        state=_enum_name(OwnerState, int(a.state)),
        policy=_enum_name(OwnershipPolicy, int(a.policy)),
        owner_client_id=int(a.owner_client_id) if owned else None,
        owner_pid=int(a.owner_pid) if owned else None,
        pin_count=int(a.pin_count),
        pinned_bytes=int(a.pinned_bytes),
    )


def _client(a: Any) -> ClientInfo:
    return ClientInfo(
        client_id=int(a.client_id),
        pid=int(a.pid),
        uid=int(a.uid),
        comm=_str(a.comm),
        name=_str(a.name),
        owner=bool(a.flags & CORE.ACCEL_CLIENT_OWNER),
        control=bool(a.flags & CORE.ACCEL_CLIENT_CONTROL),
        admin=bool(a.flags & CORE.ACCEL_CLIENT_ADMIN),
        handles=int(a.handles),
        memory_bytes=int(a.memory_bytes),
        engine_time_ns=int(a.engine_time_ns),
    )


def read_device_info(
    proc: UserProgram, name: str, paths: list[str], *, source: str = "sim", full: bool = True
) -> DeviceInfo:
    """Open the first node of ``paths`` that opens, and read the core INFO queries.

    ``paths`` lists the control node first when the device has one, so that a
    read-only look does not touch the compute node (an exclusive-open device
    would make accelctl its owner). The querying program's own client is left
    out of ``clients`` and ``open_count``.

    Args:
        proc: The program that asks (root, to see every client).
        name: The device name (``accel0``).
        paths: Nodes to try, in order.
        source: ``"sim"``, ``"server"`` or ``"host"``: where the answer came from.
        full: Also ask clients, memory and engines.

    Raises:
        OSError: no node could be opened, or a query failed.
    """
    fd = _open_first(proc, paths)
    try:
        ident = _identity(
            info_query(proc, fd, CORE.ACCEL_INFO_DEVICE, "struct accel_info_device")[0]
        )
        status_raw = info_query(proc, fd, CORE.ACCEL_INFO_STATUS, "struct accel_info_status")[0]
        if status_raw.status == DeviceStatus.UNPLUGGED:
            own = OwnershipInfo("free", ident.ownership_policy, None, None, 0, 0)
            return DeviceInfo(name, paths[-1], source, ident, _status(status_raw, 1), own)
        own = _ownership(
            info_query(proc, fd, CORE.ACCEL_INFO_OWNERSHIP, "struct accel_info_ownership")[0]
        )
        clients: list[ClientInfo] = []
        memory: list[MemoryRegionInfo] = []
        engines: list[EngineInfo] = []
        if full:
            clients = [
                c
                for c in (
                    _client(a)
                    for a in info_query(
                        proc, fd, CORE.ACCEL_INFO_CLIENTS, "struct accel_info_client"
                    )
                )
                if c.pid != proc.pid
            ]
            memory = [
                MemoryRegionInfo(_str(a.name), int(a.total_bytes), int(a.used_bytes))
                for a in info_query(
                    proc, fd, CORE.ACCEL_INFO_MEMORY, "struct accel_info_memory_region"
                )
            ]
            engines = [
                EngineInfo(
                    _str(a.name),
                    int(a.engine_class),
                    bool(a.busy),
                    int(a.busy_time_ns),
                    int(a.submitted),
                    int(a.completed),
                )
                for a in info_query(proc, fd, CORE.ACCEL_INFO_ENGINES, "struct accel_info_engine")
            ]
        return DeviceInfo(
            name, paths[-1], source, ident, _status(status_raw, 1), own, clients, memory, engines
        )
    finally:
        proc.close(fd)


def _open_first(proc: UserProgram, paths: list[str]) -> int:
    last: OSError | None = None
    for path in paths:
        try:
            return proc.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except Busy as exc:  # exclusive-open device with an owner: try the next node
            last = exc
        except FileNotFoundError as exc:
            last = exc
    assert last is not None
    raise last


def summary_from_info(info: DeviceInfo) -> DeviceSummary:
    """The ``list`` row of a device, from its INFO answers."""
    ident = info.identity
    virtual = ident.bus_id == "virtual"
    return DeviceSummary(
        name=info.name,
        minor=ident.minor,
        node=info.node,
        driver=ident.driver,
        pci_address=None if virtual else ident.bus_id,
        vendor=None if virtual else ident.vendor,
        device=None if virtual else ident.device,
        status=info.status.status,
        owner_pid=info.ownership.owner_pid,
        open_count=info.status.open_count,
        source=info.source,
        uuid=info.uuid,
    )


#: fdinfo memory keys (Documentation/gpu/drm-usage-stats.rst): ``drm-<kind>-<region>:
#: <uint> [KiB|MiB]``. ``drm-memory-<region>`` is the deprecated name of resident.
FDINFO_MEMORY_KINDS = ("total", "resident", "shared", "active", "purgeable")
_FDINFO_UNITS = {"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def _fdinfo_quantity(text: str, unit_table: Mapping[str, int]) -> int | None:
    parts = text.split()
    if not parts or not parts[0].isdigit() or len(parts) > 2:
        return None
    scale = unit_table.get(parts[1] if len(parts) == 2 else "")
    return None if scale is None else int(parts[0]) * scale


def fdinfo_memory(fdinfo: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """Every memory region an fdinfo names, in bytes: ``{region: {kind: bytes}}``
    with ``kind`` one of :data:`FDINFO_MEMORY_KINDS`.

    Regions are named by the driver (``drm-total-vram``, ``drm-total-dram``,
    ``drm-total-memory``...), so a tool must read every ``drm-<kind>-*`` key, as
    the kernel's drm-usage-stats rules say; values without a unit are bytes.
    Malformed values are left out.
    """
    out: dict[str, dict[str, int]] = {}
    legacy: dict[str, int] = {}
    for key, value in fdinfo.items():
        if not key.startswith("drm-"):
            continue
        kind, _, region = key[4:].partition("-")
        if not region:
            continue
        n = _fdinfo_quantity(value, _FDINFO_UNITS)
        if n is None:
            continue
        if kind in FDINFO_MEMORY_KINDS:
            out.setdefault(region, {})[kind] = n
        elif kind == "memory":
            legacy[region] = n
    for region, n in legacy.items():
        out.setdefault(region, {}).setdefault("resident", n)
    return out


def fdinfo_engine_time_ns(fdinfo: Mapping[str, str]) -> int:
    """The sum of every ``drm-engine-<engine>: <uint> ns`` of an fdinfo."""
    total = 0
    for key, value in fdinfo.items():
        if key.startswith("drm-engine-") and not key.startswith("drm-engine-capacity-"):
            n = _fdinfo_quantity(value, {"ns": 1})
            total += n or 0
    return total
