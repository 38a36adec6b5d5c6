"""Test machines for one driver, built from its declarations, and what tests ask of them.

A :class:`Rig` is a fresh :class:`~accelcore.machine.Machine` in virtual time with
the driver under test registered and bound to ``count`` devices (PCI functions of
its ``device_model``, or virtual devices), optionally a vaccel *peer* device for
cross-driver dma-buf checks, and the user processes a test made. Nothing here
runs at collection: rigs are built by the ``accel_conformance`` fixture.

At the end of a test :meth:`Rig.stop` makes every process exit and lets device
time run until idle; :meth:`Rig.leaks` then reports resources still alive
compared with the baseline taken right after the build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...clock import VirtualClock
from ...device import AccelDevice, Oops
from ...driver import AccelDriver, OwnershipPolicy
from ...machine import Machine
from ...memory import LIVE
from ...pci import PciFunction
from ...uapi import CORE, IoctlDef, Uapi
from ...userspace import Process
from .payloads import example_bytes, set_fields

__all__ = ["IDLE_LIMIT", "INFO_OPS", "Rig", "RigError", "build_rig"]

#: Callbacks device time may run at the end of a test before it counts as a livelock.
IDLE_LIMIT = 100_000

#: The core INFO queries every device answers: op → (name, answer struct, array).
INFO_OPS: dict[int, tuple[str, str, bool]] = {
    CORE.ACCEL_INFO_DEVICE: ("device", "struct accel_info_device", False),
    CORE.ACCEL_INFO_STATUS: ("status", "struct accel_info_status", False),
    CORE.ACCEL_INFO_OWNERSHIP: ("ownership", "struct accel_info_ownership", False),
    CORE.ACCEL_INFO_CLIENTS: ("clients", "struct accel_info_client", True),
    CORE.ACCEL_INFO_MEMORY: ("memory", "struct accel_info_memory_region", True),
    CORE.ACCEL_INFO_ENGINES: ("engines", "struct accel_info_engine", True),
}


class RigError(AssertionError):
    """The driver could not even be set up (refused registration, no devices)."""


@dataclass
class Rig:
    """A machine with the driver under test, and helpers that speak its uAPI."""

    machine: Machine
    driver: AccelDriver
    devices: list[AccelDevice]
    peer: AccelDevice | None = None
    processes: list[Process] = field(default_factory=list)
    baseline: dict[str, int] = field(default_factory=dict)
    #: Expected changes of the accounting by the end (an unplugged device is gone).
    expect: dict[str, int] = field(default_factory=dict)
    #: Shared-memory regions the build itself left alive (device memory…).
    built_memory: int = 0

    # -- identity --------------------------------------------------------------
    @property
    def subsystem(self) -> Any:
        return self.machine.subsystem

    @property
    def clock(self) -> VirtualClock:
        clock = self.machine.clock
        assert isinstance(clock, VirtualClock)
        return clock

    @property
    def uapi(self) -> Uapi:
        return self.driver.uapi or CORE

    @property
    def name(self) -> str:
        return self.driver.name

    @property
    def policy(self) -> OwnershipPolicy:
        return self.driver.ownership

    # -- processes and files ------------------------------------------------------
    def process(self, *, restart: bool = False, comm: str = "conformance") -> Process:
        """A new root process (tracked: it exits at the end of the test)."""
        proc = Process(self.subsystem, restart=restart, comm=comm)
        self.processes.append(proc)
        return proc

    def open(self, proc: Process, index: int = 0, *, control: bool = False) -> int:
        """Open device ``index``'s compute node (or control node) in ``proc``."""
        dev = self.devices[index]
        path = dev.control_path if control else dev.node_path
        assert path is not None, f"{dev.name} has no control node"
        return proc.open(path, os.O_RDWR | os.O_CLOEXEC)

    # -- ioctls ---------------------------------------------------------------------
    def ioctl_def(self, name: str) -> IoctlDef:
        return self.uapi.ioctls[name]

    def examples(self) -> dict[str, Mapping[str, int]]:
        """The declared examples of ioctls the driver implements, by name."""
        table = {d.name for d in self.devices[0].ioctls.values()}
        return {n: ex for n, ex in sorted(self.driver.examples.items()) if n in table}

    def new_args(self, name: str, fields: Mapping[str, int] | None = None) -> Any:
        """A zeroed argument struct of ioctl ``name`` with ``fields`` set."""
        d = self.ioctl_def(name)
        assert d.arg_type is not None, f"{name} takes no argument"
        value = self.uapi.new(d.arg_type)
        set_fields(self.uapi, value, fields or {})
        return value

    def example_payload(self, name: str) -> bytes:
        """The bytes of the declared example of ``name`` (zeros if it has none)."""
        d = self.ioctl_def(name)
        if d.arg_type is None:
            return b""
        return example_bytes(self.uapi, d.arg_type, self.driver.examples.get(name, {}))

    def run(
        self, proc: Process, fd: int, name: str, fields: Mapping[str, int] | None = None
    ) -> Any:
        """Make ioctl ``name`` with ``fields``; returns the copied-out struct."""
        d = self.ioctl_def(name)
        if d.arg_type is None:
            proc.ioctl(fd, d.cmd, 0)
            return None
        args = self.new_args(name, fields)
        proc.ioctl(fd, d.cmd, args)
        return args

    def create_bo(self, proc: Process, fd: int) -> int:
        """A buffer object made with the driver's ``bo_create`` declaration."""
        assert self.driver.bo_create is not None
        name, fields, handle_field = self.driver.bo_create
        args = self.run(proc, fd, name, fields)
        handle = getattr(args, handle_field)
        assert isinstance(handle, int)
        return handle

    def info(
        self, proc: Process, fd: int, op: int, size: int | None = None, index: int = 0
    ) -> tuple[Any, bytes]:
        """``ACCEL_IOCTL_INFO``: the struct and the bytes written to a buffer of ``size``.

        With ``size`` ``None`` the answer is fetched whole (a size-0 call first).
        The buffer is 256 bytes larger than ``size`` and filled with 0xA5, so
        what the kernel wrote past ``return_size`` shows.
        """
        if size is None:
            first = CORE.new("struct accel_info", op=op, index=index)
            proc.ioctl(fd, CORE.ACCEL_IOCTL_INFO, first)
            size = int(first.actual_size)
        buf = proc.alloc(size + 256)
        try:
            buf.view[:] = b"\xa5" * len(buf)
            a = CORE.new(
                "struct accel_info",
                op=op,
                index=index,
                return_size=size,
                return_pointer=buf.addr,
            )
            proc.ioctl(fd, CORE.ACCEL_IOCTL_INFO, a)
            return a, bytes(buf.view)
        finally:
            proc.free(buf)

    def info_status(self, proc: Process, fd: int) -> Any:
        a, data = self.info(proc, fd, CORE.ACCEL_INFO_STATUS)
        return CORE.from_bytes("struct accel_info_status", data[: a.actual_size])

    # -- state ------------------------------------------------------------------------
    def snapshot(self, proc: Process, fd: int) -> dict[str, Any]:
        """A driver-neutral picture of the state: accounting, handles per file, INFO.

        Client ids are left out (they are unique per open, across machines).
        """
        status = self.info_status(proc, fd)
        a, data = self.info(proc, fd, CORE.ACCEL_INFO_CLIENTS)
        size = CORE.sizeof("struct accel_info_client")
        clients = []
        for off in range(0, int(a.actual_size), size):
            c = CORE.from_bytes("struct accel_info_client", data[off : off + size])
            clients.append(
                (
                    c.pid,
                    c.flags,
                    c.handles,
                    c.memory_bytes,
                    c.engine_time_ns,
                    CORE.ffi.string(c.comm),
                )
            )
        return {
            "accounting": self.subsystem.accounting(),
            "handles": [len(f.handles) for d in self.devices for f in d.files],
            "status": (status.status, status.flags, status.reset_count, status.open_count),
            "clients": clients,
        }

    def unplug(self, index: int = 0) -> None:
        """Hot-unplug device ``index``: PCI surprise removal, or unbind a virtual device."""
        dev = self.devices[index]
        parent = dev.parent
        if isinstance(parent, PciFunction):
            self.machine.bus.remove(parent, surprise=True)
        else:
            self.subsystem.remove_device(dev)

    # -- the end ----------------------------------------------------------------------
    def stop(self) -> None:
        """Exit every process and let device time run until nothing is scheduled.

        Raises:
            Deadlock: a timer keeps rescheduling itself.
        """
        for proc in self.processes:
            proc.exit()
        for task in list(self.subsystem.tasks.values()):
            self.subsystem.exit_task(task)
        self.clock.run_until_idle(IDLE_LIMIT)

    def leaks(self) -> dict[str, tuple[int, int]]:
        """Counts that differ from the baseline (plus :attr:`expect`): key → (want, got).

        ``shared_memory`` counts every machine in the interpreter, so the session
        checks it across all its rigs instead.
        """
        after = self.subsystem.accounting()
        out = {}
        for k, base in self.baseline.items():
            want = base + self.expect.get(k, 0)
            if k not in {"oopses", "shared_memory"} and after.get(k) != want:
                out[k] = (want, after.get(k, 0))
        return out

    def oopses(self) -> list[Oops]:
        return list(self.subsystem.oopses)


