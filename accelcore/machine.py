"""A whole simulated machine: clock, sysfs, PCI bus, accel subsystem and drivers.

This is the composition root. :class:`Machine` builds the layers and binds accel
drivers to PCI functions the way the kernel does: an :class:`AccelDriver` with
``pci_ids`` becomes a PCI driver whose probe allocates, probes and registers an
:class:`~accelcore.device.AccelDevice` with the function as parent, and whose
remove unplugs it.

A machine is described declaratively (a dict, or a TOML file)::

    [machine]
    clock = "virtual"                 # or "real"
    drivers = ["habana_like", "kfd_like"]   # default: every installed driver

    [[pci]]
    model = "habana_like"
    count = 2

    [[virtual]]                       # accel devices with no bus parent
    driver = "vaccel"
    count = 1

Drivers are found through the ``accelcore.drivers`` entry points (name →
``module:Class``), or given as ``module:Class`` directly.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Iterable, Mapping
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .clock import Clock, RealClock, VirtualClock
from .device import AccelDevice, DeviceState
from .driver import AccelDriver
from .errors import AccelError, Busy, InvalidArgument, NoEntry
from .pci import PciBus, PciDeviceId, PciFunction
from .subsystem import Subsystem
from .sysfs import SysfsTree

__all__ = ["DEFAULT_MACHINE", "AccelPciDriver", "Machine", "installed_drivers", "load_driver"]

#: The demo's machine: two habanalabs-like and two KFD-like devices.
DEFAULT_MACHINE: dict[str, Any] = {
    "machine": {"clock": "virtual", "drivers": ["habana_like", "kfd_like"]},
    "pci": [
        {"model": "habana_like", "count": 2},
        {"model": "kfd_like", "count": 2},
    ],
}

_MACHINE_KEYS = frozenset({"clock", "drivers", "speed"})


def installed_drivers() -> dict[str, str]:
    """Driver names and their ``module:Class`` from the ``accelcore.drivers`` entry points."""
    return {ep.name: ep.value for ep in entry_points(group="accelcore.drivers")}


def load_driver(spec: str) -> type[AccelDriver]:
    """The driver class named by an entry-point name or ``module:Class``.

    Raises:
        NoEntry: no such driver is installed.
        InvalidArgument: the object found is not an :class:`AccelDriver` subclass.
    """
    target = installed_drivers().get(spec, spec)
    if ":" not in target:
        raise NoEntry(f"no accel driver {spec!r} (installed: {sorted(installed_drivers())})")
    module, _, attr = target.partition(":")
    try:
        obj = getattr(import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise NoEntry(f"cannot load accel driver {spec!r} from {target}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, AccelDriver)):
        raise InvalidArgument(f"{target} is not an AccelDriver subclass")
    return obj


class AccelPciDriver:
    """Adapts an :class:`AccelDriver` to the PCI bus's driver interface."""

    def __init__(self, subsystem: Subsystem, driver: AccelDriver) -> None:
        self.subsystem = subsystem
        self.driver = driver
        self.devices: dict[str, AccelDevice] = {}

    @property
    def name(self) -> str:
        return self.driver.name

    @property
    def id_table(self) -> list[PciDeviceId]:
        return list(self.driver.pci_ids)

    def probe(self, fn: PciFunction) -> None:
        self.devices[str(fn.address)] = self.subsystem.create_device(self.driver, parent=fn)

    def remove(self, fn: PciFunction) -> None:
        dev = self.devices.pop(str(fn.address), None)
        if dev is not None and dev.state is DeviceState.REGISTERED:
            self.subsystem.remove_device(dev)

    def reset_prepare(self, fn: PciFunction) -> None:
        dev = self.devices.get(str(fn.address))
        if dev is not None:
            dev.begin_reset()

    def reset_done(self, fn: PciFunction) -> None:
        dev = self.devices.get(str(fn.address))
        if dev is not None:
            # A failed re-init leaves the device MALFUNCTION; the bus reset itself
            # completed, so the error stops here.
            with contextlib.suppress(AccelError):
                dev.finish_reset("pci")

    def error_detected(self, fn: PciFunction, severity: Any) -> None:
        dev = self.devices.get(str(fn.address))
        handler = getattr(self.driver, "error_detected", None)
        if dev is not None and handler is not None:
            handler(dev, severity)


