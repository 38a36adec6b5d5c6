"""Administration of a subsystem: sysfs walks and stores, reset, trigger, open files, bufinfo.

What ``udevadm info -a``, writing ``/sys/.../attr``, a device reset, ``udevadm
trigger``, ``/proc/<pid>/fdinfo`` and debugfs ``dma_buf/bufinfo`` give an
administrator, as one sans-I/O API: records in, records out, for a caller
whose :class:`~accelcore.task.Credentials` are given. Both front ends use it:
the devfs server's control ops (:mod:`accelcore.server.control_ops`, which add
request checking and JSON) and ``accelctl``'s embedded source. Each call takes
the engine lock (``clock.lock``) itself.

Privilege follows the kernel; ``admin`` is the caller's
:attr:`~accelcore.task.Credentials.is_admin` (``CAP_SYS_ADMIN``; root by default):

=====================  ==========================================================
operation              who, and what others get
=====================  ==========================================================
``attributes``         anyone (unreadable attributes show no value)
``store_attribute``    world-writable attributes: anyone; others: admin (``EACCES``)
``reset``              admin (``EACCES``)
``trigger``            admin; others at most ``burst`` events, then one per
                       ``interval_ns`` (:class:`TriggerLimit`), per uid (``EAGAIN``)
``files``              everyone's clients to admin; others see only the clients of
                       their own uid (``/proc/<pid>/fdinfo`` needs ptrace access)
``bufinfo``            admin (``EACCES``: debugfs is root's)
=====================  ==========================================================
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .device import AccelDevice
from .driver import DriverFeature
from .errors import AccelError, InvalidArgument, NoEntry, PermissionDenied, TryAgain
from .subsystem import Subsystem
from .sysfs import SysfsNode
from .task import Credentials
from .vfs import OpenFile

__all__ = [
    "ROOT",
    "Admin",
    "AttributeLevel",
    "AttributeValue",
    "BufferRecord",
    "DriverRecord",
    "FenceRecord",
    "Holder",
    "HolderLookup",
    "OpenFileRecord",
    "ResetRecord",
    "StoreRecord",
    "TriggerEvent",
    "TriggerLimit",
]

log = logging.getLogger("accelcore.admin")

#: The credentials of root (``CAP_SYS_ADMIN``).
ROOT = Credentials(uid=0, gid=0)


@dataclass(frozen=True, slots=True)
class Holder:
    """A descriptor ``fd`` of process ``pid`` that refers to an open file."""

    pid: int
    fd: int


#: ``files -> {id(file): holders}``: who holds each of ``files``. The default asks
#: :meth:`Subsystem.holders <accelcore.subsystem.Subsystem.holders>`; the server
#: reads ``/proc/<pid>/fd`` of its clients. Called without the engine lock held.
HolderLookup = Callable[[Sequence[OpenFile]], Mapping[int, list[Holder]]]


@dataclass(frozen=True, slots=True)
class AttributeValue:
    """One sysfs attribute: its mode (octal text) and value (``None`` when it is not
    readable or its ``show`` failed; ``error`` then says why)."""

    name: str
    value: str | None
    mode: str
    writable: bool
    readable: bool = True
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AttributeLevel:
    """One device of an ``udevadm info -a`` walk (the device, then its parents)."""

    devpath: str
    kernel: str
    subsystem: str | None
    driver: str | None
    attributes: list[AttributeValue]


@dataclass(frozen=True, slots=True)
class StoreRecord:
    """What :meth:`Admin.store_attribute` wrote, and where."""

    device: str
    devpath: str
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ResetRecord:
    """A device after :meth:`Admin.reset`."""

    device: str
    reason: str
    status: str
    reset_count: int


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """One ``change`` uevent :meth:`Admin.trigger` sent."""

    device: str
    devpath: str
    seqnum: int


@dataclass(frozen=True, slots=True)
class OpenFileRecord:
    """One open file on an accel node, as ``/proc/<pid>/fdinfo`` shows it.

    ``pid``/``comm``/``uid`` are the opener's; ``holders`` lists every ``(pid, fd)``
    that refers to the file now (``dup``, ``fork`` and fd passing share it).
    """

    device: str
    pid: int
    comm: str
    uid: int
    client_id: int
    owner: bool
    control: bool
    holders: list[Holder]
    fdinfo: dict[str, str]


@dataclass(frozen=True, slots=True)
class FenceRecord:
    """A fence on a dma-buf's reservation object."""

    usage: str
    driver: str
    timeline: str
    seqno: int
    signalled: bool


@dataclass(frozen=True, slots=True)
class BufferRecord:
    """One live dma-buf, as debugfs ``dma_buf/bufinfo`` lists it, with its holders."""

    ino: int
    size: int
    flags: int
    count: int
    exp_name: str
    exporter: str
    name: str
    revoked: bool
    pins: list[str]
    attachments: list[str]
    fences: list[FenceRecord]
    holders: list[Holder] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DriverRecord:
    """A registered driver: name, ``major.minor.patchlevel``, description, and whether
    its devices have a control node."""

    name: str
    version: str
    desc: str
    control_node: bool


