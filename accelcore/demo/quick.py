"""The demo framework, and ``accelctl demo --quick``: the story on vaccel devices.

A demo is data: a list of :class:`Step`, each a name, a title and a function
that acts on a shared *world* and returns a :class:`StepResult` (lines to show
and the checks it made). :func:`run_steps` runs them in order, stops at the first
that raises, and tells a :class:`Progress` what happens; renderers (in
:mod:`accelcore.cli.cmd_admin`) only print. Steps may call ``world.note(text)``
for live progress during long steps.

The full demo (devfs server, real processes, the reference drivers) is
:mod:`accelcore.demo.story`. :data:`STEPS` here is the quick one: seven
steps on two in-tree vaccel devices in virtual time, in one process (fast and
deterministic; it needs no server and no reference driver).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from ..cli.model import info_query
from ..cli.sources import EmbeddedSource, EventStream, SourceError, vaccel_machine
from ..clock import VirtualClock
from ..device import DeviceStatus
from ..errors import AccelError
from ..machine import Machine
from ..testing.vaccel import VACCEL_UAPI as V
from ..uapi import CORE
from ..userspace import Process
from ..vfs import Mapping

__all__ = [
    "STEPS",
    "Check",
    "DemoReport",
    "DemoRun",
    "Progress",
    "Step",
    "StepResult",
    "World",
    "run_demo",
    "run_steps",
]

BO_SIZE = 64 * 1024
SHARED_SIZE = 16 * 1024
JOB_NS = 2_000_000  # 2 ms of device time
HANG_NS = 10**15  # ~11.6 days: a job that never finishes
WATCHDOG_NS = 10_000_000  # the hang is detected after 10 ms


@dataclass(frozen=True, slots=True)
class Check:
    """One verified fact."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StepResult:
    """What a step reports: lines to show and the checks it made."""

    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


def _ignore(text: str) -> None:
    return None


class World:
    """Base of what a demo's steps share: :meth:`note` for live progress, and
    :meth:`finish`, which ends everything (after the last step, or a failed one)."""

    def __init__(self) -> None:
        self._sink: Callable[[str], None] = _ignore

    def listen(self, sink: Callable[[str], None]) -> None:
        """Send notes to ``sink``."""
        self._sink = sink

    def note(self, text: str) -> None:
        """Show ``text`` now (a long step's progress)."""
        self._sink(text)

    def finish(self) -> None:
        """End everything; subclasses extend it."""


W = TypeVar("W", bound=World)


@dataclass(frozen=True, slots=True)
class Step(Generic[W]):
    """One step: a name, a title and the function that does it."""

    name: str
    title: str
    run: Callable[[W], StepResult]


@dataclass(frozen=True, slots=True)
class StepReport:
    """A step's outcome, for rendering."""

    name: str
    title: str
    ok: bool
    elapsed_ms: float
    lines: list[str]
    checks: list[Check]
    error: str | None


@dataclass(frozen=True, slots=True)
class DemoReport:
    """The whole run."""

    ok: bool
    elapsed_ms: float
    steps: list[StepReport]


class Progress(Protocol):
    """Told what a demo run does, as it happens."""

    def begin(self, index: int, count: int, title: str) -> None: ...

    def note(self, text: str) -> None: ...

    def end(self, index: int, count: int, report: StepReport) -> None: ...


#: What a step may raise and still leave a report (anything else is a bug: it propagates).
STEP_ERRORS = (AccelError, OSError, AssertionError, KeyError, IndexError, ValueError, SourceError)


def run_steps(steps: Sequence[Step[W]], world: W, progress: Progress | None = None) -> DemoReport:
    """Run ``steps`` on ``world`` in order, stopping at the first that raises;
    ``world.finish()`` runs at the end whatever happens.

    Returns:
        The report; ``ok`` only if every step ran and every check passed.
    """
    if progress is not None:
        world.listen(progress.note)
    reports: list[StepReport] = []
    start = time.perf_counter()
    try:
        for i, step in enumerate(steps):
            if progress is not None:
                progress.begin(i, len(steps), step.title)
            t0 = time.perf_counter()
            error = None
            try:
                result = step.run(world)
            except STEP_ERRORS as exc:
                result, error = StepResult(), f"{type(exc).__name__}: {exc}"
            ok = error is None and all(c.ok for c in result.checks)
            report = StepReport(
                step.name,
                step.title,
                ok,
                (time.perf_counter() - t0) * 1e3,
                result.lines,
                result.checks,
                error,
            )
            reports.append(report)
            if progress is not None:
                progress.end(i, len(steps), report)
            if error is not None:
                break
    finally:
        world.finish()
    ok = len(reports) == len(steps) and all(r.ok for r in reports)
    return DemoReport(ok, (time.perf_counter() - start) * 1e3, reports)


