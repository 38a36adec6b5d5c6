"""The root complex: enumeration, hotplug, driver binding, resets and fault injection.

:class:`PciBus` owns the hardware present in each slot (device models) and the
functions it enumerated from them — the distinction Linux makes between a card
and its ``pci_dev``. An orderly ``remove`` (``echo 1 > remove``) forgets the
function but leaves the card, so :meth:`PciBus.rescan` finds it again; a surprise
removal or an eject takes the card away too.

Every public method takes ``clock.lock``, the engine's one lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock
from ..errors import (
    AccelError,
    AlreadyExists,
    Busy,
    InvalidArgument,
    NoDevice,
    NoEntry,
    NoSpace,
    NotSupported,
)
from ..sysfs import SysfsNode, SysfsTree
from .address import PciAddress
from .attributes import build_node
from .bar import BarKind
from .caps import AER, PCIE
from .config import STATUS
from .device import SimDevice
from .driver import PciDriver
from .function import PciFunction
from .ids import match_id_table
from .kinds import ErrorSeverity, FaultKind, ResetKind
from .machine import create_device, parse_description

__all__ = ["InjectedFault", "PciBus"]

log = logging.getLogger("accelcore.pci")

#: Bus address windows BARs are assigned from: (start, end) per kind.
_WINDOWS: Mapping[BarKind, tuple[int, int]] = {
    BarKind.MEM32: (0xC000_0000, 0xFEC0_0000),
    BarKind.MEM64: (0x80_0000_0000, 0x100_0000_0000),
    BarKind.IO: (0x1000, 0x1_0000),
}


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """A record of :meth:`PciBus.inject_fault`, for tools and test reports."""

    time: int
    address: PciAddress
    kind: FaultKind
    params: Mapping[str, object] = field(default_factory=dict)


class PciBus:
    """A simulated PCI root complex with one segment of buses.

    Args:
        clock: Device time; its lock guards the bus.
        sysfs: The tree function nodes are added to (a private one if omitted).
    """

    def __init__(self, clock: Clock, sysfs: SysfsTree | None = None) -> None:
        self.clock = clock
        self.sysfs = sysfs if sysfs is not None else SysfsTree()
        self._hardware: dict[PciAddress, SimDevice] = {}
        self._functions: dict[PciAddress, PciFunction] = {}
        self._drivers: list[PciDriver] = []
        self._ranges: list[tuple[int, int, PciAddress]] = []
        #: Every fault injected, in order.
        self.injected: list[InjectedFault] = []

    # -- lookup -----------------------------------------------------------------------
    def functions(self) -> list[PciFunction]:
        """Enumerated functions, in address order."""
        with self.clock.lock:
            return [self._functions[a] for a in sorted(self._functions)]

    def find(self, address: PciAddress | str) -> PciFunction:
        """The function at ``address``.

        Raises:
            InvalidArgument: ``address`` is malformed.
            NoDevice: no function is enumerated there.
        """
        addr = PciAddress.coerce(address)
        with self.clock.lock:
            fn = self._functions.get(addr)
            if fn is None:
                raise NoDevice(f"no PCI function at {addr}")
            return fn

    def _resolve(self, target: PciFunction | PciAddress | str) -> PciFunction:
        if isinstance(target, PciFunction):
            if self._functions.get(target.address) is not target:
                raise NoDevice(f"PCI function {target.address} is not on this bus")
            return target
        return self.find(target)

    def drivers(self) -> list[PciDriver]:
        """Registered drivers, in registration order."""
        return list(self._drivers)

    # -- hotplug ------------------------------------------------------------------------
    def hot_add(
        self,
        model: SimDevice | str,
        address: PciAddress | str | None = None,
        options: Mapping[str, object] | None = None,
    ) -> PciFunction:
        """Plug a card and enumerate it (pciehp's presence-detect path).

        Args:
            model: A device-model instance, or the name of a registered model.
            address: Where; the first free ``0000:00:dd.0`` slot if omitted.
            options: Options for a model given by name.

        Returns:
            The new function (already bound if a registered driver matches).

        Raises:
            InvalidArgument: bad address, unknown model or option, or an
                impossible device layout.
            AlreadyExists: a card is already at ``address``.
            Busy: the model instance is already on a bus.
            NoSpace: no free slot, or no bus address space for its BARs.
        """
        with self.clock.lock:
            if isinstance(model, str):
                device = create_device(model, options or {})
            elif options:
                raise InvalidArgument("options are only accepted with a model name")
            else:
                device = model
            if device._fn is not None:
                raise Busy(f"device model {device!r} is already on a bus")
            addr = PciAddress.coerce(address) if address is not None else self._free_address()
            if addr in self._hardware:
                raise AlreadyExists(f"a device is already present at {addr}")
            self._hardware[addr] = device
            try:
                return self._enumerate(addr)
            except BaseException:
                del self._hardware[addr]
                raise

    def _free_address(self) -> PciAddress:
        taken = {a.device for a in self._hardware if a.domain == 0 and a.bus == 0}
        slot = next((d for d in range(1, 32) if d not in taken), None)
        if slot is None:
            raise NoSpace("no free device slot on bus 0000:00")
        return PciAddress(0, 0, slot, 0)

    def _enumerate(self, addr: PciAddress) -> PciFunction:
        device = self._hardware[addr]
        pin = device.interrupt_pin
        irq = 16 + (addr.device + pin - 1) % 4 if pin else 0  # the usual INTx swizzle
        fn = PciFunction(self, addr, device, irq)
        try:
            self._assign_resources(fn)
            device._attach(fn)
            device.realize(fn)
        except BaseException:
            device._detach()
            self._free_ranges(addr)
            fn._release()
            raise
        self._functions[addr] = fn
        node = build_node(fn, self._root_node(addr), self)
        fn.sysfs = node
        self.sysfs.add(node)
        for drv in self._drivers:
            if self._try_bind(fn, drv):
                break
        return fn

    def _root_node(self, addr: PciAddress) -> SysfsNode:
        try:
            return self.sysfs.find(f"/devices/{addr.root_name}")
        except NoEntry:
            root = SysfsNode(addr.root_name)
            self.sysfs.add(root, announce=False)
            return root

    def _assign_resources(self, fn: PciFunction) -> None:
        """Size every BAR by writing all-ones, then give it an aligned bus address."""
        for index, bar in sorted(fn.bars.items()):
            offset = 0x10 + 4 * index
            fn.config.write(offset, 4, 0xFFFF_FFFF)
            low = fn.config.read(offset, 4)
            if bar.kind is BarKind.MEM64:
                fn.config.write(offset + 4, 4, 0xFFFF_FFFF)
                mask = (fn.config.read(offset + 4, 4) << 32) | (low & ~0xF)
                size = (~mask & (2**64 - 1)) + 1
            else:
                size = (~(low & ~(0x3 if bar.kind is BarKind.IO else 0xF)) & 0xFFFF_FFFF) + 1
            fn._assign_bar(index, self._allocate(bar.kind, size, fn.address))

    def _allocate(self, kind: BarKind, size: int, owner: PciAddress) -> int:
        start, end = _WINDOWS[kind]
        candidate = start
        for lo, hi, _ in sorted(r for r in self._ranges if start <= r[0] < end):
            if candidate + size <= lo:
                break
            candidate = max(candidate, -(-hi // size) * size)
        if candidate + size > end:
            raise NoSpace(f"no {kind.value} bus address space for a {size:#x}-byte BAR of {owner}")
        self._ranges.append((candidate, candidate + size, owner))
        return candidate

    def _free_ranges(self, owner: PciAddress) -> None:
        self._ranges = [r for r in self._ranges if r[2] != owner]

    def remove(
        self, target: PciFunction | PciAddress | str, surprise: bool = False, eject: bool = False
    ) -> None:
        """Remove a function: driver ``remove``, sysfs node gone, function dead.

        Args:
            target: The function or its address.
            surprise: The card vanished first: the driver's ``remove`` already sees
                all-ones MMIO and faulting DMA, and the card is gone from the slot.
            eject: After an orderly removal, also take the card out (so
                :meth:`rescan` does not find it again).

        Raises:
            NoDevice: no such function.
        """
        with self.clock.lock:
            fn = self._resolve(target)
            if surprise:
                fn._mark_removed()
            try:
                if fn.driver is not None:
                    self._unbind(fn)
            finally:
                # The function goes even if the driver's remove raised.
                fn._mark_removed()
                self._dismantle(fn, drop_card=surprise or eject)

    def _dismantle(self, fn: PciFunction, *, drop_card: bool) -> None:
        addr = fn.address
        device = fn.device_model
        try:
            device.unrealize()
        finally:
            device._detach()
            if fn.sysfs is not None:
                self.sysfs.remove(fn.sysfs)
            fn._release()
            self._free_ranges(addr)
            del self._functions[addr]
            if drop_card:
                del self._hardware[addr]

    def close(self) -> None:
        """Power off: remove every function (drivers' ``remove`` runs) and its card."""
        with self.clock.lock:
            for fn in reversed(self.functions()):
                self.remove(fn, eject=True)
            self._hardware.clear()

    def rescan(self) -> list[PciFunction]:
        """Enumerate cards present but not enumerated (``echo 1 > /sys/bus/pci/rescan``).

        Returns:
            The functions found, in address order.
        """
        with self.clock.lock:
            return [self._enumerate(a) for a in sorted(self._hardware) if a not in self._functions]

    def populate(self, description: Iterable[Mapping[str, Any]]) -> list[PciFunction]:
        """Add the devices of a machine description (see :mod:`accelcore.pci.machine`).

        All entries are validated before any device is added; if adding fails part
        way, the devices already added are removed again.

        Raises:
            InvalidArgument: a malformed description, naming the entry and key.
        """
        with self.clock.lock:
            planned = parse_description(description, taken=set(self._hardware))
            added: list[PciFunction] = []
            try:
                for device, address in planned:
                    added.append(self.hot_add(device, address))
            except BaseException:
                for fn in reversed(added):
                    self.remove(fn, eject=True)
                raise
            return added

    # -- drivers --------------------------------------------------------------------------
    def register_driver(self, drv: PciDriver) -> None:
        """Register ``drv`` and bind it to every matching unbound function.

        Raises:
            InvalidArgument: the driver has no usable name.
            AlreadyExists: a driver of that name is registered.
        """
        with self.clock.lock:
            if not isinstance(drv.name, str) or not drv.name.strip():
                raise InvalidArgument(f"PCI driver name {drv.name!r} is empty")
            if any(d.name == drv.name for d in self._drivers):
                raise AlreadyExists(f"PCI driver {drv.name!r} is already registered")
            self._drivers.append(drv)
            for fn in self.functions():
                self._try_bind(fn, drv)

    def unregister_driver(self, drv: PciDriver) -> None:
        """Unbind ``drv`` from all its functions and forget it.

        Raises:
            NoEntry: ``drv`` is not registered.
        """
        with self.clock.lock:
            if drv not in self._drivers:
                raise NoEntry(f"PCI driver {drv.name!r} is not registered")
            for fn in self.functions():
                if fn.driver is drv:
                    self._unbind(fn)
            self._drivers.remove(drv)

    def _matches(self, fn: PciFunction, drv: PciDriver) -> bool:
        if fn.driver_override is not None:
            # As Linux: an override binds only the named driver, id table or not.
            return drv.name == fn.driver_override
        return match_id_table(drv.id_table, fn.identity) is not None

    def _try_bind(self, fn: PciFunction, drv: PciDriver) -> bool:
        if fn.driver is not None or not fn.present or not self._matches(fn, drv):
            return False
        try:
            self._probe(fn, drv)
        except AccelError as exc:
            log.warning("%s: probe of %s failed: %s", drv.name, fn.address, exc)
            return False
        return True

    def _probe(self, fn: PciFunction, drv: PciDriver) -> None:
        fn.driver = drv
        try:
            drv.probe(fn)
        except BaseException:
            fn.driver = None
            self._cleanup_driver_state(fn)
            raise
        assert fn.sysfs is not None
        fn.sysfs.driver = drv.name
        self.sysfs.emit("bind", fn.sysfs)

    def bind(self, target: PciFunction | PciAddress | str, driver_name: str) -> None:
        """Bind a function to the named driver (``echo BDF > …/drivers/NAME/bind``).

        Raises:
            NoDevice: no such function, or the driver does not match it.
            NoEntry: no driver of that name.
            Busy: the function is already bound.
            AccelError: whatever the driver's probe raised.
        """
        with self.clock.lock:
            fn = self._resolve(target)
            drv = next((d for d in self._drivers if d.name == driver_name), None)
            if drv is None:
                raise NoEntry(f"no PCI driver named {driver_name!r}")
            if fn.driver is not None:
                raise Busy(f"{fn.address} is already bound to {fn.driver.name!r}")
            if not self._matches(fn, drv):
                raise NoDevice(f"PCI driver {driver_name!r} does not match {fn.address}")
            self._probe(fn, drv)

    def unbind(self, target: PciFunction | PciAddress | str) -> None:
        """Unbind a function from its driver (``echo BDF > …/unbind``).

        Raises:
            NoDevice: no such function, or it is not bound.
        """
        with self.clock.lock:
            fn = self._resolve(target)
            if fn.driver is None:
                raise NoDevice(f"{fn.address} is not bound to a driver")
            self._unbind(fn)

    def _unbind(self, fn: PciFunction) -> None:
        drv = fn.driver
        assert drv is not None
        try:
            drv.remove(fn)
        finally:
            fn.driver = None
            self._cleanup_driver_state(fn)
            if fn.sysfs is not None:
                fn.sysfs.driver = None
                self.sysfs.emit("unbind", fn.sysfs)

    def _cleanup_driver_state(self, fn: PciFunction) -> None:
        # What devres would release: vectors, mappings, enables the driver left behind.
        fn.free_irq_vectors()
        fn.dma.unmap_all()
        if fn.is_enabled:
            fn.disable_device()

    def set_driver_override(self, target: PciFunction | PciAddress | str, name: str | None) -> None:
        """Set or clear (``None`` or empty) ``driver_override``; takes effect at next bind.

        Raises:
            InvalidArgument: the name contains whitespace or is too long.
        """
        with self.clock.lock:
            fn = self._resolve(target)
            value = (name or "").strip("\n")
            if len(value) > 4095 or any(c.isspace() for c in value):
                raise InvalidArgument(f"driver_override {value[:64]!r} is not a driver name")
            fn.driver_override = value or None

    # -- resets and faults ------------------------------------------------------------------
    def reset(
        self, target: PciFunction | PciAddress | str, kind: ResetKind = ResetKind.FLR
    ) -> None:
        """Reset a function (FLR) or its whole slot (hot reset), as ``pci_reset_function``.

        The bound driver's ``reset_prepare(fn)`` runs first; then the hardware
        resets (config space to defaults, MSI-X masked, device model reset,
        injected hang cleared); then host-programmed state is restored (BAR
        addresses, enables, MSI-X vectors) and ``reset_done(fn)`` runs.

        Raises:
            NoDevice: no such function.
            NotSupported: FLR on a function that does not advertise it.
        """
        with self.clock.lock:
            fn = self._resolve(target)
            if kind is ResetKind.FLR:
                if not (fn.device_model.pcie and fn.device_model.flr):
                    raise NotSupported(f"{fn.address} does not support function-level reset")
                fns = [fn]
            else:
                fns = [f for f in self.functions() if f.address.slot == fn.address.slot]
            self._driver_callback(fns, "reset_prepare")
            for f in fns:
                f._hardware_reset(kind)
            for f in fns:
                f._restore_host_state()
            self._driver_callback(fns, "reset_done")

    @staticmethod
    def _driver_callback(fns: Sequence[PciFunction], name: str, *args: object) -> None:
        for f in fns:
            callback: Callable[..., object] | None = getattr(f.driver, name, None)
            if callback is not None:
                callback(f, *args)

    def inject_fault(
        self, target: PciFunction | PciAddress | str, kind: FaultKind, **params: object
    ) -> None:
        """Inject a fault into a function.

        Args:
            target: The function or its address.
            kind: What to inject.
            **params: ``HANG``: ``hung`` (bool, default true). ``ERROR``:
                ``severity`` (:class:`ErrorSeverity`, default NONFATAL).
                ``SLOW_DMA``: ``factor`` (number > 0). ``SURPRISE_REMOVAL``: none.

        Raises:
            NoDevice: no such function.
            InvalidArgument: an unknown parameter or a bad value, naming it.
        """
        with self.clock.lock:
            fn = self._resolve(target)
            allowed, handler = self._FAULTS[kind]
            unknown = sorted(set(params) - allowed)
            if unknown:
                raise InvalidArgument(f"unknown parameter {unknown[0]!r} for fault {kind.value}")
            record = InjectedFault(self.clock.now(), fn.address, kind, dict(params))
            handler(self, fn, **params)
            self.injected.append(record)

    def _fault_hang(self, fn: PciFunction, hung: object = True) -> None:
        if not isinstance(hung, bool):
            raise InvalidArgument(f"fault parameter hung={hung!r} is not a bool")
        fn.device_model.hung = hung

    def _fault_slow_dma(self, fn: PciFunction, factor: object = 10.0) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 0:
            raise InvalidArgument(f"fault parameter factor={factor!r} is not a positive number")
        fn.device_model.dma_slowdown = float(factor)

    def _fault_error(self, fn: PciFunction, severity: object = ErrorSeverity.NONFATAL) -> None:
        if not isinstance(severity, ErrorSeverity):
            raise InvalidArgument(f"fault parameter severity={severity!r} is not an ErrorSeverity")
        cs = fn.config
        if severity is ErrorSeverity.CORRECTABLE:
            devsta, aer_field, aer_bits = PCIE.DEVSTA_CED, "aer.cor_status", AER.COR_INTERNAL
        else:
            fatal = severity is ErrorSeverity.FATAL
            devsta = PCIE.DEVSTA_FED if fatal else PCIE.DEVSTA_NFED
            aer_field, aer_bits = "aer.uncor_status", AER.UNCOR_INTERNAL
            cs.update_bits("status", STATUS.SIG_SYSTEM_ERROR, True)
        if fn.device_model.pcie:
            cs.update_bits("pcie.devsta", devsta, True)
            if fn.device_model.aer:
                cs.update_bits(aer_field, aer_bits, True)
        # As Linux, correctable errors are only logged; drivers hear of the others.
        if severity is not ErrorSeverity.CORRECTABLE:
            self._driver_callback([fn], "error_detected", severity)

    def _fault_surprise(self, fn: PciFunction) -> None:
        self.remove(fn, surprise=True)

    _FAULTS: Mapping[FaultKind, tuple[frozenset[str], Callable[..., None]]] = {
        FaultKind.HANG: (frozenset({"hung"}), _fault_hang),
        FaultKind.SLOW_DMA: (frozenset({"factor"}), _fault_slow_dma),
        FaultKind.ERROR: (frozenset({"severity"}), _fault_error),
        FaultKind.SURPRISE_REMOVAL: (frozenset(), _fault_surprise),
    }
