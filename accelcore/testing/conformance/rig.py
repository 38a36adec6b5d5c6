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
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...clock import VirtualClock
from ...device import AccelDevice, DeviceStatus, Oops
from ...driver import AccelDriver, DriverFeature, IoctlFlags, OwnershipPolicy
from ...file import AccelFile
from ...machine import Machine
from ...memory import LIVE
from ...pci import PciFunction
from ...uapi import CORE, IoctlDef, Uapi
from ...userspace import Process
from ..transports import TRANSPORTS, ServerProcess, file_of, start_server
from .payloads import decode_fields, example_bytes, set_fields
from .steps import Call, Close, Fails, Open, Setup, Unique, UserArray, Value, Write

__all__ = [
    "IDLE_LIMIT",
    "INFO_OPS",
    "Prepared",
    "Rig",
    "RigError",
    "SetupError",
    "build_rig",
    "diff_snapshots",
    "example_devices",
    "example_setup",
    "failing_examples",
    "legacy_ignored_fields",
]

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


class SetupError(AssertionError):
    """A declared setup step of an example failed (the message names the step)."""


def example_setup(driver: type[AccelDriver] | AccelDriver, name: str) -> Setup | None:
    """The driver's declared :class:`~.steps.Setup` for ioctl ``name``, if any."""
    table: Mapping[str, Setup] = getattr(driver, "example_setup", {}) or {}
    return table.get(name)


def example_devices(driver: type[AccelDriver] | AccelDriver) -> int:
    """Devices a machine needs to run every declared example (``Setup.devices``)."""
    table: Mapping[str, Setup] = getattr(driver, "example_setup", {}) or {}
    return max([1, *(s.devices for s in table.values())])


def failing_examples(driver: type[AccelDriver] | AccelDriver) -> Mapping[str, Sequence[Fails]]:
    """The driver's ``failing_examples``: per ioctl, calls declared to fail."""
    table: Mapping[str, Sequence[Fails]] = getattr(driver, "failing_examples", {}) or {}
    return table


def legacy_ignored_fields(driver: type[AccelDriver] | AccelDriver) -> Mapping[str, Sequence[str]]:
    """The driver's ``legacy_ignored_fields``: per ioctl, the ``pad``/``flags``
    fields its (legacy) kernel uAPI never checked, left out of the negative matrix."""
    table: Mapping[str, Sequence[str]] = getattr(driver, "legacy_ignored_fields", {}) or {}
    return table


@dataclass
class Prepared:
    """An example ready to run: the file to call it on and its argument bytes."""

    name: str
    fd: int
    payload: bytes
    #: Step results by label (copied-out structs, ``{"fd": n}``, ``{"addr": a}``).
    results: dict[str, Any]