class DemoRun(World):
    """The quick demo's world: the machine and the programs acting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.machine: Machine | None = None
        self.baseline: dict[str, int] = {}
        self.procs: dict[str, Process] = {}
        self.fds: dict[str, int] = {}
        self.maps: dict[str, Mapping] = {}
        self.values: dict[str, Any] = {}
        self.events: EventStream | None = None

    @property
    def m(self) -> Machine:
        assert self.machine is not None, "the machine step runs first"
        return self.machine

    def process(self, role: str, uid: int) -> Process:
        proc = Process(self.m.subsystem, uid=uid, gid=uid, comm=role)
        self.procs[role] = proc
        return proc

    def close(self) -> None:
        """End every program still running (also after a failed step)."""
        for mapping in self.maps.values():
            mapping.unmap()
        self.maps.clear()
        for proc in self.procs.values():
            proc.exit()
        self.procs.clear()
        if self.events is not None:
            self.events.close()
            self.events = None

    def finish(self) -> None:
        """End the programs, then the machine."""
        self.close()
        if self.machine is not None:
            self.machine.shutdown()


# -- small vaccel helpers -----------------------------------------------------------------
def create_bo(proc: Process, fd: int, size: int) -> tuple[int, int]:
    a = V.new("struct vaccel_create_bo", size=size)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, a)
    return int(a.handle), int(a.mmap_offset)


def submit(proc: Process, fd: int, handle: int, fill: int, delay_ns: int) -> int:
    a = V.new("struct vaccel_submit", handle=handle, fill=fill, delay_ns=delay_ns)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, a)
    return int(a.seqno)


def wait(proc: Process, fd: int, seqno: int) -> str:
    a = V.new("struct vaccel_wait", seqno=seqno, timeout_ns=-1)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, a)
    return "aborted" if a.status == V.VACCEL_WAIT_ABORTED else "completed"


def _all(view: memoryview, byte: int) -> bool:
    return bytes(view) == bytes([byte]) * len(view)


def _check(name: str, ok: bool, detail: str = "") -> Check:
    return Check(name, bool(ok), detail)


# -- the steps ------------------------------------------------------------------------
def step_machine(run: DemoRun) -> StepResult:
    run.machine = vaccel_machine(2)
    run.baseline = run.m.subsystem.accounting()
    devices = EmbeddedSource(run.m).devices()
    lines = [f"{d.name}: {d.driver}, {d.node}, {d.status}" for d in devices]
    return StepResult(
        lines,
        [
            _check(
                "two devices",
                [d.name for d in devices] == ["accel0", "accel1"],
                ", ".join(d.name for d in devices),
            ),
            _check("all operational", all(d.status == "operational" for d in devices)),
        ],
    )


def step_workload(run: DemoRun) -> StepResult:
    proc = run.process("workload", 1000)
    fd = run.fds["workload"] = proc.open("/dev/accel/accel0")
    handle, offset = create_bo(proc, fd, BO_SIZE)
    run.maps["workload"] = proc.mmap(fd, BO_SIZE, offset)
    zero = _all(run.maps["workload"].view, 0)
    run.values["seqno"] = submit(proc, fd, handle, 0xA5, JOB_NS)
    owner = run.m.subsystem.device("accel0").ownership.owner
    return StepResult(
        [
            f"pid {proc.pid} opened accel0, made a {BO_SIZE // 1024} KiB buffer (handle "
            f"{handle}), submitted fill 0xa5 taking {JOB_NS / 1e6:g} ms (job "
            f"{run.values['seqno']})"
        ],
        [
            _check("new buffer reads zero", zero),
            _check(
                "workload became compute owner",
                owner is not None and owner.pid == proc.pid,
                f"owner pid {owner.pid if owner else None}",
            ),
        ],
    )


def step_monitor(run: DemoRun) -> StepResult:
    mon = run.process("monitor", 1001)
    fd = mon.open("/dev/accel/accel0")
    status = info_query(mon, fd, CORE.ACCEL_INFO_STATUS, "struct accel_info_status")[0]
    own = info_query(mon, fd, CORE.ACCEL_INFO_OWNERSHIP, "struct accel_info_ownership")[0]
    clients = info_query(mon, fd, CORE.ACCEL_INFO_CLIENTS, "struct accel_info_client")
    engines = info_query(mon, fd, CORE.ACCEL_INFO_ENGINES, "struct accel_info_engine")
    workload = run.procs["workload"].pid
    try:
        create_bo(mon, fd, 4096)
        busy_errno = 0
    except OSError as exc:
        busy_errno = exc.errno or 0
    run.fds["monitor"] = fd
    owners = [c.pid for c in clients if c.flags & CORE.ACCEL_CLIENT_OWNER]
    return StepResult(
        [
            f"monitor pid {mon.pid} (uid 1001): status {DeviceStatus(status.status).name.lower()}, "
            f"owner pid {own.owner_pid}, {len(clients)} clients, engine busy "
            f"{'yes' if engines[0].busy else 'no'}",
            f"monitor's CREATE_BO: {errno.errorcode.get(busy_errno, busy_errno)}",
        ],
        [
            _check("INFO status operational", status.status == CORE.ACCEL_STATUS_OPERATIONAL),
            _check(
                "INFO names the workload as owner",
                own.state == CORE.ACCEL_OWNER_OWNED and own.owner_pid == workload,
            ),
            _check(
                "INFO lists both clients, one owner", len(clients) == 2 and owners == [workload]
            ),
            _check("job is running", bool(engines[0].busy) and engines[0].completed == 0),
            _check(
                "compute ioctl by non-owner gets EBUSY",
                busy_errno == errno.EBUSY,
                errno.errorcode.get(busy_errno, str(busy_errno)),
            ),
        ],
    )


def step_complete(run: DemoRun) -> StepResult:
    proc, fd = run.procs["workload"], run.fds["workload"]
    t0 = run.m.clock.now()
    status = wait(proc, fd, run.values["seqno"])
    waited = run.m.clock.now() - t0
    mon = run.procs["monitor"]
    engines = info_query(
        mon, run.fds["monitor"], CORE.ACCEL_INFO_ENGINES, "struct accel_info_engine"
    )
    return StepResult(
        [f"WAIT returned {status} after {waited / 1e6:g} ms of device time"],
        [
            _check("job completed", status == "completed"),
            _check("buffer holds the fill (via mmap)", _all(run.maps["workload"].view, 0xA5)),
            _check("INFO counts the completion", engines[0].completed == 1 and not engines[0].busy),
        ],
    )


def step_share(run: DemoRun) -> StepResult:
    exp = run.procs["workload"]
    efd = run.fds["workload"]
    handle, offset = create_bo(exp, efd, SHARED_SIZE)
    run.maps["exporter-bo"] = exp.mmap(efd, SHARED_SIZE, offset)
    p = CORE.new("struct drm_prime_handle", handle=handle, flags=CORE.DRM_CLOEXEC | CORE.DRM_RDWR)
    exp.ioctl(efd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, p)
    run.fds["dmabuf"] = int(p.fd)
    imp = run.process("importer", 1002)
    ifd = run.fds["importer"] = imp.open("/dev/accel/accel1")
    received = exp.send_fd(int(p.fd), imp)
    q = CORE.new("struct drm_prime_handle", fd=received)
    imp.ioctl(ifd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, q)
    message = b"hello from accel0"
    run.maps["exporter-bo"].view[: len(message)] = message
    run.maps["importer-dmabuf"] = imp.mmap(received, SHARED_SIZE, write=False)
    seen = bytes(run.maps["importer-dmabuf"].view[: len(message)])
    seqno = submit(imp, ifd, int(q.handle), 0x5A, JOB_NS)
    status = wait(imp, ifd, seqno)
    bufs = run.m.subsystem.dmabufs.bufinfo()
    owner1 = run.m.subsystem.device("accel1").ownership.owner
    return StepResult(
        [
            f"accel0 exported handle {handle} as dma-buf fd {p.fd}; importer pid {imp.pid} got fd "
            f"{received}, imported it on accel1 as handle {q.handle}",
            f"importer read {seen!r} through its dma-buf mmap; accel1 filled it with 0x5a",
        ],
        [
            _check("importer owns accel1", owner1 is not None and owner1.pid == imp.pid),
            _check("CPU write on accel0 side seen on the other", seen == message),
            _check("accel1's fill job completed", status == "completed"),
            _check(
                "accel1's write seen through accel0's mmap",
                _all(run.maps["exporter-bo"].view, 0x5A),
            ),
            _check(
                "bufinfo: exported by accel0, attached to accel1",
                len(bufs) == 1
                and bufs[0]["exporter"] == "accel0"
                and bufs[0]["attachments"] == ["accel1"],
                str(bufs[0]["attachments"]) if bufs else "no buffers",
            ),
        ],
    )


def step_hang(run: DemoRun) -> StepResult:
    # The importer is done: its exit drops its side of the shared buffer.
    run.maps.pop("importer-dmabuf").unmap()
    run.procs.pop("importer").exit()
    proc, fd = run.procs["workload"], run.fds["workload"]
    dev = run.m.subsystem.device("accel0")
    run.events = EmbeddedSource(run.m).events()
    handle, _ = create_bo(proc, fd, 4096)
    seqno = submit(proc, fd, handle, 0xFF, HANG_NS)
    # A watchdog (the driver's TDR) notices the job is stuck and resets the device.
    run.m.clock.call_later(WATCHDOG_NS, lambda: dev.reset("hang detected"))
    status = wait(proc, fd, seqno)
    events = []
    while (ev := run.events.get(0)) is not None:
        events.append(ev)
    resets = [e for e in events if e.env.get("RESET") == "1"]
    run.maps.pop("workload").unmap()
    run.maps.pop("exporter-bo").unmap()
    run.procs.pop("workload").exit()
    nxt = run.process("next-owner", 1003)
    nfd = nxt.open("/dev/accel/accel0")
    handle2, offset2 = create_bo(nxt, nfd, BO_SIZE)
    mapping = run.maps["next-owner"] = nxt.mmap(nfd, BO_SIZE, offset2)
    status2 = wait(nxt, nfd, submit(nxt, nfd, handle2, 0x3C, JOB_NS))
    owner = dev.ownership.owner
    return StepResult(
        [
            f"job {seqno} hung; watchdog reset accel0 after {WATCHDOG_NS / 1e6:g} ms: waiter got "
            f"{status}; uevent {resets[0].action if resets else 'none'} "
            f"REASON={resets[0].env.get('REASON') if resets else '-'}",
            f"workload exited; pid {nxt.pid} became owner and ran a job: {status2}",
        ],
        [
            _check("waiter saw ABORTED", status == "aborted"),
            _check(
                "device operational after reset",
                dev.status.name == "OPERATIONAL" and dev.reset_count == 1,
                f"reset_count {dev.reset_count}",
            ),
            _check("reset announced by a change uevent", len(resets) == 1),
            _check("next owner took over", owner is not None and owner.pid == nxt.pid),
            _check(
                "next owner's job completed", status2 == "completed" and _all(mapping.view, 0x3C)
            ),
        ],
    )


def step_cleanup(run: DemoRun) -> StepResult:
    run.close()
    # The hung job's timer is still queued (it holds its buffer): let device time run out.
    clock = run.m.clock
    drained = clock.run_until_idle() if isinstance(clock, VirtualClock) else 0
    after = run.m.subsystem.accounting()
    diff = {k: (run.baseline.get(k), v) for k, v in after.items() if run.baseline.get(k) != v}
    return StepResult(
        [
            f"closed every program; {drained} device timer(s) drained",
            f"accounting {', '.join(f'{k}={v}' for k, v in after.items())}",
        ],
        [
            _check("accounting back to baseline", not diff, str(diff) if diff else ""),
            _check("no oopses", not run.m.subsystem.oopses),
        ],
    )


#: The demo, in order.
STEPS: list[Step[DemoRun]] = [
    Step("machine", "build the machine and list its devices", step_machine),
    Step("workload", "a workload becomes compute owner of accel0 and submits a job", step_workload),
    Step(
        "monitor", "a monitor reads INFO while the job runs, and is refused compute", step_monitor
    ),
    Step("complete", "the job completes and the buffer holds its result", step_complete),
    Step("share", "a dma-buf shared between accel0 and accel1", step_share),
    Step("hang", "a hung job, a reset, and the next owner", step_hang),
    Step("cleanup", "close everything; resources return to baseline", step_cleanup),
]


def run_demo(
    steps: list[Step[DemoRun]] | None = None, progress: Progress | None = None
) -> DemoReport:
    """Run the quick demo's ``steps`` (default :data:`STEPS`) on a fresh :class:`DemoRun`."""
    return run_steps(STEPS if steps is None else steps, DemoRun(), progress)
