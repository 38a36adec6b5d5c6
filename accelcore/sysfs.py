"""sysfs-like attributes: nodes, attribute groups, the device tree and uevents.

A :class:`SysfsNode` is a kobject: a directory under ``/sys/devices`` with
attributes (``show``/``store`` callables with a mode), links, an optional device
number, and a parent. The :class:`SysfsTree` holds them, adds the class and bus
views (``/sys/class/accel/accel0`` → ``../../devices/…``), answers reads and
writes by path, and emits :class:`Uevent`\\ s to subscribers on add, remove and
change. It is pure data: materializing it as files, or as a umockdev
description, is done by :mod:`accelcore.sysfs_export`.
"""

from __future__ import annotations

import itertools
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from .errors import AccelError, DeviceIOError, InvalidArgument, NoEntry, PermissionDenied

__all__ = [
    "Attribute",
    "AttributeGroup",
    "SysfsNode",
    "SysfsTree",
    "Uevent",
    "UeventListener",
]

ShowFn = Callable[[], str]
StoreFn = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Attribute:
    """One sysfs attribute file.

    Args:
        name: The file name.
        show: Returns the file's text (without a trailing newline; one is added).
        store: Parses and applies a written value; raises an errno error to refuse it.
        mode: Permission bits; ``0o444`` read-only, ``0o644`` root-writable,
            ``0o200`` write-only.
    """

    name: str
    show: ShowFn | None = None
    store: StoreFn | None = None
    mode: int = 0o444

    @classmethod
    def ro(cls, name: str, show: ShowFn) -> Attribute:
        """A read-only attribute (mode 0444)."""
        return cls(name, show=show, mode=0o444)

    @classmethod
    def rw(cls, name: str, show: ShowFn, store: StoreFn) -> Attribute:
        """A root-writable attribute (mode 0644)."""
        return cls(name, show=show, store=store, mode=0o644)

    @classmethod
    def wo(cls, name: str, store: StoreFn) -> Attribute:
        """A root-only write attribute (mode 0200), like habanalabs' ``hard_reset``."""
        return cls(name, store=store, mode=0o200)

    @property
    def readable(self) -> bool:
        return self.show is not None and bool(self.mode & 0o444)

    @property
    def writable(self) -> bool:
        return self.store is not None and bool(self.mode & 0o222)


@dataclass(frozen=True, slots=True)
class AttributeGroup:
    """A set of attributes, optionally in a subdirectory (``name``)."""

    attributes: tuple[Attribute, ...]
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Uevent:
    """A kernel uevent: ``ACTION`` on ``DEVPATH`` with its environment."""

    action: str
    devpath: str
    subsystem: str
    env: Mapping[str, str]
    seqnum: int

    def lines(self) -> list[str]:
        """The event as ``KEY=value`` lines, as ``udevadm monitor --property`` shows."""
        return [f"{k}={v}" for k, v in self.env.items()]


UeventListener = Callable[[Uevent], None]


