"""Managed, counted resources: ID tables and release actions per device, file and
context, as the kernel's ``drmm_*`` helpers and ``xa_alloc`` give drivers.

A driver asks for the :class:`ResourceScope` of what owns a resource —
:func:`device_scope`, :func:`file_scope` or :func:`context_scope` — and makes
its ID tables there (:meth:`ResourceScope.ids`, an :class:`IdTable` like an
``xarray`` with ``xa_alloc``) and its release actions (:meth:`ResourceScope.add_action`,
``drmm_add_action``). Then, without the driver counting anything:

* every live entry is counted in :meth:`Subsystem.accounting
  <accelcore.subsystem.Subsystem.accounting>`: ``managed`` is the total, and
  ``managed.<driver>.<scope>.<table>`` the count of each non-empty table;
* when the owner goes — the device's final release, the file's release after
  ``postclose``, the context's teardown after ``context_destroy`` — the scope's
  actions run (newest first), then every table must be empty. A table that is
  not is a leak: it is recorded as an oops on the device, with a message that
  names the driver, the owner, the table and the IDs still in it, and its
  entries stay counted, so leak checks against a baseline fail too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import Busy, InvalidArgument

if TYPE_CHECKING:
    from .device import AccelDevice
    from .file import AccelFile

__all__ = [
    "IdTable",
    "ResourceLeak",
    "ResourceRegistry",
    "ResourceScope",
    "context_scope",
    "device_scope",
    "file_scope",
]

T = TypeVar("T")

#: The largest ID an :class:`IdTable` hands out by default (``xa_limit_31b``).
ID_MAX = (1 << 31) - 1


class ResourceLeak(RuntimeError):
    """A managed resource outlived its owner (recorded as an oops)."""


class IdTable(Generic[T]):
    """Objects by small integer ID (an ``xarray`` used with ``xa_alloc``).

    Make one with :meth:`ResourceScope.ids`.

    Args:
        scope: The owner whose release checks the table is empty.
        name: What the entries are (``cbs``, ``syncobjs``), for accounting and
            leak messages.
        first: The lowest ID (``xa_limit``'s min; 1 as ``XA_FLAGS_ALLOC1``).
        last: The highest ID.
        cyclic: Hand out IDs after the last one given before reusing freed
            ones (``xa_alloc_cyclic``); otherwise the lowest free ID.
    """

    def __init__(
        self,
        scope: ResourceScope,
        name: str,
        *,
        first: int = 1,
        last: int = ID_MAX,
        cyclic: bool = False,
    ) -> None:
        if not 0 <= first <= last:
            raise InvalidArgument(f"ID table {name}: range [{first}, {last}] is empty")
        self.scope = scope
        self.name = name
        self.first = first
        self.last = last
        self.cyclic = cyclic
        self._objects: dict[int, T] = {}
        self._next = first

    def next_id(self) -> int:
        """The ID the next :meth:`alloc` will return (to build an object that
        carries its own ID before storing it).

        Raises:
            Busy: every ID in ``[first, last]`` is in use (``xa_alloc``: ``EBUSY``).
        """
        if len(self._objects) > self.last - self.first:
            raise Busy(
                f"{self.scope.label}: ID table {self.name} is full "
                f"({self.last - self.first + 1} IDs in use)"
            )
        ident = self._next if self.cyclic else self.first
        while ident in self._objects:
            ident = ident + 1 if ident < self.last else self.first
        return ident

    def alloc(self, obj: T) -> int:
        """Store ``obj`` under a free ID and return the ID.

        Raises:
            Busy: every ID in ``[first, last]`` is in use (``xa_alloc``: ``EBUSY``).
        """
        ident = self.next_id()
        self._objects[ident] = obj
        self._next = ident + 1 if ident < self.last else self.first
        return ident

    def load(self, ident: int) -> T | None:
        """The object with ID ``ident``, or ``None`` (``xa_load``)."""
        return self._objects.get(ident)

    def erase(self, ident: int) -> T | None:
        """Remove and return the object with ID ``ident``, or ``None`` (``xa_erase``)."""
        return self._objects.pop(ident, None)

    def id_of(self, obj: T) -> int | None:
        """The ID ``obj`` is stored under, if any."""
        for ident, o in self._objects.items():
            if o is obj:
                return ident
        return None

    def clear(self) -> list[T]:
        """Remove every entry; returns the objects in ID order (to release them)."""
        objs = [self._objects[i] for i in sorted(self._objects)]
        self._objects.clear()
        return objs

    def items(self) -> list[tuple[int, T]]:
        """``(id, object)`` pairs in ID order."""
        return sorted(self._objects.items(), key=lambda kv: kv[0])

    def values(self) -> list[T]:
        return [o for _, o in self.items()]

    def __contains__(self, ident: object) -> bool:
        return ident in self._objects

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._objects))

    def __len__(self) -> int:
        return len(self._objects)

    def __repr__(self) -> str:
        return f"<IdTable {self.scope.label}:{self.name} {len(self)} live>"


class ResourceScope:
    """The managed resources of one owner: a device, an open file or a context.

    Args:
        registry: Where the scope is counted.
        kind: ``device``, ``file`` or ``context``.
        driver: The driver's name (for accounting keys).
        label: The owner, for messages (``accel0``, ``accel0 client 3``).
    """

    def __init__(self, registry: ResourceRegistry, kind: str, driver: str, label: str) -> None:
        self.registry = registry
        self.kind = kind
        self.driver = driver
        self.label = label
        self.tables: dict[str, IdTable[Any]] = {}
        self._actions: list[tuple[str, Callable[[], object]]] = []
        self.released = False

    def ids(
        self, name: str, *, first: int = 1, last: int = ID_MAX, cyclic: bool = False
    ) -> IdTable[Any]:
        """A new ID table named ``name`` in this scope.

        Raises:
            InvalidArgument: the scope already has a table of that name, or
                was released.
        """
        if self.released:
            raise InvalidArgument(f"{self.label}: managed resources already released")
        if name in self.tables:
            raise InvalidArgument(f"{self.label}: an ID table named {name!r} exists")
        table: IdTable[Any] = IdTable(self, name, first=first, last=last, cyclic=cyclic)
        self.tables[name] = table
        return table

    def add_action(self, action: Callable[[], object], name: str | None = None) -> None:
        """Run ``action`` when the owner goes, before actions added earlier
        (``drmm_add_action``); free the scope's resources in it."""
        self._actions.append((name or str(getattr(action, "__name__", "action")), action))

    def live(self) -> dict[str, int]:
        """Entries per non-empty table."""
        return {name: len(t) for name, t in self.tables.items() if len(t)}

    def release(self) -> list[str]:
        """Run the actions (newest first), then check every table is empty.

        Returns:
            One message per leaked table (empty when nothing leaked). Errors of
            actions are returned as messages too; the other actions still run.
        """
        problems = []
        while self._actions:
            name, action = self._actions.pop()
            try:
                action()
            except Exception as exc:  # one failing action must not stop the others
                problems.append(f"{self.label}: release action {name} failed: {exc!r}")
        for name, table in self.tables.items():
            if len(table):
                ids = list(table)
                shown = ", ".join(str(i) for i in ids[:8]) + (", …" if len(ids) > 8 else "")
                problems.append(
                    f"{self.driver} {self.kind} {self.label} released with {len(table)} "
                    f"live {name} (ids {shown}); the driver must free them at "
                    f"{_WHERE[self.kind]}"
                )
        self.released = True
        return problems


_WHERE = {
    "device": "remove or in a release action",
    "file": "postclose",
    "context": "context_destroy",
}


class ResourceRegistry:
    """Every live :class:`ResourceScope` of a subsystem (``Subsystem.resources``)."""

    def __init__(self) -> None:
        self._scopes: dict[tuple[str, int], tuple[object, ResourceScope]] = {}
        #: Scopes released with live entries: still counted.
        self.leaked: list[ResourceScope] = []

    def scope(self, kind: str, owner: object, driver: str, label: str) -> ResourceScope:
        """The scope of ``owner`` of ``kind``, made on first use."""
        key = (kind, id(owner))
        entry = self._scopes.get(key)
        if entry is None:
            entry = (owner, ResourceScope(self, kind, driver, label))
            self._scopes[key] = entry
        return entry[1]

    def release(self, kind: str, owner: object) -> list[str]:
        """The owner went: release its scope, if it has one (see
        :meth:`ResourceScope.release`); returns the leak messages."""
        entry = self._scopes.pop((kind, id(owner)), None)
        if entry is None:
            return []
        scope = entry[1]
        problems = scope.release()
        if any(len(t) for t in scope.tables.values()):
            self.leaked.append(scope)
        return problems

    def counts(self) -> dict[str, int]:
        """``managed`` (every live entry) and ``managed.<driver>.<kind>.<table>``."""
        out: dict[str, int] = {"managed": 0}
        scopes = [s for _, s in self._scopes.values()] + self.leaked
        for s in scopes:
            for name, n in s.live().items():
                key = f"managed.{s.driver}.{s.kind}.{name}"
                out[key] = out.get(key, 0) + n
                out["managed"] += n
        return out


def _registry(dev: AccelDevice) -> ResourceRegistry:
    reg: ResourceRegistry = dev.subsystem.resources
    return reg


def device_scope(dev: AccelDevice) -> ResourceScope:
    """The managed resources of ``dev``, released at its final release (after
    its ``add_action`` actions)."""
    return _registry(dev).scope("device", dev, dev.driver.name, dev.name)


def file_scope(file: AccelFile) -> ResourceScope:
    """The managed resources of an open file, released after ``postclose``."""
    dev = file.device
    return _registry(dev).scope(
        "file", file, dev.driver.name, f"{dev.name} client {file.client_id}"
    )


def context_scope(file: AccelFile) -> ResourceScope:
    """The managed resources of ``file``'s compute context, released after
    ``context_destroy`` (at close, ``DROP_MASTER``, reset or unplug). Make the
    context's tables in ``context_create``: each context gets a fresh scope."""
    dev = file.device
    return _registry(dev).scope(
        "context", file, dev.driver.name, f"{dev.name} context of client {file.client_id}"
    )


def release_scope(kind: str, owner: object, dev: AccelDevice) -> None:
    """Core hook: ``owner`` went; release its scope and record each leak as an
    oops on ``dev`` (its message names the resource)."""
    for problem in _registry(dev).release(kind, owner):
        dev.record_oops(f"managed resources of {kind}", ResourceLeak(problem))