def _vaccel_peer(machine: Machine, driver: AccelDriver) -> AccelDevice:
    from ..vaccel import VAccelDriver

    sub = machine.subsystem
    peer_driver = sub.drivers.get("vaccel")
    if peer_driver is None:
        peer_driver = machine.add_driver(VAccelDriver())
    return sub.create_device(peer_driver)


def build_rig(driver_cls: type[AccelDriver], *, count: int = 1, peer: bool = False) -> Rig:
    """A fresh machine with ``count`` devices of the driver (and a vaccel peer).

    Raises:
        RigError: the driver refused registration, or fewer devices bound.
    """
    live_before = LIVE.regions
    machine = Machine(VirtualClock())
    driver = driver_cls()
    if driver.device_model is not None:
        try:
            machine.bus.populate([{"model": driver.device_model, "count": count}])
        except OSError as exc:
            raise RigError(
                f"driver {driver.name}: cannot create {count} PCI device(s) of its declared "
                f"device_model {driver.device_model!r}: {exc}"
            ) from exc
    try:
        machine.add_driver(driver)
        if driver.device_model is None:
            for _ in range(count):
                machine.subsystem.create_device(driver)
    except OSError as exc:
        hint = ""
        if driver.device_model is None and driver.pci_ids:
            hint = (
                " (it declares pci_ids but no device_model, so it was given virtual devices: "
                "set device_model to the PCI device model to test it with)"
            )
        raise RigError(f"driver {driver.name} could not be set up: {exc}{hint}") from exc
    devices = [d for d in machine.subsystem.registered_devices() if d.driver is driver]
    if len(devices) < count:
        raise RigError(
            f"driver {driver.name}: {len(devices)} device(s) bound, expected {count} "
            f"(device_model {driver.device_model!r}, pci_ids {list(driver.pci_ids)})"
        )
    rig = Rig(machine, driver, devices)
    if peer:
        rig.peer = _vaccel_peer(machine, driver)
    rig.baseline = machine.subsystem.accounting()
    rig.built_memory = LIVE.regions - live_before
    return rig
