"""``accelctl demo``: the subsystem's story across real processes, as data.

The default machine's shape (two habana_like, two kfd_like devices; small DRAM
and a short CS timeout so that it runs in seconds) is served by a devfs
:class:`~accelcore.server.Server` started in this process on a real-time clock,
in a temporary runtime directory. Then, step by step (:data:`STORY`):

1. the server starts and lists its devices (through :class:`ServerSource`);
2. a workload *process* (:mod:`accelcore.demo.workload`) becomes compute
   owner of accel0 and copies A and B host→DRAM;
3. a second process, ``accelctl info accel0 --json``, reads INFO while it runs;
4. the workload runs the GEMM and copies C back; it checks C against numpy;
5. a dma-buf of habana DRAM (accel1) is exported by one process and passed to
   another, which imports it on a kfd GPU (accel2: ``ACQUIRE_VM`` and
   ``IMPORT_DMABUF`` take descriptors) and runs a vector add on it; habana reads
   the result back;
6. a process hangs accel0 (a FENCE on a sync object nobody signals); the CS
   timeout hard-resets it, the CS queued behind is ABORTED, a uevent says so;
7. a new process becomes owner and computes;
8. every session ends and the accounting returns to its baseline.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cli.records import UeventRecord
from ..cli.schema import SCHEMAS, validate
from ..cli.server_source import ServerSource
from ..machine import Machine
from ..server import Server
from ..server.daemon import control_request, load_machine, server_status
from .quick import Check, DemoReport, Progress, Step, StepResult, World, run_steps
from .workload import GPU_VA, SHARE_BYTES

__all__ = ["STORY", "STORY_MACHINE", "StoryRun", "run_story"]

CS_TIMEOUT_MS = 250
#: The default machine's devices, sized for a quick demo.
STORY_MACHINE: dict[str, Any] = {
    "machine": {"clock": "real", "drivers": ["habana_like", "kfd_like"]},
    "pci": [
        {
            "model": "habana_like",
            "count": 2,
            "options": {"dram_mb": 16, "cs_timeout_ms": CS_TIMEOUT_MS},
        },
        {"model": "kfd_like", "count": 2, "options": {"vram_mb": 16}},
    ],
}
#: How long the demo waits for a child's next report, or for the server to notice.
CHILD_TIMEOUT = 20.0
GEMM_SIZE = 64


def _check(name: str, ok: bool, detail: str = "") -> Check:
    return Check(name, bool(ok), detail)


class Child:
    """A demo workload process, reporting in ``WORD {json}`` lines."""

    def __init__(self, rt: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "accelcore.demo.workload", *args, "--runtime-dir", str(rt)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, word: str, timeout: float = CHILD_TIMEOUT) -> dict[str, Any]:
        """The next report, which must be ``word``.

        Raises:
            AssertionError: another line, end of output, or nothing in time.
        """
        assert self.proc.stdout is not None
        poller = select.poll()
        poller.register(self.proc.stdout, select.POLLIN)
        line = self.proc.stdout.readline() if poller.poll(int(timeout * 1000)) else ""
        got, _, data = line.partition(" ")
        if got != word:
            raise AssertionError(f"workload pid {self.pid} said {line.strip()!r}, not {word}")
        value: dict[str, Any] = json.loads(data)
        return value

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = CHILD_TIMEOUT) -> int:
        """Wait for the exit (killing it after ``timeout``); its status."""
        try:
            self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        return self.proc.returncode


class _KernelLog(logging.Handler):
    """Driver and core log records (the simulated dmesg) shown as progress notes."""

    def __init__(self, run: StoryRun) -> None:
        super().__init__(logging.INFO)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        self.run.note(f"kernel: {record.getMessage()}")


class StoryRun(World):
    """The story's world: the served machine, the source, the child processes."""

    def __init__(self, description: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.description = STORY_MACHINE if description is None else description
        self.rt = Path(tempfile.mkdtemp(prefix="accelctl-demo-"))
        self.machine: Machine | None = None
        self.server: Server | None = None
        self.source = ServerSource(self.rt)
        self.baseline: dict[str, int] = {}
        self.children: list[Child] = []
        self.values: dict[str, Any] = {}
        self._log = _KernelLog(self)
        self._logger = logging.getLogger("accelcore")
        self._logger.addHandler(self._log)

    @property
    def m(self) -> Machine:
        assert self.machine is not None, "the server step runs first"
        return self.machine

    def spawn(self, *args: str) -> Child:
        child = Child(self.rt, *args)
        self.children.append(child)
        return child

    def wait_for(self, pred: Callable[[], bool], timeout: float = CHILD_TIMEOUT) -> bool:
        """Poll ``pred``: the server sees a process's files go asynchronously."""
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def finish(self) -> None:
        """Kill children still running, stop the server and the machine, remove the dir."""
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.kill()
            child.finish()
        self.source.close()
        if self.server is not None:
            self.server.stop()
        if self.machine is not None:
            self.machine.shutdown()
        shutil.rmtree(self.rt, ignore_errors=True)
        self._logger.removeHandler(self._log)


# -- the steps ------------------------------------------------------------------------
def step_server(run: StoryRun) -> StepResult:
    run.machine = load_machine(run.description)
    run.server = Server(run.machine, run.rt, description=run.description)
    run.server.start()
    run.baseline = run.m.subsystem.accounting()
    status = server_status(run.rt)
    devices = run.source.devices()
    drivers = [d.driver for d in devices]
    return StepResult(
        [f"runtime dir {run.rt}"]
        + [f"{d.name}: {d.driver} at {d.pci_address}, {d.node}, {d.status}" for d in devices],
        [
            _check("server answers on its control socket", status is not None),
            _check(
                "2 habana_like + 2 kfd_like devices",
                drivers == ["habana_like"] * 2 + ["kfd_like"] * 2,
                ", ".join(map(str, drivers)),
            ),
            _check("all operational", all(d.status == "operational" for d in devices)),
            _check("listed through the server", {d.source for d in devices} == {"server"}),
        ],
    )


def step_workload(run: StoryRun) -> StepResult:
    child = run.values["workload"] = run.spawn("gemm", "--pause", "--size", str(GEMM_SIZE))
    run.note(f"workload pid {child.pid} started; waiting for it to own accel0")
    owner = run.values["owner"] = child.expect("OWNER")
    return StepResult(
        [
            f"pid {child.pid} opened accel0 through the server, allocated "
            f"{owner['ctx_dram'] // 1024} KiB of DRAM (now compute owner) and copied "
            f"A and B ({GEMM_SIZE}x{GEMM_SIZE} f32) host→DRAM with LIN_DMA"
        ],
        [
            _check("a separate process", child.pid != os.getpid() and owner["pid"] == child.pid),
            _check("copy-in CS completed", owner["copy_in"] == 0, str(owner["copy_in"])),
        ],
    )


def step_monitor(run: StoryRun) -> StepResult:
    workload = run.values["workload"].pid
    env = {k: v for k, v in os.environ.items() if k != "ACCEL_DEVICE"}
    env["ACCEL_RUNTIME_DIR"] = str(run.rt)
    run.note("running `accelctl info accel0 --json` as a second process")
    with subprocess.Popen(
        [sys.executable, "-m", "accelcore.cli", "info", "accel0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as mon:
        try:
            out, err = mon.communicate(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            mon.kill()
            raise AssertionError("accelctl info did not answer in time") from None
    if mon.returncode != 0:
        raise AssertionError(f"accelctl info exited {mon.returncode}: {err.strip()}")
    data = json.loads(out)
    errors = validate(data, SCHEMAS["info"])
    info = data["devices"][0]
    own, status = info["ownership"], info["status"]
    dram = next((m for m in info["memory"] if m["name"] == "dram"), {"used_bytes": -1})
    pids = [c["pid"] for c in info["clients"]]
    return StepResult(
        [
            f"accelctl info, pid {mon.pid} (source {info['source']}): status "
            f"{status['status']}, owner pid {own['owner_pid']} ({own['state']}), "
            f"clients {pids}, dram used {dram['used_bytes'] // 1024} KiB "
            f"of {dram.get('total_bytes', 0) // (1 << 20)} MiB"
        ],
        [
            _check("JSON matches the info schema", not errors, "; ".join(errors)),
            _check("read through the server", info["source"] == "server"),
            _check("status operational", status["status"] == "operational"),
            _check(
                "owner is the workload",
                own["state"] == "owned" and own["owner_pid"] == workload,
                str(own["owner_pid"]),
            ),
            _check(
                "clients: the workload, as owner",
                [c["pid"] for c in info["clients"]] == [workload] and info["clients"][0]["owner"],
                str(pids),
            ),
            _check(
                "dram usage is the workload's allocation",
                dram["used_bytes"] == run.values["owner"]["ctx_dram"],
                str(dram["used_bytes"]),
            ),
        ],
    )


def step_gemm(run: StoryRun) -> StepResult:
    child: Child = run.values["workload"]
    child.send("go")
    run.note("workload runs KERNEL GEMM, then DRAM→host")
    result = child.expect("RESULT")
    code = child.finish()
    released = run.wait_for(lambda: run.source.info("accel0").ownership.owner_pid is None)
    return StepResult(
        [
            f"CS {result['seqs']} → statuses {result['statuses']}; "
            f"max |C - A@B| = {result['max_abs_err']:.2e}",
            f"workload exited ({code}); the server released its files",
        ],
        [
            _check("all three CS completed", result["statuses"] == [0, 0, 0]),
            _check("C matches numpy's A @ B", result["ok"], f"{result['max_abs_err']:.3g}"),
            _check("workload exited 0", code == 0, str(code)),
            _check("accel0 free again", released),
        ],
    )


def _gpu_of(m: Machine, name: str) -> tuple[int, str]:
    """The kfd ``gpu_id`` of accel device ``name``, and its node."""
    for gid, gpu in m.subsystem.drivers["kfd_like"].gpus.items():  # type: ignore[attr-defined]
        if gpu.dev.name == name:
            return int(gid), str(gpu.dev.node_path)
    raise KeyError(name)


def step_share(run: StoryRun) -> StepResult:
    gid, node = _gpu_of(run.m, "accel2")
    child = run.spawn("share", "--device", "/dev/accel/accel1", "--gpu", f"{gid}:{node}")
    run.note(f"exporter pid {child.pid} copies a, b into accel1 DRAM and forks an importer")
    shared = child.expect("SHARED")
    computed = shared["computed"]
    bufs = run.source.dmabufs()
    child.send("go")
    result = child.expect("RESULT")
    code = child.finish()
    gone = run.wait_for(lambda: not run.source.dmabufs())
    buf = bufs[0] if len(bufs) == 1 else None
    return StepResult(
        [
            f"exporter pid {shared['exporter']}: habana accel1 exported "
            f"{SHARE_BYTES // 1024} KiB of DRAM with MEMORY EXPORT_DMABUF_FD and passed the fd "
            f"to importer pid {shared['importer']} (SCM_RIGHTS)",
            f"importer: ACQUIRE_VM on kfd accel2 (gpu {gid}), IMPORT_DMABUF by fd at "
            f"{GPU_VA:#x}, VECTOR_ADD c = a + b ({computed.get('n')} f32); accel1 DMA'd c back",
            "bufinfo: "
            + (
                f"exporter {buf.exporter}, attached {buf.attachments}"
                if buf
                else f"{len(bufs)} buffers"
            ),
        ],
        [
            _check(
                "bufinfo: exported by accel1, attached to accel2",
                buf is not None and buf.exporter == "accel1" and buf.attachments == ["accel2"],
            ),
            _check(
                "GPU kernel completed",
                computed.get("complete") is True,
                str(computed.get("waited")),
            ),
            _check("habana reads the GPU's a + b", result["ok"]),
            _check(
                "both processes exited 0",
                code == 0 and result["importer_exit"] == 0,
                f"{code}, {result['importer_exit']}",
            ),
            _check("the dma-buf is freed after both let go", gone),
        ],
    )


def _reset_events(stream: Any, timeout: float) -> list[UeventRecord]:
    deadline = time.monotonic() + timeout
    seen: list[UeventRecord] = []
    while time.monotonic() < deadline:
        ev = stream.get(max(0.0, deadline - time.monotonic()))
        if ev is None:
            break
        if ev.env.get("RESET") == "1" and ev.devpath.endswith("/accel0"):
            seen.append(ev)
            break
    return seen


def step_hang(run: StoryRun) -> StepResult:
    before = run.source.info("accel0").status.reset_count
    stream = run.source.events()
    try:
        child = run.spawn("hang")
        sub = child.expect("SUBMITTED")
        run.note(
            f"pid {child.pid}: CS {sub['hung']} waits on a sync object nobody signals, "
            f"CS {sub['queued']} queued behind it; the {CS_TIMEOUT_MS} ms CS timeout is running"
        )
        waited = child.expect("WAITED")
        code = child.finish()
        resets = _reset_events(stream, CHILD_TIMEOUT)
    finally:
        stream.close()
    info = run.source.info("accel0")
    queued, hung = waited["queued"], waited["hung"]
    reason = resets[0].env.get("REASON", "-") if resets else "-"
    return StepResult(
        [
            f"hung CS {hung['seq']}: {hung['errno']}/{hung['status']}; queued CS "
            f"{queued['seq']}: {queued['errno']}/{queued['status']}",
            f"uevent {resets[0].action if resets else 'none'} REASON={reason}; reset count "
            f"{before} → {info.status.reset_count}, status {info.status.status}",
        ],
        [
            _check("the queued CS's waiter sees ABORTED", queued["status"] == "ABORTED"),
            _check(
                "the hung CS timed out",
                hung["errno"] == "ETIMEDOUT" and hung["status"] == "TIMEDOUT",
            ),
            _check(
                "reset_count + 1",
                info.status.reset_count == before + 1,
                str(info.status.reset_count),
            ),
            _check("operational again", info.status.status == "operational"),
            _check("a reset uevent was sent", len(resets) == 1),
            _check("hang process exited 0", code == 0, str(code)),
        ],
    )


def step_next_owner(run: StoryRun) -> StepResult:
    run.wait_for(lambda: run.source.info("accel0").ownership.owner_pid is None)
    child = run.spawn("gemm", "--size", "32")
    owner = child.expect("OWNER")
    result = child.expect("RESULT")
    code = child.finish()
    return StepResult(
        [f"pid {child.pid} became owner of accel0 after the reset and ran a 32x32 GEMM"],
        [
            _check("new owner's copy-in completed", owner["copy_in"] == 0),
            _check("its GEMM matches numpy", result["ok"], f"{result['max_abs_err']:.3g}"),
            _check("exited 0", code == 0, str(code)),
        ],
    )


def step_cleanup(run: StoryRun) -> StepResult:
    run.source.close()  # our own session too

    def idle() -> bool:
        status: dict[str, Any] = control_request("status", run.rt)
        return bool(status["sessions"] == 0 and status["open_files"] == 0)

    quiet = run.wait_for(idle)
    after = run.m.subsystem.accounting()
    diff = {k: (run.baseline.get(k), v) for k, v in after.items() if run.baseline.get(k) != v}
    return StepResult(
        [
            f"{len(run.children)} workload processes and 1 accelctl process came and went",
            f"accounting {', '.join(f'{k}={v}' for k, v in after.items())}",
        ],
        [
            _check("no sessions or open files left", quiet),
            _check("accounting back to baseline", not diff, str(diff) if diff else ""),
            _check("no oopses", not run.m.subsystem.oopses),
        ],
    )


#: The story, in order.
STORY: list[Step[StoryRun]] = [
    Step("server", "start a devfs server on the default machine", step_server),
    Step("workload", "a workload process becomes compute owner of accel0", step_workload),
    Step("monitor", "a second process reads INFO while the workload runs", step_monitor),
    Step("gemm", "the workload computes a GEMM, checked against numpy", step_gemm),
    Step("share", "a dma-buf shared between habana accel1 and kfd accel2", step_share),
    Step("hang", "a hung CS, the CS timeout, a hard reset", step_hang),
    Step("next-owner", "the next owner computes on the reset device", step_next_owner),
    Step("cleanup", "every process gone; resources back to baseline", step_cleanup),
]


def run_story(
    steps: list[Step[StoryRun]] | None = None,
    progress: Progress | None = None,
    description: dict[str, Any] | None = None,
) -> DemoReport:
    """Run the story's ``steps`` (default :data:`STORY`) on a fresh :class:`StoryRun`."""
    return run_steps(STORY if steps is None else steps, StoryRun(description), progress)
