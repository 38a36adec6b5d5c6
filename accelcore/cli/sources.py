"""Where accelctl's data comes from: the seam between the commands and a machine.

A :class:`Source` yields the data model (:mod:`accelcore.cli.model`,
:mod:`accelcore.cli.records`); commands never touch a machine directly. Two
sources live here:

* :class:`EmbeddedSource` — an in-process :class:`~accelcore.machine.Machine`
  (the default machine, or one from a TOML description). Device data comes
  through the common INFO ioctl, asked by a root :class:`~accelcore.Process`.
* :class:`HostSource` — the real host, read-only, through pyudev: ``accel`` and
  ``drm`` nodes and PCI processing accelerators (class ``0x12``). It only needs
  libudev, so it also reads a umockdev testbed (``umockdev-run --device FILE``).

The third, :class:`~accelcore.cli.server_source.ServerSource`, reads a running
devfs server through its client and control endpoint.
"""

from __future__ import annotations

import dataclasses
import os
import queue
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from ..admin import ROOT, Admin
from ..clock import VirtualClock
from ..device import AccelDevice
from ..errors import AccelError
from ..machine import DEFAULT_MACHINE, Machine, installed_drivers, load_driver
from ..sysfs import SysfsNode, SysfsTree, Uevent
from ..userspace import Process
from .exitcodes import ExitCode
from .model import DeviceInfo, DeviceSummary, read_device_info, summary_from_info
from .records import (
    AttrLevel,
    AttrValue,
    BufferRecord,
    FileRecord,
    PciFunctionRecord,
    Topology,
    TopologyRoot,
    UeventRecord,
)

__all__ = [
    "EmbeddedSource",
    "EventStream",
    "HostSource",
    "Source",
    "SourceError",
    "default_machine",
]

#: PCI base class of processing accelerators (``PCI_BASE_CLASS_PROCESSING_ACCEL``).
PCI_CLASS_ACCEL = 0x12


class SourceError(Exception):
    """A runtime failure a source reports in one line, with accelctl's exit code
    for it (:class:`~accelcore.cli.exitcodes.ExitCode`)."""

    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


class EventStream(Protocol):
    """Uevents as they happen."""

    def get(self, timeout: float | None) -> UeventRecord | None:
        """The next event, or ``None`` after ``timeout`` seconds without one.

        Raises:
            SourceError: the machine went away (exit code ``NO_SERVER``).
        """
        ...

    def close(self) -> None: ...


class Source(Protocol):
    """What accelctl's commands read and change. ``kind`` is ``"sim"``, ``"server"``
    or ``"host"``."""

    kind: str

    def devices(self) -> list[DeviceSummary]: ...

    def info(self, name: str) -> DeviceInfo: ...

    def attrs(self, name: str) -> list[AttrLevel]: ...

    def store_attr(self, name: str, attribute: str, value: str) -> str:
        """Write ``attribute`` on the device or its nearest parent that has it;
        returns the devpath written."""
        ...

    def files(self) -> list[FileRecord]: ...

    def dmabufs(self) -> list[BufferRecord]: ...

    def topology(self) -> Topology: ...

    def reset(self, name: str, reason: str) -> None: ...

    def drivers(self) -> list[dict[str, Any]]:
        """``{name, version, desc, control_node (bool)}`` per loaded driver."""
        ...

    def events(self) -> EventStream: ...

    def trigger(self) -> int:
        """Synthesize a ``change`` uevent per accel device; returns how many."""
        ...

    def now_ns(self) -> int: ...

    def tick(self, ns: int) -> None:
        """Let ``ns`` of device time pass (virtual clocks; real clocks run alone)."""
        ...

    def close(self) -> None: ...


# -- the embedded simulator -------------------------------------------------------
def default_machine() -> Machine:
    """The machine accelctl shows without ``--config``.

    :data:`~accelcore.machine.DEFAULT_MACHINE` (two habana_like, two kfd_like
    devices) when those drivers load; until then two virtual vaccel devices.
    """
    wanted = ("habana_like", "kfd_like")
    if all(n in installed_drivers() for n in wanted):
        try:
            for n in wanted:
                load_driver(n)
        except AccelError:
            pass
        else:
            return Machine.from_description(DEFAULT_MACHINE)
    return vaccel_machine(2)


def vaccel_machine(count: int) -> Machine:
    """A machine with ``count`` virtual vaccel devices (no PCI parent)."""
    from ..testing.vaccel import VAccelDriver

    machine = Machine()
    driver = machine.add_driver(VAccelDriver())
    for _ in range(count):
        machine.subsystem.create_device(driver)
    return machine


