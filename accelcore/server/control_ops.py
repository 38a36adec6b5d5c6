"""The control endpoint's sysfs, action and per-file ops, over :mod:`accelcore.admin`.

``sysfs`` walks a device's sysfs node and its parents (``udevadm info -a``),
``store_attr`` writes one attribute, ``reset`` hard-resets a device, ``trigger``
synthesizes ``change`` uevents (``udevadm trigger``), ``files`` lists the open
accel files with fdinfo and holders, ``bufinfo`` adds holders to the dma-buf
list, and ``drivers`` lists the registered drivers. Each op is
``fn(server, request, peer_uid) -> result``: it checks every request field
first (``EINVAL`` naming the field), then asks the server's
:class:`~accelcore.admin.Admin` with the peer's credentials and returns its
records as JSON. The operations, their locking and their privilege rules live
there, once; this module only adds the wire. A peer is admin
(``CAP_SYS_ADMIN``) when it is root or the user the server runs as (the
machine's owner): see :func:`peer_credentials`.

Holders are what the server knows: every open file it serves is a socket whose
client end has an inode, so the ``(pid, fd)`` holding it are the descriptors of
its client processes (the processes with a session, and the ones each file is
charged to) that link to that inode in ``/proc/<pid>/fd``. A holder in a process
that never talked to the server, or whose ``/proc`` the server may not read,
is not listed.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..admin import Admin, Holder
from ..errors import InvalidArgument
from ..task import Credentials
from ..vfs import OpenFile

if TYPE_CHECKING:
    from .server import Server

__all__ = ["CONTROL_OPS", "admin_of", "bufinfo", "peer_credentials", "scan_holders"]

#: Longest device name, attribute name or devpath accepted in a request.
MAX_NAME = 256
#: Longest value written to an attribute (a sysfs store gets at most a page).
MAX_VALUE = 4096
#: Longest reset reason (it travels in the uevent's ``REASON``).
MAX_REASON = 256

Request = Mapping[str, Any]
ControlOp = Callable[["Server", Request, int], Any]

_ADMINS: weakref.WeakKeyDictionary[Server, Admin] = weakref.WeakKeyDictionary()


def admin_of(server: Server) -> Admin:
    """The :class:`~accelcore.admin.Admin` of ``server``'s machine (one per server,
    so the ``trigger`` budget is kept across requests), with holders read from
    ``/proc`` (``scan_holders``)."""
    admin = _ADMINS.get(server)
    if admin is None:
        ref = weakref.ref(server)

        def holders(files: Sequence[OpenFile]) -> Mapping[int, list[Holder]]:
            srv = ref()
            return {} if srv is None else _holders_of(srv, files)

        admin = _ADMINS[server] = Admin(server.machine.subsystem, holders=holders)
    return admin


def peer_credentials(peer_uid: int) -> Credentials:
    """The credentials of a control peer: admin when root or the server's own user."""
    return Credentials(uid=peer_uid, admin=peer_uid in (0, os.getuid()))


def _wire(value: Any) -> Any:
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return dataclasses.asdict(value)


# -- request fields ----------------------------------------------------------------
def _check_fields(op: str, request: Request, allowed: Iterable[str]) -> None:
    extra = sorted(set(request) - {"op", *allowed})
    if extra:
        raise InvalidArgument(f"{op}: unknown request field {extra[0]!r}")


def _str(op: str, request: Request, name: str, limit: int, *, required: bool = True) -> str | None:
    """Field ``name`` as a string of at most ``limit`` characters without NUL or newline."""
    if name not in request:
        if required:
            raise InvalidArgument(f"{op}: request field {name!r} is missing")
        return None
    value = request[name]
    if not isinstance(value, str):
        raise InvalidArgument(f"{op}: field {name!r} must be a string, not {value!r}")
    if len(value) > limit:
        raise InvalidArgument(f"{op}: field {name!r} is longer than {limit} characters")
    if "\0" in value or (name != "value" and "\n" in value):
        raise InvalidArgument(f"{op}: field {name!r} {value!r} has a NUL or newline")
    return value


def _device_name(op: str, request: Request) -> str:
    name = _str(op, request, "device", MAX_NAME)
    assert name is not None
    if not name:
        raise InvalidArgument(f"{op}: field 'device' is empty")
    return name


# -- sysfs ---------------------------------------------------------------------------
def op_sysfs(server: Server, request: Request, peer_uid: int) -> Any:
    """``{"device"}`` → ``{"device", "levels": [{devpath, kernel, subsystem, driver,
    attributes: [{name, value, mode, writable, readable, error}]}]}``, the device first."""
    _check_fields("sysfs", request, ["device"])
    name = _device_name("sysfs", request)
    admin = admin_of(server)
    levels = admin.attributes(name, peer_credentials(peer_uid))
    return {"device": admin.device(name).name, "levels": _wire(levels)}