class Machine:
    """A simulated machine.

    Args:
        clock: Device time (virtual by default).
        drivers: Driver instances or names to register now.
    """

    def __init__(
        self, clock: Clock | None = None, drivers: Iterable[AccelDriver | str] = ()
    ) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        self.sysfs = SysfsTree()
        self.bus = PciBus(self.clock, self.sysfs)
        self.subsystem = Subsystem(self.clock, self.sysfs)
        self._glue: dict[str, AccelPciDriver] = {}
        for drv in drivers:
            self.add_driver(drv)

    def add_driver(self, driver: AccelDriver | str) -> AccelDriver:
        """Register an accel driver and bind it to every matching PCI function."""
        if isinstance(driver, str):
            driver = load_driver(driver)()
        with self.clock.lock:
            self.subsystem.register_driver(driver)
            glue = AccelPciDriver(self.subsystem, driver)
            self._glue[driver.name] = glue
            if driver.pci_ids:
                self.bus.register_driver(glue)
        return driver

    def remove_driver(self, name: str) -> None:
        """Unbind and unregister a driver (``rmmod``).

        Raises:
            Busy: the driver is in use (open files, mappings, buffers, dma-bufs:
                :meth:`~accelcore.subsystem.Subsystem.driver_users`); nothing changed.
        """
        with self.clock.lock:
            users = self.subsystem.driver_users(self._glue[name].driver)
            if users:
                raise Busy(f"driver {name} is in use: {'; '.join(users)}")
            glue = self._glue.pop(name)
            if glue.driver.pci_ids:
                self.bus.unregister_driver(glue)
            self.subsystem.unregister_driver(glue.driver)

    def accel_device(self, fn: PciFunction | str) -> AccelDevice:
        """The accel device bound to a PCI function (or address)."""
        address = str(fn.address) if isinstance(fn, PciFunction) else str(fn)
        for glue in self._glue.values():
            dev = glue.devices.get(address)
            if dev is not None:
                return dev
        raise NoEntry(f"no accel device on PCI function {address}")

    @classmethod
    def from_description(
        cls, description: Mapping[str, Any], clock: Clock | None = None
    ) -> Machine:
        """Build a machine from a description (see the module docstring).

        Raises:
            InvalidArgument: unknown keys, a bad clock kind, or a bad PCI or
                ``virtual`` entry (the message names it).
            NoEntry: a named driver is not installed.
        """
        unknown = set(description) - {"machine", "pci", "virtual"}
        if unknown:
            raise InvalidArgument(f"machine description has unknown sections {sorted(unknown)}")
        section = description.get("machine", {})
        if not isinstance(section, Mapping):
            raise InvalidArgument("[machine] must be a table")
        bad = set(section) - _MACHINE_KEYS
        if bad:
            raise InvalidArgument(f"[machine] has unknown keys {sorted(bad)}")
        kind = section.get("clock", "virtual")
        if clock is None:
            if kind == "virtual":
                clock = VirtualClock()
            elif kind == "real":
                clock = RealClock(float(section.get("speed", 1.0)))
            else:
                raise InvalidArgument(f"[machine] clock {kind!r} must be 'virtual' or 'real'")
        names = section.get("drivers")
        if names is None:
            names = sorted(installed_drivers())
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidArgument(f"[machine] drivers {names!r} must be a list of names")
        machine = cls(clock)
        classes = [load_driver(n) for n in names]  # imports register the device models
        with machine.clock.lock:
            machine.bus.populate(description.get("pci", []))
            for drv_cls in classes:
                machine.add_driver(drv_cls())
        try:
            machine._add_virtual(description.get("virtual", []))
        except BaseException:
            machine.shutdown()
            raise
        return machine

    def _add_virtual(self, entries: Any) -> None:
        """``[[virtual]]``: ``count`` devices (default 1) of a loaded ``driver`` each."""
        if not isinstance(entries, list):
            raise InvalidArgument(f"virtual {entries!r} must be a list of tables")
        for entry in entries:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("driver"), str):
                raise InvalidArgument(f"virtual entry {entry!r} needs a driver name")
            count = entry.get("count", 1)
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise InvalidArgument(f"virtual entry {entry!r}: count must be an integer >= 0")
            drv = self.subsystem.drivers.get(entry["driver"])
            if drv is None:
                raise InvalidArgument(
                    f"virtual device driver {entry['driver']!r} is not in [machine] drivers"
                )
            for _ in range(count):
                self.subsystem.create_device(drv)

    @classmethod
    def from_file(cls, path: Path | str, clock: Clock | None = None) -> Machine:
        """Build a machine from a TOML description file."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"{path}: not valid TOML: {exc}") from exc
        return cls.from_description(data, clock)

    def shutdown(self) -> None:
        """Stop a real-time clock's thread (virtual clocks need nothing)."""
        if isinstance(self.clock, RealClock):
            self.clock.stop()