class SysfsNode:
    """A device directory in the tree.

    Args:
        name: The directory name (``0000:00:10.0``, ``accel0``).
        parent: The parent node, or ``None`` for a top-level device.
        subsystem: The class or bus name (``accel``, ``pci``).
        kind: ``"class"`` or ``"bus"``: which view lists this node.
        devnum: ``(major, minor)`` for nodes with a ``/dev`` entry.
        devname: The node below ``/dev`` (``accel/accel0``).
        devtype: ``DEVTYPE`` (``accel_minor``).
        subdir: An intermediate directory between parent and node, as the kernel
            puts class devices under ``<parent>/<class>/`` (``…/accel/accel0``).
        env: Extra uevent properties (``PCI_ID``, ``DRIVER``…).
    """

    def __init__(
        self,
        name: str,
        *,
        parent: SysfsNode | None = None,
        subsystem: str | None = None,
        kind: str = "class",
        devnum: tuple[int, int] | None = None,
        devname: str | None = None,
        devtype: str | None = None,
        subdir: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not name or "/" in name:
            raise InvalidArgument(f"sysfs node name {name!r} must be non-empty with no '/'")
        self.name = name
        self.parent = parent
        self.subsystem = subsystem
        self.kind = kind
        self.devnum = devnum
        self.devname = devname
        self.devtype = devtype
        self.subdir = subdir
        self.env: dict[str, str] = dict(env or {})
        self.driver: str | None = None
        #: Told about oopses in show/store (the subsystem records them).
        self.oops_handler: Callable[[str, Exception], object] | None = None
        self._attrs: dict[str, Attribute] = {}
        self.links: dict[str, SysfsNode] = {}
        if devnum is not None:
            major, minor = devnum
            self.add_attribute(Attribute.ro("dev", lambda: f"{major}:{minor}"))

    @property
    def devpath(self) -> str:
        """The path below ``/sys`` (``/devices/pci0000:00/0000:00:10.0/accel/accel0``)."""
        base = self.parent.devpath if self.parent is not None else "/devices"
        mid = f"/{self.subdir}" if self.subdir else ""
        return f"{base}{mid}/{self.name}"

    @property
    def syspath(self) -> str:
        """The absolute path under ``/sys``."""
        return "/sys" + self.devpath

    def add_attribute(self, attr: Attribute) -> None:
        """Add one attribute; its name must be new on this node."""
        if attr.name in self._attrs:
            raise InvalidArgument(f"attribute {attr.name!r} already exists on {self.devpath}")
        self._attrs[attr.name] = attr

    def add_group(self, group: AttributeGroup) -> None:
        """Add every attribute of ``group`` (under ``group.name/`` when it has one)."""
        for attr in group.attributes:
            name = f"{group.name}/{attr.name}" if group.name else attr.name
            self.add_attribute(Attribute(name, attr.show, attr.store, attr.mode))

    def remove_attribute(self, name: str) -> None:
        """Remove an attribute; ``ENOENT`` if there is none of that name."""
        if self._attrs.pop(name, None) is None:
            raise NoEntry(f"no attribute {name!r} on {self.devpath}")

    @property
    def attributes(self) -> Mapping[str, Attribute]:
        """The node's attributes by name (read-only view)."""
        return self._attrs

    def read(self, name: str) -> str:
        """The text of attribute ``name``, newline-terminated as sysfs files are.

        Raises:
            NoEntry: no such attribute.
            PermissionDenied: the attribute is write-only.
        """
        attr = self._attrs.get(name)
        if attr is None:
            raise NoEntry(f"no attribute {name!r} on {self.devpath}")
        if not attr.readable or attr.show is None:
            raise PermissionDenied(f"attribute {name!r} on {self.devpath} is not readable")
        try:
            return attr.show() + "\n"
        except AccelError:
            raise
        except Exception as exc:
            raise self._oops(f"show of {name}", exc) from exc

    def write(self, name: str, value: str, *, privileged: bool = True) -> None:
        """Store ``value`` into attribute ``name``.

        Args:
            name: The attribute.
            value: The text written (a trailing newline is stripped).
            privileged: Whether the writer is root; others may write only
                world-writable attributes.

        Raises:
            NoEntry: no such attribute.
            PermissionDenied: read-only, or not writable by this writer.
            InvalidArgument: the driver refused the value.
        """
        attr = self._attrs.get(name)
        if attr is None:
            raise NoEntry(f"no attribute {name!r} on {self.devpath}")
        if not attr.writable or attr.store is None:
            raise PermissionDenied(f"attribute {name!r} on {self.devpath} is read-only")
        if not privileged and not attr.mode & stat.S_IWOTH:
            raise PermissionDenied(f"attribute {name!r} on {self.devpath} is writable by root only")
        try:
            attr.store(value.rstrip("\n"))
        except AccelError:
            raise
        except Exception as exc:
            raise self._oops(f"store of {name}", exc) from exc

    def _oops(self, where: str, exc: Exception) -> AccelError:
        """A driver's show or store raised a non-errno exception: an oops, ``EIO``."""
        if self.oops_handler is not None:
            self.oops_handler(f"{where} on {self.devpath}", exc)
        return DeviceIOError(f"oops in {where} on {self.devpath}: {type(exc).__name__}: {exc}")

    def uevent_env(self) -> dict[str, str]:
        """The properties a uevent for this node carries (``DEVPATH``, ``MAJOR``…)."""
        env = {"DEVPATH": self.devpath}
        if self.subsystem:
            env["SUBSYSTEM"] = self.subsystem
        if self.devname:
            env["DEVNAME"] = "/dev/" + self.devname
        if self.devnum is not None:
            env["MAJOR"], env["MINOR"] = str(self.devnum[0]), str(self.devnum[1])
        if self.devtype:
            env["DEVTYPE"] = self.devtype
        if self.driver:
            env["DRIVER"] = self.driver
        env.update(self.env)
        return env

    def ancestry(self) -> Iterator[SysfsNode]:
        """This node, then its parent, up to the top (``udevadm info -a`` order)."""
        node: SysfsNode | None = self
        while node is not None:
            yield node
            node = node.parent

    def __repr__(self) -> str:
        return f"SysfsNode({self.devpath!r})"


@dataclass
class SysfsTree:
    """All nodes, their class and bus views, and the uevent stream."""

    _nodes: dict[str, SysfsNode] = field(default_factory=dict)
    _listeners: list[UeventListener] = field(default_factory=list)
    _seqnum: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, node: SysfsNode, *, announce: bool = True) -> None:
        """Insert ``node`` (its parent must be in the tree) and emit ``add``."""
        if node.devpath in self._nodes:
            raise InvalidArgument(f"sysfs node {node.devpath} already exists")
        if node.parent is not None and node.parent.devpath not in self._nodes:
            raise NoEntry(f"parent {node.parent.devpath} of {node.name} is not in the tree")
        self._nodes[node.devpath] = node
        if announce:
            self.emit("add", node)

    def remove(self, node: SysfsNode) -> None:
        """Remove ``node`` and its children (children first), emitting ``remove``."""
        for child in [n for n in self._nodes.values() if n.parent is node]:
            self.remove(child)
        if self._nodes.pop(node.devpath, None) is not None:
            self.emit("remove", node)

    def __contains__(self, node: object) -> bool:
        return isinstance(node, SysfsNode) and self._nodes.get(node.devpath) is node

    def nodes(self, subsystem: str | None = None) -> list[SysfsNode]:
        """Nodes in insertion order, optionally only those of ``subsystem``."""
        return [n for n in self._nodes.values() if subsystem is None or n.subsystem == subsystem]

    def find(self, path: str) -> SysfsNode:
        """The node at ``path``: a devpath, a ``/sys/…`` path, or a class/bus view path.

        Accepts ``/sys/devices/…``, ``/devices/…``, ``/sys/class/accel/accel0`` and
        ``/sys/bus/pci/devices/0000:00:10.0``.
        """
        node = self._lookup(path.rstrip("/"))
        if node is None:
            raise NoEntry(f"no sysfs node at {path}")
        return node

    def _lookup(self, path: str) -> SysfsNode | None:
        if path.startswith("/sys/"):
            path = path[4:]
        if path in self._nodes:
            return self._nodes[path]
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "class":
            return next(
                (
                    n
                    for n in self._nodes.values()
                    if n.kind == "class" and n.subsystem == parts[1] and n.name == parts[2]
                ),
                None,
            )
        if len(parts) == 4 and parts[0] == "bus" and parts[2] == "devices":
            return next(
                (
                    n
                    for n in self._nodes.values()
                    if n.kind == "bus" and n.subsystem == parts[1] and n.name == parts[3]
                ),
                None,
            )
        return None

    def read(self, path: str) -> str:
        """Read an attribute by full path (``/sys/class/accel/accel0/dev``)."""
        node, name = self._split(path)
        return node.read(name)

    def write(self, path: str, value: str, *, privileged: bool = True) -> None:
        """Write an attribute by full path, then emit nothing (drivers emit ``change``)."""
        node, name = self._split(path)
        node.write(name, value, privileged=privileged)

    def _split(self, path: str) -> tuple[SysfsNode, str]:
        """The node and attribute name of an attribute path; the attribute may sit
        in group subdirectories (``…/topology/nodes/0/properties``)."""
        parts = path.rstrip("/").split("/")
        for cut in range(len(parts) - 1, 0, -1):
            node = self._lookup("/".join(parts[:cut]))
            if node is not None:
                return node, "/".join(parts[cut:])
        raise NoEntry(f"no sysfs attribute at {path}")

    # -- uevents ----------------------------------------------------------------
    def subscribe(self, listener: UeventListener) -> Callable[[], None]:
        """Call ``listener`` for every uevent; returns a function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def emit(self, action: str, node: SysfsNode, extra: Mapping[str, str] | None = None) -> Uevent:
        """Send a uevent (``add``, ``remove``, ``change``, ``bind``…) for ``node``."""
        env = {"ACTION": action, **node.uevent_env(), **(extra or {})}
        seq = next(self._seqnum)
        env["SEQNUM"] = str(seq)
        event = Uevent(action, node.devpath, node.subsystem or "", env, seq)
        for listener in list(self._listeners):
            listener(event)
        return event