class _QueueStream:
    """An :class:`EventStream` fed by a :class:`SysfsTree` subscription."""

    def __init__(self, tree: SysfsTree) -> None:
        self._queue: queue.Queue[Uevent] = queue.Queue()
        self._unsubscribe = tree.subscribe(self._queue.put)

    def get(self, timeout: float | None) -> UeventRecord | None:
        try:
            ev = self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        return UeventRecord(ev.action, ev.devpath, ev.subsystem, ev.seqnum, dict(ev.env))

    def close(self) -> None:
        self._unsubscribe()


def _read_or_none(node: SysfsNode, name: str) -> str | None:
    if name not in node.attributes:
        return None
    try:
        return node.read(name).strip()
    except AccelError:
        return None


class EmbeddedSource:
    """A source over an in-process :class:`Machine`.

    Args:
        machine: The machine; the source shuts it down on :meth:`close`.
    """

    kind = "sim"

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.subsystem = machine.subsystem
        self.admin = Admin(machine.subsystem)
        #: The embedded machine lives in accelctl's process: accelctl is its root.
        self.creds = ROOT

    @classmethod
    def from_config(cls, path: Path | str | None) -> EmbeddedSource:
        """The default machine, or the one a TOML description file describes.

        Raises:
            SourceError: the file is missing or does not describe a machine.
        """
        if path is None:
            return cls(default_machine())
        try:
            return cls(Machine.from_file(path))
        except FileNotFoundError as exc:
            raise SourceError(f"machine description {path}: no such file") from exc
        except AccelError as exc:
            msg = exc.strerror or str(exc)
            prefix = (
                "machine description "
                if msg.startswith(str(path))
                else f"machine description {path}: "
            )
            raise SourceError(prefix + msg) from exc

    def _device(self, name: str) -> AccelDevice:
        try:
            return self.subsystem.device(name)
        except AccelError as exc:
            raise SourceError(f"no accel device {name!r}", ExitCode.NOT_FOUND) from exc

    # -- INFO-based views -------------------------------------------------------------
    def _info(self, dev: AccelDevice, *, full: bool) -> DeviceInfo:
        proc = Process(self.subsystem, comm="accelctl")
        paths = [p for p in (dev.control_path, dev.node_path) if p is not None]
        try:
            info = read_device_info(proc, dev.name, paths, source=self.kind, full=full)
        finally:
            proc.exit()
        with self.machine.clock.lock:
            uuid = _read_or_none(dev.sysfs, "unique_id") if dev.sysfs is not None else None
        return dataclasses.replace(info, uuid=uuid)

    def devices(self) -> list[DeviceSummary]:
        return [
            summary_from_info(self._info(d, full=False))
            for d in self.subsystem.registered_devices()
        ]

    def info(self, name: str) -> DeviceInfo:
        return self._info(self._device(name), full=True)

    # -- sysfs -----------------------------------------------------------------------
    def attrs(self, name: str) -> list[AttrLevel]:
        self._device(name)
        return self.admin.attributes(name, self.creds)

    def store_attr(self, name: str, attribute: str, value: str) -> str:
        self._device(name)
        return self.admin.store_attribute(name, attribute, value, self.creds).devpath

    def topology(self) -> Topology:
        tree = self.machine.sysfs
        roots: dict[str, list[PciFunctionRecord]] = {}
        by_path: dict[str, PciFunctionRecord] = {}
        virtual: list[str] = []
        with self.machine.clock.lock:
            for node in tree.nodes():
                if node.parent is None and node.subsystem is None:
                    roots.setdefault(node.name, [])
                elif node.subsystem == "pci":
                    rec = PciFunctionRecord(
                        node.name,
                        _hex(_read_or_none(node, "vendor")),
                        _hex(_read_or_none(node, "device")),
                        _hex(_read_or_none(node, "class")),
                        node.driver,
                    )
                    top = next(iter(reversed(list(node.ancestry()))))
                    roots.setdefault(top.name, []).append(rec)
                    by_path[node.devpath] = rec
                elif node.subsystem == "accel" and node.devtype == "accel_minor":
                    parent = by_path.get(node.parent.devpath) if node.parent else None
                    if parent is None:
                        virtual.append(node.name)
                    else:
                        parent.accel.append(node.name)
        return Topology([TopologyRoot(k, v) for k, v in roots.items()], virtual)

    def events(self) -> EventStream:
        return _QueueStream(self.machine.sysfs)

    def trigger(self) -> int:
        return len(self.admin.trigger(self.creds))

    # -- per-file and per-buffer views -------------------------------------------------
    def files(self) -> list[FileRecord]:
        return self.admin.files(self.creds)

    def dmabufs(self) -> list[BufferRecord]:
        return self.admin.bufinfo(self.creds)

    # -- actions -----------------------------------------------------------------------
    def reset(self, name: str, reason: str) -> None:
        self._device(name)
        self.admin.reset(name, reason, self.creds)

    def drivers(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(d) for d in self.admin.drivers()]

    def now_ns(self) -> int:
        return self.machine.clock.now()

    def tick(self, ns: int) -> None:
        if isinstance(self.machine.clock, VirtualClock) and ns > 0:
            self.machine.clock.advance(ns)

    def close(self) -> None:
        self.machine.shutdown()