@dataclass(frozen=True, slots=True)
class TriggerLimit:
    """How many ``trigger`` events a non-admin uid may cause: ``burst`` at once, then
    one more per ``interval_ns`` of device time (a token bucket)."""

    burst: int = 16
    interval_ns: int = 1_000_000_000


def _attribute(node: SysfsNode, name: str) -> AttributeValue:
    attr = node.attributes[name]
    value: str | None = None
    error: str | None = None
    if attr.readable:
        try:
            value = node.read(name).rstrip("\n")
        except AccelError as exc:
            error = str(exc.strerror or exc)
        except Exception as exc:  # read() turns driver bugs into EIO; never let one out
            log.exception("reading %s/%s", node.devpath, name)
            error = f"{type(exc).__name__}: {exc}"
    return AttributeValue(
        name, value, f"{attr.mode:04o}", attr.writable, readable=attr.readable, error=error
    )


def _level(node: SysfsNode) -> AttributeLevel:
    return AttributeLevel(
        node.devpath,
        node.name,
        node.subsystem,
        node.driver,
        [_attribute(node, n) for n in sorted(node.attributes)],
    )


class Admin:
    """The administrative operations on ``subsystem`` (see the module docstring).

    Args:
        subsystem: The subsystem administered.
        holders: Who holds each open file (default: the subsystem's tasks).
        trigger_limit: The budget of non-admin ``trigger`` callers.
    """

    def __init__(
        self,
        subsystem: Subsystem,
        *,
        holders: HolderLookup | None = None,
        trigger_limit: TriggerLimit | None = None,
    ) -> None:
        self.subsystem = subsystem
        self._holders = holders if holders is not None else self._task_holders
        self.trigger_limit = trigger_limit if trigger_limit is not None else TriggerLimit()
        # uid -> (tokens left, device time of the last refill)
        self._buckets: dict[int, tuple[int, int]] = {}

    def _task_holders(self, files: Sequence[OpenFile]) -> Mapping[int, list[Holder]]:
        with self.subsystem.clock.lock:
            return {id(f): [Holder(p, fd) for p, fd in self.subsystem.holders(f)] for f in files}

    def device(self, name: str) -> AccelDevice:
        """The registered device named ``name`` (``accel0`` or its node path).

        Raises:
            NoEntry: no such registered device, or it has no sysfs node (``ENOENT``).
        """
        with self.subsystem.clock.lock:
            for dev in self.subsystem.registered_devices():
                if name in (dev.name, dev.node_path):
                    if dev.sysfs is None:
                        raise NoEntry(f"accel device {name!r} has no sysfs node")
                    return dev
        raise NoEntry(f"no accel device {name!r}")

    def drivers(self) -> list[DriverRecord]:
        """The registered drivers, by name (anyone may ask, as ``/sys/module``)."""
        with self.subsystem.clock.lock:
            return [
                DriverRecord(
                    d.name,
                    ".".join(map(str, d.version)),
                    d.desc,
                    DriverFeature.CONTROL_NODE in d.features,
                )
                for _, d in sorted(self.subsystem.drivers.items())
            ]

    # -- sysfs -------------------------------------------------------------------------
    def attributes(self, device: str, cred: Credentials) -> list[AttributeLevel]:
        """The attribute walk from ``device`` up through its parents (anyone may read).

        Raises:
            NoEntry: unknown device.
        """
        with self.subsystem.clock.lock:
            dev = self.device(device)
            assert dev.sysfs is not None
            return [_level(n) for n in dev.sysfs.ancestry()]

    def store_attribute(
        self,
        device: str,
        name: str,
        value: str,
        cred: Credentials,
        *,
        level: int | None = None,
        devpath: str | None = None,
    ) -> StoreRecord:
        """Write ``value`` into attribute ``name``: at walk index ``level``, at
        ``devpath``, or on the nearest level (device first) that has it.

        Raises:
            InvalidArgument: ``level`` out of range, or the attribute's store refused
                the value (the driver's errno, usually ``EINVAL``).
            NoEntry: unknown device or attribute, or ``devpath`` not in the walk.
            PermissionDenied: a read-only attribute, or one only admin may write.
        """
        with self.subsystem.clock.lock:
            dev = self.device(device)
            assert dev.sysfs is not None
            levels = list(dev.sysfs.ancestry())
            if level is not None:
                if not 0 <= level < len(levels):
                    raise InvalidArgument(
                        f"level {level} is out of range (0..{len(levels) - 1} for {dev.name})"
                    )
                node = levels[level]
            elif devpath is not None:
                wanted = devpath.removeprefix("/sys").rstrip("/")
                found = [n for n in levels if n.devpath == wanted]
                if not found:
                    raise NoEntry(f"{devpath} is not {dev.name} or one of its parents")
                node = found[0]
            else:
                having = [n for n in levels if name in n.attributes]
                if not having:
                    raise NoEntry(f"no attribute {name!r} on {dev.name} or its parents")
                node = having[0]
            if name not in node.attributes:
                raise NoEntry(f"no attribute {name!r} on {node.devpath}")
            node.write(name, value, privileged=cred.is_admin)
            return StoreRecord(dev.name, node.devpath, name, value)

    # -- actions -------------------------------------------------------------------------
    def reset(self, device: str, reason: str, cred: Credentials) -> ResetRecord:
        """Hard-reset ``device`` (admin only).

        Raises:
            PermissionDenied: the caller is not admin (``EACCES``).
            NoEntry: unknown device.
        """
        if not cred.is_admin:
            raise PermissionDenied(f"uid {cred.uid} may not reset {device!r}: admin only")
        with self.subsystem.clock.lock:
            dev = self.device(device)
            dev.reset(reason)
            return ResetRecord(dev.name, reason, dev.status.name.lower(), dev.reset_count)

    def trigger(self, cred: Credentials, device: str | None = None) -> list[TriggerEvent]:
        """One ``change`` uevent for ``device``, or for every device when ``None``.

        Raises:
            TryAgain: a non-admin uid spent its :class:`TriggerLimit` (``EAGAIN``).
            NoEntry: unknown device.
        """
        with self.subsystem.clock.lock:
            devs = self.subsystem.registered_devices() if device is None else [self.device(device)]
            nodes = [(d.name, d.sysfs) for d in devs if d.sysfs is not None]
            if not cred.is_admin:
                self._spend(cred.uid, len(nodes))
            out = []
            for name, node in nodes:
                assert node is not None
                ev = self.subsystem.sysfs.emit("change", node)
                out.append(TriggerEvent(name, ev.devpath, ev.seqnum))
            return out

    def _spend(self, uid: int, count: int) -> None:
        limit = self.trigger_limit
        now = self.subsystem.clock.now()
        tokens, since = self._buckets.get(uid, (limit.burst, now))
        if limit.interval_ns > 0:
            earned = (now - since) // limit.interval_ns
            if earned:
                tokens = min(limit.burst, tokens + earned)
                since += earned * limit.interval_ns
        if tokens < count:
            self._buckets[uid] = (tokens, since)
            raise TryAgain(
                f"trigger: uid {uid} may send {tokens} more uevent(s) now, not {count} "
                f"(at most {limit.burst}, one more each {limit.interval_ns / 1e9:g} s)"
            )
        self._buckets[uid] = (tokens - count, since)

    # -- per-file and per-buffer views ---------------------------------------------------------
    def files(self, cred: Credentials) -> list[OpenFileRecord]:
        """Every open accel file with its fdinfo and holders, by device and client id;
        a non-admin caller sees only files opened by its own uid.
        """
        files: list[OpenFile] = []
        rows: list[OpenFileRecord] = []
        with self.subsystem.clock.lock:
            for dev in self.subsystem.registered_devices():
                for f in sorted(dev.files, key=lambda f: f.client_id):
                    if not cred.is_admin and f.uid != cred.uid:
                        continue
                    files.append(f)
                    rows.append(
                        OpenFileRecord(
                            dev.name,
                            f.pid,
                            f.comm,
                            f.uid,
                            f.client_id,
                            f.is_owner,
                            f.control,
                            [],
                            f.fdinfo(),
                        )
                    )
        holders = self._holders(files)
        return [
            dataclasses.replace(r, holders=sorted(holders.get(id(f), []), key=_holder_key))
            for f, r in zip(files, rows, strict=True)
        ]

    def bufinfo(self, cred: Credentials) -> list[BufferRecord]:
        """Every live dma-buf (debugfs ``dma_buf/bufinfo``) with its holders; admin only.

        Raises:
            PermissionDenied: the caller is not admin (``EACCES``).
        """
        if not cred.is_admin:
            raise PermissionDenied(f"bufinfo: uid {cred.uid} may not read debugfs: admin only")
        with self.subsystem.clock.lock:
            registry = self.subsystem.dmabufs
            entries = registry.bufinfo()
            bufs: list[OpenFile] = [registry.live[e["ino"]] for e in entries]
        holders = self._holders(bufs)
        return [
            BufferRecord(
                ino=int(e["ino"]),
                size=int(e["size"]),
                flags=int(e["flags"]),
                count=int(e["count"]),
                exp_name=str(e["exp_name"]),
                exporter=str(e["exporter"]),
                name=str(e["name"]),
                revoked=bool(e["revoked"]),
                pins=sorted(str(x) for x in e["pins"]),
                attachments=[str(x) for x in e["attachments"]],
                fences=[FenceRecord(**f) for f in e["fences"]],
                holders=sorted(holders.get(id(b), []), key=_holder_key),
            )
            for e, b in zip(entries, bufs, strict=True)
        ]


def _holder_key(h: Holder) -> tuple[int, int]:
    return (h.pid, h.fd)
