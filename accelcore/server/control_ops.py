"""The control endpoint's sysfs, action and per-file ops.

``sysfs`` walks a device's sysfs node and its parents (``udevadm info -a``),
``store_attr`` writes one attribute, ``reset`` hard-resets a device, ``trigger``
synthesizes ``change`` uevents (``udevadm trigger``), ``files`` lists the open
accel files with fdinfo and holders, and ``bufinfo`` adds holders to the
dma-buf list. Each op is ``fn(server, request, peer_uid) -> result``: it checks
every request field first (``EINVAL`` naming the field), enters the engine only
under ``clock.lock``, and reports refusals as :class:`~accelcore.errors.AccelError`
with the errno a kernel would give (``EACCES`` for privilege, ``ENOENT`` for an
unknown device or attribute).

Holders are what the server knows: every open file it serves is a socket whose
client end has an inode, so the ``(pid, fd)`` holding it are the descriptors of
its client processes (the processes with a session, and the ones each file is
charged to) that link to that inode in ``/proc/<pid>/fd``. A holder in a process
that never talked to the server, or whose ``/proc`` the server may not read,
is not listed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..device import AccelDevice
from ..errors import AccelError, InvalidArgument, NoEntry, PermissionDenied
from ..file import AccelFile
from ..sysfs import SysfsNode
from ..vfs import OpenFile

if TYPE_CHECKING:
    from .server import Server

__all__ = ["CONTROL_OPS", "bufinfo", "scan_holders"]

log = logging.getLogger("accelcore.server")

#: Longest device name, attribute name or devpath accepted in a request.
MAX_NAME = 256
#: Longest value written to an attribute (a sysfs store gets at most a page).
MAX_VALUE = 4096
#: Longest reset reason (it travels in the uevent's ``REASON``).
MAX_REASON = 256

Request = Mapping[str, Any]
ControlOp = Callable[["Server", Request, int], Any]


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


def _device(server: Server, op: str, request: Request) -> AccelDevice:
    """The registered device the request's ``device`` field names (call under the lock)."""
    name = _str(op, request, "device", MAX_NAME)
    assert name is not None
    if not name:
        raise InvalidArgument(f"{op}: field 'device' is empty")
    for dev in server.machine.subsystem.registered_devices():
        if name in (dev.name, dev.node_path):
            if dev.sysfs is None:
                raise NoEntry(f"accel device {name!r} has no sysfs node")
            return dev
    raise NoEntry(f"no accel device {name!r}")


# -- sysfs ---------------------------------------------------------------------------
def _attribute(node: SysfsNode, name: str) -> dict[str, Any]:
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
    return {
        "name": name,
        "mode": f"{attr.mode:04o}",
        "readable": attr.readable,
        "writable": attr.writable,
        "value": value,
        "error": error,
    }


def _level(node: SysfsNode) -> dict[str, Any]:
    return {
        "devpath": node.devpath,
        "kernel": node.name,
        "subsystem": node.subsystem,
        "driver": node.driver,
        "attributes": [_attribute(node, n) for n in sorted(node.attributes)],
    }


def op_sysfs(server: Server, request: Request, peer_uid: int) -> Any:
    """``{"device"}`` → ``{"device", "levels": [{devpath, kernel, subsystem, driver,
    attributes: [{name, mode, readable, writable, value, error}]}]}``, the device first."""
    _check_fields("sysfs", request, ["device"])
    with server.clock.lock:
        dev = _device(server, "sysfs", request)
        assert dev.sysfs is not None
        return {"device": dev.name, "levels": [_level(n) for n in dev.sysfs.ancestry()]}


def _store_target(dev: AccelDevice, request: Request, name: str) -> SysfsNode:
    """The level ``store_attr`` writes: by ``level``, by ``devpath``, or the nearest
    level (device first) that has attribute ``name``."""
    assert dev.sysfs is not None
    levels = list(dev.sysfs.ancestry())
    if "level" in request:
        level = request["level"]
        if not isinstance(level, int) or isinstance(level, bool):
            raise InvalidArgument(f"store_attr: field 'level' must be an integer, not {level!r}")
        if not 0 <= level < len(levels):
            raise InvalidArgument(
                f"store_attr: level {level} is out of range (0..{len(levels) - 1} for {dev.name})"
            )
        return levels[level]
    devpath = _str("store_attr", request, "devpath", MAX_NAME, required=False)
    if devpath is not None:
        wanted = devpath.removeprefix("/sys").rstrip("/")
        for node in levels:
            if node.devpath == wanted:
                return node
        raise NoEntry(f"{devpath} is not {dev.name} or one of its parents")
    for node in levels:
        if name in node.attributes:
            return node
    raise NoEntry(f"no attribute {name!r} on {dev.name} or its parents")