# -- the real host ----------------------------------------------------------------------
def _attr_str(dev: Any, name: str) -> str | None:
    try:
        raw = dev.attributes.get(name)
    except (OSError, KeyError):
        return None
    if raw is None:
        return None
    return bytes(raw).decode(errors="replace").strip()


def _hex(text: str | None) -> int | None:
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


class HostSource:
    """The real host through pyudev, read-only: listing and attribute walks.

    Args:
        context: A ``pyudev.Context`` (made on first use when omitted; tests pass
            a fake).
    """

    kind = "host"

    def __init__(self, context: Any = None) -> None:
        self._context = context

    @property
    def context(self) -> Any:
        if self._context is None:
            try:
                import pyudev
            except ImportError as exc:
                raise SourceError(
                    "reading the host needs pyudev (pip install 'accelcore[host]')"
                ) from exc
            self._context = pyudev.Context()
        return self._context

    def _summary(self, dev: Any, pci: Any) -> DeviceSummary:
        number = dev.device_number if dev.device_node is not None else None
        return DeviceSummary(
            name=str(dev.sys_name),
            minor=os.minor(number) if number else None,
            node=dev.device_node,
            driver=(pci.driver if pci is not None else dev.driver),
            pci_address=str(pci.sys_name) if pci is not None else None,
            vendor=_hex(_attr_str(pci, "vendor")) if pci is not None else None,
            device=_hex(_attr_str(pci, "device")) if pci is not None else None,
            status="unknown",
            owner_pid=None,
            open_count=None,
            source=self.kind,
        )

    def devices(self) -> list[DeviceSummary]:
        ctx = self.context
        out: list[DeviceSummary] = []
        covered: set[str] = set()
        for subsystem in ("accel", "drm"):
            for dev in ctx.list_devices(subsystem=subsystem):
                if dev.device_node is None:
                    continue  # drm connectors and the like
                if getattr(dev, "device_type", None) == "accel_control":
                    continue  # another node of its compute device, not a device of its own
                pci = dev.find_parent("pci")
                if pci is not None:
                    covered.add(str(pci.sys_name))
                out.append(self._summary(dev, pci))
        for fn in ctx.list_devices(subsystem="pci"):
            cls = _hex(_attr_str(fn, "class"))
            if cls is not None and cls >> 16 == PCI_CLASS_ACCEL and str(fn.sys_name) not in covered:
                out.append(self._summary(fn, fn))
        return out

    def _unsupported(self, what: str) -> SourceError:
        return SourceError(
            f"{what} is not available from the host (read-only listing); use the simulator",
            ExitCode.NOT_SUPPORTED,
        )

    def _find(self, name: str) -> Any:
        for subsystem in ("accel", "drm", "pci"):
            for dev in self.context.list_devices(subsystem=subsystem, sys_name=name):
                return dev
        raise SourceError(f"no accel device {name!r}", ExitCode.NOT_FOUND)

    def info(self, name: str) -> DeviceInfo:
        raise self._unsupported("INFO")

    def attrs(self, name: str) -> list[AttrLevel]:
        dev: Any = self._find(name)
        levels = []
        while dev is not None:
            names: Iterable[str] = sorted(getattr(dev.attributes, "available_attributes", ()))
            values = [AttrValue(n, _attr_str(dev, n), "", False) for n in names]
            levels.append(
                AttrLevel(
                    str(dev.device_path), str(dev.sys_name), dev.subsystem, dev.driver, values
                )
            )
            dev = dev.parent
        return levels

    def store_attr(self, name: str, attribute: str, value: str) -> str:
        raise self._unsupported("writing attributes")

    def files(self) -> list[FileRecord]:
        raise self._unsupported("the per-file list")

    def dmabufs(self) -> list[BufferRecord]:
        raise self._unsupported("the dma-buf list")

    def topology(self) -> Topology:
        raise self._unsupported("the topology")

    def reset(self, name: str, reason: str) -> None:
        raise self._unsupported("reset")

    def drivers(self) -> list[dict[str, Any]]:
        return []

    def events(self) -> EventStream:
        raise self._unsupported("the uevent monitor")

    def trigger(self) -> int:
        raise self._unsupported("trigger")

    def now_ns(self) -> int:
        import time

        return time.monotonic_ns()

    def tick(self, ns: int) -> None:
        return None

    def close(self) -> None:
        return None