def op_store_attr(server: Server, request: Request, peer_uid: int) -> Any:
    """``{"device", "name", "value", ["level" | "devpath"]}`` → ``{"device", "devpath",
    "name", "value"}``. Root-writable attributes need an admin peer (``EACCES``)."""
    _check_fields("store_attr", request, ["device", "name", "value", "level", "devpath"])
    if "level" in request and "devpath" in request:
        raise InvalidArgument("store_attr: give 'level' or 'devpath', not both")
    device = _device_name("store_attr", request)
    name = _str("store_attr", request, "name", MAX_NAME)
    value = _str("store_attr", request, "value", MAX_VALUE)
    assert name is not None and value is not None
    if not name:
        raise InvalidArgument("store_attr: field 'name' is empty")
    level = request.get("level")
    if level is not None and (not isinstance(level, int) or isinstance(level, bool)):
        raise InvalidArgument(f"store_attr: field 'level' must be an integer, not {level!r}")
    devpath = _str("store_attr", request, "devpath", MAX_NAME, required=False)
    record = admin_of(server).store_attribute(
        device, name, value, peer_credentials(peer_uid), level=level, devpath=devpath
    )
    return _wire(record)


# -- actions -----------------------------------------------------------------------------
def op_reset(server: Server, request: Request, peer_uid: int) -> Any:
    """``{"device", ["reason"]}`` → ``{"device", "reason", "status", "reset_count"}``;
    admin peers only (``EACCES``)."""
    _check_fields("reset", request, ["device", "reason"])
    device = _device_name("reset", request)
    reason = _str("reset", request, "reason", MAX_REASON, required=False)
    reason = "control" if reason is None else reason
    return _wire(admin_of(server).reset(device, reason, peer_credentials(peer_uid)))


def op_trigger(server: Server, request: Request, peer_uid: int) -> Any:
    """``{"device"}`` or ``{"all": true}`` → ``{"events": [{device, devpath, seqnum}]}``:
    one ``change`` uevent per device, as ``udevadm trigger`` makes; non-admin peers
    within their budget (``EAGAIN``)."""
    _check_fields("trigger", request, ["device", "all"])
    every = request.get("all", False)
    if not isinstance(every, bool):
        raise InvalidArgument(f"trigger: field 'all' must be a boolean, not {every!r}")
    if every == ("device" in request):
        raise InvalidArgument("trigger: give 'device' or 'all': true (exactly one)")
    device = None if every else _device_name("trigger", request)
    events = admin_of(server).trigger(peer_credentials(peer_uid), device)
    return {"events": _wire(events)}


# -- holders -------------------------------------------------------------------------------
def scan_holders(inodes: Iterable[int], pids: Iterable[int]) -> dict[int, list[tuple[int, int]]]:
    """``(pid, fd)`` of every descriptor of processes ``pids`` on socket ``inodes``.

    Processes that are gone, or whose ``/proc/<pid>/fd`` may not be read, are skipped.
    """
    wanted = set(inodes)
    found: dict[int, list[tuple[int, int]]] = {}
    if not wanted:
        return found
    for pid in sorted(set(pids)):
        base = f"/proc/{pid}/fd"
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for fd in sorted(int(n) for n in names if n.isdigit()):
            try:
                target = os.readlink(f"{base}/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:[") and target.endswith("]"):
                ino = int(target[8:-1])
                if ino in wanted:
                    found.setdefault(ino, []).append((pid, fd))
    return found


def _holders_of(server: Server, files: Iterable[OpenFile]) -> dict[int, list[Holder]]:
    """Holders of each of ``files`` by ``id(file)``. Takes the lock itself only to
    read the served ends; ``/proc`` is read outside it."""
    targets = {id(f) for f in files}
    with server.clock.lock:
        ends = [(id(f), ino, pid) for f, ino, pid in server.open_ends() if id(f) in targets]
    pids = server.session_pids() | {pid for _, _, pid in ends if pid > 0}
    by_ino = scan_holders((ino for _, ino, _ in ends), pids)
    me = os.getpid()
    with server.clock.lock:  # the server's own copies, in flight to a client
        ours = set(server.handing_out)
    out: dict[int, list[Holder]] = {t: [] for t in targets}
    for fid, ino, _ in ends:
        out[fid] += [
            Holder(pid, fd) for pid, fd in by_ino.get(ino, []) if not (pid == me and fd in ours)
        ]
    return out


def op_files(server: Server, request: Request, peer_uid: int) -> Any:
    """``{}`` → ``[{device, pid, comm, uid, client_id, owner, control, holders, fdinfo}]``,
    one per open accel file, by device and client id; a non-admin peer sees only
    the files of its own uid."""
    _check_fields("files", request, [])
    return _wire(admin_of(server).files(peer_credentials(peer_uid)))


def bufinfo(server: Server, request: Request, peer_uid: int) -> Any:
    """``{}`` → the registry's ``bufinfo`` entries, each with ``holders``; admin
    peers only (``EACCES``)."""
    _check_fields("bufinfo", request, [])
    return _wire(admin_of(server).bufinfo(peer_credentials(peer_uid)))


def op_drivers(server: Server, request: Request, peer_uid: int) -> Any:
    """``{}`` → ``[{name, version, desc, control_node}]``, the registered drivers."""
    _check_fields("drivers", request, [])
    return _wire(admin_of(server).drivers())


#: The ops of this module by name (``Server.control`` dispatches to them).
CONTROL_OPS: dict[str, ControlOp] = {
    "sysfs": op_sysfs,
    "store_attr": op_store_attr,
    "reset": op_reset,
    "trigger": op_trigger,
    "files": op_files,
    "bufinfo": bufinfo,
    "drivers": op_drivers,
}