def diff_snapshots(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Every named value that differs: ``"name: before -> after"``, sorted by name."""
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, "<absent>"), after.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


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
    #: INFO-only observer files by device index (``None``: none can be opened).
    observers: dict[int, tuple[Process, int] | None] = field(default_factory=dict, repr=False)
    #: The process and file that export the vaccel peer's dma-bufs.
    exporter: tuple[Process, int] | None = field(default=None, repr=False)
    #: Uses of each :class:`~.steps.Unique` step label on this machine.
    unique: dict[str, int] = field(default_factory=dict, repr=False)
    #: How the processes reach the machine: ``"inproc"`` (:class:`~accelcore.Process`)
    #: or ``"server"`` (sessions of a devfs server over the machine, serving on a
    #: thread of the test process: see :mod:`accelcore.testing.transports`).
    transport: str = "inproc"
    #: The server and its runtime directory, once a process was made through it.
    server: tuple[Any, Path] | None = field(default=None, repr=False)

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
    def make_process(self, *, restart: bool = False, comm: str = "conformance") -> Process:
        """The one factory of every user process the suite uses.

        Every check gets its processes from here (through :meth:`process`): an
        in-process :class:`~accelcore.Process`, or through the ``server``
        transport a :class:`~accelcore.testing.transports.ServerProcess` (a new
        session of the machine's server, started by the first call). ``comm``
        is the in-process task's name; a server session takes its process's.
        """
        if self.transport == "inproc":
            return Process(self.subsystem, restart=restart, comm=comm)
        if self.server is None:
            self.server = start_server(self.machine)
        server, rt = self.server
        return ServerProcess(server, rt, restart=restart)  # type: ignore[return-value]

    def file_of(self, proc: Any, fd: int) -> Any:
        """The open file (engine object) behind ``proc``'s descriptor ``fd``."""
        return file_of(proc, fd)

    def process(self, *, restart: bool = False, comm: str = "conformance") -> Process:
        """A new root process (tracked: it exits at the end of the test)."""
        proc = self.make_process(restart=restart, comm=comm)
        self.processes.append(proc)
        return proc

    def engine_mapping(self, proc: Any, mapping: Any) -> Any:
        """The engine's CPU mapping (:class:`accelcore.vfs.Mapping`) behind
        ``mapping``, a mapping ``proc`` made: itself in process, the server's
        through the server (whose client maps the shared pages directly)."""
        if isinstance(proc, ServerProcess):
            return proc.engine_mapping(mapping)
        return mapping

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
        """The bytes of the declared example of ``name`` (zeros if it has none),
        without its setup (:meth:`prepare` runs the setup and fills the rest)."""
        d = self.ioctl_def(name)
        if d.arg_type is None:
            return b""
        return example_bytes(self.uapi, d.arg_type, self.driver.examples.get(name, {}))

    def needs_devices(self, name: str) -> int:
        setup = example_setup(self.driver, name)
        return setup.devices if setup is not None else 1

    def prepare(
        self,
        proc: Process,
        name: str,
        fd: int | None = None,
        overlay: Mapping[str, Value] | None = None,
    ) -> Prepared:
        """Make ioctl ``name``'s example valid in ``proc``: open device 0 (unless
        ``fd`` is given), run its declared setup steps, fill the argument, then
        apply ``overlay`` (fields whose values may name setup results).

        Raises:
            SetupError: a step failed, or a reference names no result.
        """
        accel = self.open(proc) if fd is None else fd
        results: dict[str, Any] = {"accel": {"fd": accel}}
        setup = example_setup(self.driver, name)
        fields: dict[str, int] = dict(self.driver.examples.get(name, {}))
        target = accel
        if setup is not None:
            for i, step in enumerate(setup.steps):
                try:
                    self._step(proc, step, results)
                except (OSError, KeyError, IndexError, AttributeError, TypeError) as exc:
                    raise SetupError(
                        f"driver {self.name}: setup step {i} of {name}'s example ({step}) "
                        f"failed: {exc}"
                    ) from exc
            try:
                fields.update({k: self._resolve(v, results) for k, v in setup.args.items()})
                target = self._fd_of(setup.file, results)
            except (KeyError, IndexError, AttributeError, TypeError) as exc:
                raise SetupError(
                    f"driver {self.name}: {name}'s example: {setup.args} or file "
                    f"{setup.file!r} names no setup result: {exc}"
                ) from exc
        if overlay:
            try:
                fields.update({k: self._resolve(v, results) for k, v in overlay.items()})
            except (KeyError, IndexError, AttributeError, TypeError) as exc:
                raise SetupError(f"driver {self.name}: {name}: {overlay}: {exc}") from exc
        desc = self.devices[0].ioctls.get(self.ioctl_def(name).nr)
        if desc is not None and desc.flags & IoctlFlags.OWNER:
            self.hold_context(proc, target)
        d = self.ioctl_def(name)
        payload = b"" if d.arg_type is None else example_bytes(self.uapi, d.arg_type, fields)
        return Prepared(name, target, payload, results)

    def on_accel(self, name: str) -> bool:
        """Whether ``name``'s example runs on the accel file (not on another node)."""
        setup = example_setup(self.driver, name)
        return setup is None or setup.file == "accel"

    def run_example(self, proc: Process, fd: int, name: str) -> bytes:
        """Prepare ``name``'s example on accel file ``fd`` and run it; the args out.

        Raises:
            SetupError: a setup step failed.
            OSError: the example itself failed.
        """
        prep = self.prepare(proc, name, fd)
        buf = bytearray(prep.payload)
        proc.ioctl(prep.fd, self.ioctl_def(name).cmd, buf if buf else 0)
        return bytes(buf)

    def hold_state(self, proc: Process, fd: int) -> list[str]:
        """Give accel file ``fd`` live objects for error paths to touch: a buffer
        (``bo_create``), a dma-buf of the vaccel peer imported (``PRIME``), and
        the state of every example that runs on it (their setup: buffers, jobs,
        command buffers), each example run once. Returns what it holds.

        Raises:
            SetupError: a step failed (it is named).
        """
        held: list[str] = []
        feats = self.driver.features
        try:
            if DriverFeature.GEM in feats and (
                self.driver.bo_create is not None or getattr(self.driver, "bo_setup", None)
            ):
                held.append(f"buffer handle {self.create_bo(proc, fd)}")
            if DriverFeature.PRIME in feats and self.peer is not None:
                imp = CORE.new("struct drm_prime_handle", fd=self._peer_dmabuf(proc))
                proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, imp)
                held.append(f"imported dma-buf handle {imp.handle}")
        except OSError as exc:
            raise SetupError(f"driver {self.name}: holding live objects failed: {exc}") from exc
        for name in self.examples():
            if self.on_accel(name):
                try:
                    self.run_example(proc, fd, name)
                except OSError as exc:
                    raise SetupError(
                        f"driver {self.name}: {name}'s example failed on a file holding "
                        f"{held}: {exc}"
                    ) from exc
                held.append(f"{name}'s example state")
        return held

    def _peer_dmabuf(self, to: Process) -> int:
        """A dma-buf of a new buffer of the vaccel peer, as an fd of ``to`` (made by
        one exporter process per machine: the peer has a single owner)."""
        from ..vaccel import VACCEL_UAPI

        assert self.peer is not None
        exporter = self.exporter
        if exporter is None:
            eproc = self.process(comm="exporter")
            exporter = (eproc, eproc.open(self.peer.node_path, os.O_RDWR | os.O_CLOEXEC))
            self.exporter = exporter
        eproc, pfd = exporter
        made = VACCEL_UAPI.new("struct vaccel_create_bo", size=8192)
        eproc.ioctl(pfd, VACCEL_UAPI.DRM_IOCTL_VACCEL_CREATE_BO, made)
        exp = CORE.new(
            "struct drm_prime_handle", handle=made.handle, flags=CORE.DRM_CLOEXEC | CORE.DRM_RDWR
        )
        eproc.ioctl(pfd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, exp)
        eproc.ioctl(
            pfd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=made.handle)
        )
        dfd = eproc.send_fd(int(exp.fd), to)
        eproc.close(int(exp.fd))
        return dfd

    def context_example(self) -> str | None:
        """An example whose run leaves its file with a compute context: an ``OWNER``
        ioctl on the accel node (one without setup first), else any example whose
        setup or call creates one (KFD's ACQUIRE_VM). Each candidate is tried in a
        process of its own that exits."""
        table = {d.name: d for d in self.devices[0].ioctls.values()}

        def owner(n: str) -> bool:
            d = table.get(n)
            return self.on_accel(n) and d is not None and bool(d.flags & IoctlFlags.OWNER)

        names = sorted(
            self.examples(),
            key=lambda n: (not owner(n), example_setup(self.driver, n) is not None),
        )
        for name in names:
            proc = self.process()
            base = self.subsystem.accounting()["contexts"]
            try:
                self.run_example(proc, self.open(proc), name)
            except (OSError, SetupError):
                continue
            finally:
                made = self.subsystem.accounting()["contexts"] > base
                proc.exit()
            if made:
                return name
        return None

    def hold_context(self, proc: Process, fd: int) -> None:
        """Give accel file ``fd`` its compute context now, as its first ``OWNER``
        ioctl would (the lazy policy creates it there, before the handler runs),
        so a snapshot taken next does not count the core's context as the
        effect of the call under test."""
        file = self.file_of(proc, fd)
        if isinstance(file, AccelFile) and file.context is None:
            with self.clock.lock:
                file.device.ownership.require(file)

    def _resolve(self, value: Value, results: Mapping[str, Any]) -> int:
        if isinstance(value, int):
            return value
        label, _, path = value.partition(".")
        if label not in results:
            raise KeyError(f"no setup step is labelled {label!r} (in {value!r})")
        target: Any = results[label]
        for part in path.split(".") if path else []:
            if isinstance(target, dict):
                target = target[part]
            elif part.isdigit():
                target = target[int(part)]
            else:
                target = getattr(target, part)
        return int(target)

    def _fd_of(self, label: str, results: Mapping[str, Any]) -> int:
        res = results[label]
        if not isinstance(res, dict) or "fd" not in res:
            raise KeyError(f"setup result {label!r} is not an open file")
        return int(res["fd"])

    def _step(self, proc: Process, step: Any, results: dict[str, Any]) -> None:
        if isinstance(step, Open):
            if step.path is None:
                fd = self.open(proc, step.device)
            else:
                fd = proc.open(step.path, os.O_RDWR | os.O_CLOEXEC)
            results[step.label] = {"fd": fd}
        elif isinstance(step, Call):
            fields = {k: self._resolve(v, results) for k, v in step.fields.items()}
            results[step.label] = self.run(
                proc, self._fd_of(step.file, results), step.ioctl, fields
            )
        elif isinstance(step, UserArray):
            chunks = []
            for item in step.items:
                if isinstance(item, Mapping):
                    value = self.uapi.new(step.ctype)
                    set_fields(
                        self.uapi, value, {k: self._resolve(v, results) for k, v in item.items()}
                    )
                    chunks.append(self.uapi.to_bytes(value))
                else:
                    one = self.uapi.ffi.new(f"{step.ctype} *", self._resolve(item, results))
                    chunks.append(bytes(self.uapi.ffi.buffer(one)))
            data = b"".join(chunks)
            buf = proc.alloc(max(len(data), 1))
            buf.view[: len(data)] = data
            results[step.label] = {"addr": buf.addr, "count": len(step.items)}
        elif isinstance(step, Write):
            m = proc.mmap(
                self._fd_of(step.file, results),
                len(step.data),
                self._resolve(step.offset, results),
            )
            try:
                m.view[: len(step.data)] = step.data
            finally:
                proc.munmap(m)
        elif isinstance(step, Unique):
            n = self.unique.get(step.label, 0)
            self.unique[step.label] = n + 1
            results[step.label] = {"value": step.base + n * step.stride}
        elif isinstance(step, Close):
            proc.close(self._resolve(step.fd, results))
        else:
            raise TypeError(f"unknown setup step {step!r}")

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
        """A buffer object made with the driver's ``bo_create`` declaration (or
        its ``bo_setup`` steps); its handle on accel file ``fd``.

        Raises:
            SetupError: a ``bo_setup`` step failed.
        """
        if self.driver.bo_create is None:
            setup: Setup | None = getattr(self.driver, "bo_setup", None)
            assert setup is not None, f"driver {self.name} declares no bo_create or bo_setup"
            results: dict[str, Any] = {"accel": {"fd": fd}}
            for i, step in enumerate(setup.steps):
                try:
                    self._step(proc, step, results)
                except (OSError, KeyError, IndexError, AttributeError, TypeError) as exc:
                    raise SetupError(
                        f"driver {self.name}: bo_setup step {i} ({step}) failed: {exc}"
                    ) from exc
            return self._resolve(setup.args["handle"], results)
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
    def settle(self) -> None:
        """Let device time run until nothing is scheduled (jobs in flight finish),
        so a snapshot taken next changes only by what a call does."""
        self.clock.run_until_idle(IDLE_LIMIT)

    def _observer(self, index: int) -> tuple[Process, int] | None:
        """A process with an INFO-only file on device ``index`` (the control node
        when there is one), opened once per machine; ``None`` when opening one
        would change what it observes (an exclusive-open device, no control node)."""
        cache = self.observers
        if index in cache:
            return cache[index]
        dev = self.devices[index]
        found: tuple[Process, int] | None = None
        if dev.control_path is not None or self.policy != OwnershipPolicy.EXCLUSIVE_OPEN:
            proc = self.process(comm="observer")
            found = (proc, self.open(proc, index, control=dev.control_path is not None))
        cache[index] = found
        return found

    def _info_fields(
        self,
        prefix: str,
        proc: Process,
        fd: int,
        op: int,
        ctype: str | None,
        uapi: Uapi,
        key: str | None,
        out: dict[str, Any],
    ) -> None:
        try:
            a, data = self.info(proc, fd, op)
        except OSError as exc:
            out[prefix] = f"errno {exc.errno}"
            return
        data = data[: int(a.actual_size)]
        if ctype is None:
            out[prefix] = data.hex()
            return
        size = uapi.sizeof(ctype)
        if size == 0 or len(data) % size:
            out[prefix] = data.hex()
            return
        for i in range(len(data) // size):
            fields = decode_fields(uapi, ctype, data[i * size : (i + 1) * size])
            many = len(data) > size
            tag = (i if many else None) if key is None else i if key == "#" else fields.get(key, i)
            base = prefix if tag is None else f"{prefix}[{tag}]"
            for name, value in fields.items():
                if name != "client_id":
                    out[f"{base}.{name}"] = value

    def observe(self) -> None:
        """Open the observer files now (a snapshot opens them on first use), so
        accounting taken next already counts them."""
        for i in range(len(self.devices)):
            self._observer(i)

    def snapshot(self) -> dict[str, Any]:
        """The whole observable state of the machine, as named values.

        ``accounting.<key>`` (the live resources), ``device<i>.files`` and the
        handles of each file, and per device what user space can see: the core
        INFO answers (``info.status``, ``info.engines[<name>].<field>``,
        ``info.memory[<name>].<field>``, ``info.clients[<i>].<field>``, client
        ids left out: they are unique per open), every INFO query the driver
        declares (``info.<method>.<field>``); and every readable sysfs attribute
        of the machine (``sysfs <devpath>/<name>``: the devices, their PCI
        parents, a driver's own nodes such as KFD's topology). INFO is asked
        through an INFO-only observer file per device.
        """
        out: dict[str, Any] = {}
        observers = [self._observer(i) for i in range(len(self.devices))]
        for k, v in self.subsystem.accounting().items():
            # shared_memory counts every machine in the interpreter, not just this one.
            if k not in {"shared_memory", "oopses"}:
                out[f"accounting.{k}"] = v
        for i, dev in enumerate(self.devices):
            files = list(dev.files)
            out[f"device{i}.files"] = len(files)
            out[f"device{i}.buffers (size, refs, handles)"] = sorted(
                (bo.size, bo.refcount, bo.handle_count) for bo in dev.buffers
            )
            for j, f in enumerate(files):
                out[f"device{i}.file{j}.handles"] = sorted(h for h, _ in f.handles.items())
            obs = observers[i]
            if obs is not None and dev.status != DeviceStatus.UNPLUGGED:
                proc, fd = obs
                pre = f"device{i}.info"
                self._info_fields(
                    f"{pre}.status",
                    proc,
                    fd,
                    CORE.ACCEL_INFO_STATUS,
                    "struct accel_info_status",
                    CORE,
                    None,
                    out,
                )
                self._info_fields(
                    f"{pre}.clients",
                    proc,
                    fd,
                    CORE.ACCEL_INFO_CLIENTS,
                    "struct accel_info_client",
                    CORE,
                    "#",
                    out,
                )
                self._info_fields(
                    f"{pre}.memory",
                    proc,
                    fd,
                    CORE.ACCEL_INFO_MEMORY,
                    "struct accel_info_memory_region",
                    CORE,
                    "name",
                    out,
                )
                self._info_fields(
                    f"{pre}.engines",
                    proc,
                    fd,
                    CORE.ACCEL_INFO_ENGINES,
                    "struct accel_info_engine",
                    CORE,
                    "name",
                    out,
                )
                for op, q in sorted(dev.info_queries.items()):
                    self._info_fields(
                        f"{pre}.{q.name}", proc, fd, op, q.answer_type, self.uapi, None, out
                    )
        for node in self.subsystem.sysfs.nodes():
            for name, attr in sorted(node.attributes.items()):
                if attr.readable:
                    try:
                        text = node.read(name).rstrip("\n")
                    except OSError as exc:
                        text = f"<errno {exc.errno}>"
                    out[f"sysfs {node.devpath}/{name}"] = text
        return out

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
        if self.server is not None:
            # Sessions end on the server's threads: stopping it waits for them.
            server, rt = self.server
            self.server = None
            server.stop()
            shutil.rmtree(rt, ignore_errors=True)
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


def build_rig(
    driver_cls: type[AccelDriver], *, count: int = 1, peer: bool = False, transport: str = "inproc"
) -> Rig:
    """A fresh machine with ``count`` devices of the driver (and a vaccel peer),
    whose processes reach it through ``transport`` (``"inproc"`` or ``"server"``).

    Raises:
        RigError: the driver refused registration, or fewer devices bound.
        ValueError: an unknown transport.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r} is not one of {TRANSPORTS}")
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
    rig = Rig(machine, driver, devices, transport=transport)
    if peer:
        rig.peer = _vaccel_peer(machine, driver)
    rig.baseline = machine.subsystem.accounting()
    rig.built_memory = LIVE.regions - live_before
    return rig