def op_store_attr(server: Server, request: Request, peer_uid: int) -> Any:
    """``{"device", "name", "value", ["level" | "devpath"]}`` → ``{"device", "devpath",
    "name", "value"}``. Only root (uid 0) may write root-writable attributes."""
    _check_fields("store_attr", request, ["device", "name", "value", "level", "devpath"])
    if "level" in request and "devpath" in request:
        raise InvalidArgument("store_attr: give 'level' or 'devpath', not both")
    name = _str("store_attr", request, "name", MAX_NAME)
    value = _str("store_attr", request, "value", MAX_VALUE)
    assert name is not None and value is not None
    if not name:
        raise InvalidArgument("store_attr: field 'name' is empty")
    with server.clock.lock:
        dev = _device(server, "store_attr", request)
        node = _store_target(dev, request, name)
        node.write(name, value, privileged=peer_uid == 0)
        return {"device": dev.name, "devpath": node.devpath, "name": name, "value": value}


# -- actions -----------------------------------------------------------------------------
def op_reset(server: Server, request: Request, peer_uid: int) -> Any:
    """``{"device", ["reason"]}`` → ``{"device", "reason", "status", "reset_count"}``;
    root or the server's own user only (``EACCES``)."""
    _check_fields("reset", request, ["device", "reason"])
    reason = _str("reset", request, "reason", MAX_REASON, required=False)
    reason = "control" if reason is None else reason
    if peer_uid not in (0, os.getuid()):
        raise PermissionDenied(
            f"reset: uid {peer_uid} may not reset devices of a server of uid {os.getuid()}"
        )
    with server.clock.lock:
        dev = _device(server, "reset", request)
        dev.reset(reason)
        return {
            "device": dev.name,
            "reason": reason,
            "status": dev.status.name.lower(),
            "reset_count": dev.reset_count,
        }


def op_trigger(server: Server, request: Request, peer_uid: int) -> Any:
    """``{"device"}`` or ``{"all": true}`` → ``{"events": [{device, devpath, seqnum}]}``:
    one ``change`` uevent per device, as ``udevadm trigger`` makes."""
    _check_fields("trigger", request, ["device", "all"])
    every = request.get("all", False)
    if not isinstance(every, bool):
        raise InvalidArgument(f"trigger: field 'all' must be a boolean, not {every!r}")
    if every == ("device" in request):
        raise InvalidArgument("trigger: give 'device' or 'all': true (exactly one)")
    with server.clock.lock:
        sub = server.machine.subsystem
        devs = sub.registered_devices() if every else [_device(server, "trigger", request)]
        events = []
        for dev in devs:
            if dev.sysfs is None:
                continue
            ev = server.machine.sysfs.emit("change", dev.sysfs)
            events.append({"device": dev.name, "devpath": ev.devpath, "seqnum": ev.seqnum})
        return {"events": events}


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


def _holders_of(server: Server, files: Iterable[OpenFile]) -> dict[int, list[dict[str, int]]]:
    """Holders of each of ``files`` by ``id(file)``. Takes the lock itself only to
    read the served ends; ``/proc`` is read outside it."""
    targets = {id(f) for f in files}
    with server.clock.lock:
        ends = [(id(f), ino, pid) for f, ino, pid in server.open_ends() if id(f) in targets]
    pids = server.session_pids() | {pid for _, _, pid in ends if pid > 0}
    by_ino = scan_holders((ino for _, ino, _ in ends), pids)
    out: dict[int, list[dict[str, int]]] = {t: [] for t in targets}
    for fid, ino, _ in ends:
        out[fid] += [{"pid": pid, "fd": fd} for pid, fd in by_ino.get(ino, [])]
    for holders in out.values():
        holders.sort(key=lambda h: (h["pid"], h["fd"]))
    return out


def op_files(server: Server, request: Request, peer_uid: int) -> Any:
    """``{}`` → ``[{device, pid, comm, uid, client_id, owner, control, fdinfo, holders}]``,
    one per open accel file, by device and client id."""
    _check_fields("files", request, [])
    files: list[AccelFile] = []
    rows: list[dict[str, Any]] = []
    with server.clock.lock:
        for dev in server.machine.subsystem.registered_devices():
            for f in sorted(dev.files, key=lambda f: f.client_id):
                files.append(f)
                rows.append(
                    {
                        "device": dev.name,
                        "pid": f.pid,
                        "comm": f.comm,
                        "uid": f.uid,
                        "client_id": f.client_id,
                        "owner": f.is_owner,
                        "control": f.control,
                        "fdinfo": f.fdinfo(),
                    }
                )
    holders = _holders_of(server, files)
    for f, row in zip(files, rows, strict=True):
        row["holders"] = holders[id(f)]
    return rows


def bufinfo(server: Server, request: Request, peer_uid: int) -> Any:
    """``{}`` → the registry's ``bufinfo`` entries, each with ``holders``."""
    _check_fields("bufinfo", request, [])
    with server.clock.lock:
        registry = server.machine.subsystem.dmabufs
        entries = registry.bufinfo()
        bufs = [registry.live[e["ino"]] for e in entries]
    holders = _holders_of(server, bufs)
    for buf, entry in zip(bufs, entries, strict=True):
        entry["holders"] = holders[id(buf)]
    return entries


#: The ops of this module by name (``Server.control`` dispatches to them).
CONTROL_OPS: dict[str, ControlOp] = {
    "sysfs": op_sysfs,
    "store_attr": op_store_attr,
    "reset": op_reset,
    "trigger": op_trigger,
    "files": op_files,
    "bufinfo": bufinfo,
}
