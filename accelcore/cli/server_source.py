"""A :class:`~accelcore.cli.sources.Source` over a running devfs server.

INFO goes through the server's client exactly as a workload would see it:
:func:`~accelcore.cli.model.read_device_info` with a
:class:`~accelcore.server.client.ClientProcess` as the
:class:`~accelcore.cli.model.UserProgram`. Everything else is a control-endpoint
request (see :mod:`accelcore.server.control_ops`): ``devices``, ``bufinfo``
and ``files`` (with holders and fdinfo), the ``sysfs`` attribute walk,
``store_attr``, ``reset``, ``trigger``, and the ``subscribe`` uevent stream.

A server that is not there is a one-line :class:`~accelcore.cli.sources.SourceError`;
a request the server refuses raises the :class:`~accelcore.errors.AccelError` of
the errno it gave (``EACCES`` for a non-root store or reset, ``ENOENT`` for an
unknown attribute, ``EINVAL`` from a driver's store), with its message.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import select
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import AccelError
from ..server import protocol as p
from ..server.client import ClientProcess, connect
from ..server.daemon import ServerUnavailable, control_request, server_status
from ..server.server import CONTROL_NAME, default_runtime_dir
from ..server.wire import close_all, recv_record, send_record
from .exitcodes import ExitCode
from .model import DeviceInfo, DeviceSummary, read_device_info, summary_from_info
from .records import (
    AttrLevel,
    AttrValue,
    BufferRecord,
    FenceRecord,
    FileRecord,
    Holder,
    PciFunctionRecord,
    Topology,
    TopologyRoot,
    UeventRecord,
)
from .sources import EventStream, SourceError

__all__ = ["ServerSource", "running_server"]


def running_server(runtime_dir: Path | str | None) -> dict[str, Any] | None:
    """The status of the devfs server at ``runtime_dir`` (default: the server's
    default directory), or ``None`` when none answers."""
    return server_status(runtime_dir)


class _ServerStream:
    """An :class:`EventStream` on a ``subscribe`` control connection."""

    def __init__(self, runtime_dir: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self._sock.connect(str(runtime_dir / CONTROL_NAME))
            send_record(self._sock, p.encode(p.Control({"op": "subscribe"}), 1))
            self._sock.settimeout(10.0)
            reply = self._next()
        except OSError as exc:
            self._sock.close()
            raise SourceError(
                f"devfs server at {runtime_dir}: {exc.strerror or exc}", ExitCode.NO_SERVER
            ) from exc
        if not isinstance(reply, p.ControlReply) or not reply.reply.get("ok"):
            self._sock.close()
            raise SourceError(f"devfs server at {runtime_dir} refused the uevent subscription")
        self._runtime_dir = runtime_dir
        self._poller = select.poll()  # not select(): descriptors may be above FD_SETSIZE
        self._poller.register(self._sock, select.POLLIN)
        self._closed = False

    def _next(self) -> p.Message | None:
        data, fds = recv_record(self._sock)
        close_all(fds)
        return p.decode(data).message if data else None

    def get(self, timeout: float | None) -> UeventRecord | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._poller.poll(None if left is None else int(left * 1000)):
                return None
            try:
                msg = self._next()
            except OSError:
                msg = None
            if msg is None:  # the server went away: the stream ends, loudly
                self.close()
                raise SourceError(
                    f"the devfs server at {self._runtime_dir} went away", ExitCode.NO_SERVER
                )
            if isinstance(msg, p.Uevent):
                ev = msg.event
                return UeventRecord(
                    str(ev["action"]),
                    str(ev["devpath"]),
                    str(ev["subsystem"]),
                    int(ev["seqnum"]),
                    {str(k): str(v) for k, v in dict(ev["env"]).items()},
                )
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()


def _holders(raw: Any) -> list[Holder]:
    return [Holder(int(h["pid"]), int(h["fd"])) for h in raw]


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _pci_root(bus_id: str) -> str:
    """``0000:00:10.0`` → ``pci0000:00`` (the host bridge of the function's bus)."""
    return "pci" + bus_id.rsplit(":", 1)[0]


class ServerSource:
    """The devices of the devfs server at ``runtime_dir``.

    Args:
        runtime_dir: The server's runtime directory (default: the server's default).
    """

    kind = "server"

    def __init__(self, runtime_dir: Path | str | None = None) -> None:
        self.runtime_dir = Path(runtime_dir) if runtime_dir is not None else default_runtime_dir()
        self._proc: ClientProcess | None = None

    # -- plumbing ------------------------------------------------------------------
    def control(self, op: str, **args: Any) -> Any:
        """One control request with fields ``args``.

        Raises:
            SourceError: no server answers (or it broke the protocol).
            AccelError: the server refused the request (its errno and message).
        """
        try:
            return control_request(op, self.runtime_dir, **args)
        except AccelError as exc:
            if not isinstance(exc, ServerUnavailable):
                raise
            raise self._source_error(exc) from exc
        except (OSError, p.ProtocolError) as exc:
            raise self._source_error(exc) from exc

    def _source_error(self, exc: Exception) -> SourceError:
        msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if "devfs server" not in msg:
            msg = f"devfs server at {self.runtime_dir}: {msg}"
        return SourceError(msg, ExitCode.NO_SERVER)

    @property
    def proc(self) -> ClientProcess:
        """This process as a task of the server (connected on first use)."""
        if self._proc is None:
            try:
                self._proc = connect(self.runtime_dir)
            except (AccelError, OSError) as exc:
                raise self._source_error(exc) from exc
        return self._proc

    def _raw_devices(self) -> list[dict[str, Any]]:
        devices: list[dict[str, Any]] = self.control("devices")
        return devices

    def _raw(self, name: str) -> dict[str, Any]:
        for d in self._raw_devices():
            if d["name"] == name:
                return d
        raise SourceError(f"no accel device {name!r}", ExitCode.NOT_FOUND)

    def _info(self, raw: dict[str, Any], *, full: bool) -> DeviceInfo:
        paths = [str(x) for x in (raw.get("control_node"), raw["node"]) if x]
        try:
            info = read_device_info(self.proc, str(raw["name"]), paths, source=self.kind, full=full)
        except OSError as exc:
            raise self._gone(exc) from exc
        return dataclasses.replace(info, uuid=self._unique_id(str(raw["name"])))

    def _gone(self, exc: OSError) -> OSError | SourceError:
        """``exc`` from a system call through the server: a ``NO_SERVER``
        :class:`SourceError` when the server itself went away (the connection
        broke, or ``ENODEV`` with no server answering any more), else ``exc``."""
        broken = isinstance(exc, ConnectionError) or exc.errno == errno.ENODEV
        if broken and server_status(self.runtime_dir) is None:
            return SourceError(
                f"the devfs server at {self.runtime_dir} went away", ExitCode.NO_SERVER
            )
        return exc

    def _unique_id(self, name: str) -> str | None:
        """The device's sysfs ``unique_id`` (``None`` when the device has none)."""
        levels = self.control("sysfs", device=name)["levels"]
        for attr in levels[0]["attributes"] if levels else []:
            if attr["name"] == "unique_id":
                return _opt_str(attr["value"])
        return None

    # -- INFO-based views ----------------------------------------------------------
    def devices(self) -> list[DeviceSummary]:
        return [summary_from_info(self._info(d, full=False)) for d in self._raw_devices()]

    def info(self, name: str) -> DeviceInfo:
        return self._info(self._raw(name), full=True)

    def files(self) -> list[FileRecord]:
        """Open accel files with fdinfo and the ``(pid, fd)`` holding each (``files``)."""
        return [
            FileRecord(
                str(f["device"]),
                int(f["pid"]),
                str(f["comm"]),
                int(f["uid"]),
                int(f["client_id"]),
                bool(f["owner"]),
                bool(f["control"]),
                _holders(f["holders"]),
                {str(k): str(v) for k, v in dict(f["fdinfo"]).items()},
            )
            for f in self.control("files")
        ]

    def topology(self) -> Topology:
        roots: dict[str, list[PciFunctionRecord]] = {}
        virtual: list[str] = []
        for raw in self._raw_devices():
            bus_id = str(raw["bus_id"])
            if bus_id == "virtual":
                virtual.append(str(raw["name"]))
                continue
            ident = self._info(raw, full=False).identity
            roots.setdefault(_pci_root(bus_id), []).append(
                PciFunctionRecord(
                    bus_id,
                    ident.vendor,
                    ident.device,
                    ident.class_code,
                    str(raw["driver"]),
                    [str(raw["name"])],
                )
            )
        return Topology([TopologyRoot(k, v) for k, v in roots.items()], virtual)

    def dmabufs(self) -> list[BufferRecord]:
        return [
            BufferRecord(
                ino=int(rec["ino"]),
                size=int(rec["size"]),
                flags=int(rec["flags"]),
                count=int(rec["count"]),
                exp_name=str(rec["exp_name"]),
                exporter=str(rec["exporter"]),
                name=str(rec["name"]),
                revoked=bool(rec["revoked"]),
                pins=sorted(str(x) for x in rec["pins"]),
                attachments=[str(x) for x in rec["attachments"]],
                fences=[FenceRecord(**f) for f in rec["fences"]],
                holders=_holders(rec.get("holders", [])),
            )
            for rec in self.control("bufinfo")
        ]

    def drivers(self) -> list[dict[str, Any]]:
        """The server's drivers (the ``drivers`` control op)."""
        return [
            {
                "name": str(d["name"]),
                "version": str(d["version"]),
                "desc": str(d["desc"]),
                "control_node": bool(d["control_node"]),
            }
            for d in self.control("drivers")
        ]

    def events(self) -> EventStream:
        return _ServerStream(self.runtime_dir)

    # -- sysfs and actions ------------------------------------------------------------
    def attrs(self, name: str) -> list[AttrLevel]:
        """The ``sysfs`` walk: the device, then its parents."""
        result = self.control("sysfs", device=name)
        return [
            AttrLevel(
                str(lvl["devpath"]),
                str(lvl["kernel"]),
                _opt_str(lvl["subsystem"]),
                _opt_str(lvl["driver"]),
                [
                    AttrValue(
                        str(a["name"]),
                        _opt_str(a["value"]),
                        str(a["mode"]),
                        bool(a["writable"]),
                        readable=bool(a.get("readable", True)),
                        error=_opt_str(a.get("error")),
                    )
                    for a in lvl["attributes"]
                ],
            )
            for lvl in result["levels"]
        ]

    def store_attr(self, name: str, attribute: str, value: str) -> str:
        """``store_attr`` on the nearest level that has ``attribute``; its devpath."""
        result = self.control("store_attr", device=name, name=attribute, value=value)
        return str(result["devpath"])

    def reset(self, name: str, reason: str) -> None:
        self.control("reset", device=name, reason=reason)

    def trigger(self) -> int:
        """A ``change`` uevent per device (``trigger`` with ``all``); how many."""
        return len(self.control("trigger", all=True)["events"])

    # -- time -------------------------------------------------------------------------
    def now_ns(self) -> int:
        return time.monotonic_ns()  # the server runs on a real-time clock

    def tick(self, ns: int) -> None:
        return None

    def close(self) -> None:
        if self._proc is not None and self._proc.pid == os.getpid():
            self._proc.exit()
        self._proc = None
