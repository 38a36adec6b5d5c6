"""Scaling figures: INFO latency with 1,000 open files while work runs, and
``accelctl list --json`` over 256 devices (every minor)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from accelcore import CORE, Process, Subsystem, VirtualClock
from accelcore.testing import VAccelDriver
from accelcore.testing.vaccel import VACCEL_UAPI as V

from .harness import Figure, ratio_figure

__all__ = ["accelctl_list_256", "info_latency_under_load"]

#: Open files on the device, spread over this many user processes.
FILES, CLIENTS = 1000, 50
#: The owner waits for its last job after this many submits (bounded queue).
BATCH = 16


def _percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def _info_caller(proc: Process, fd: int) -> Callable[[], object]:
    """One INFO(STATUS) on ``fd`` straight into the file's ioctl (as ioctl_inprocess)."""
    out = proc.alloc(64)
    args = proc.alloc(64)
    info = CORE.new(
        "struct accel_info", op=CORE.ACCEL_INFO_STATUS, return_pointer=out.addr, return_size=32
    )
    proc.task.mm.copy_to_user(args.addr, CORE.to_bytes(info))
    task, file, cmd = proc.task, proc.task.files.get(fd), CORE.ACCEL_IOCTL_INFO
    return lambda: file.ioctl(task, cmd, args.addr)


def info_latency_under_load(quick: bool) -> list[Figure]:
    """p99 vs p50 of single INFO calls from 1,000 open files (50 processes) on one
    device while its compute owner submits jobs and waits for them, interleaved.

    In-process on a VirtualClock: each iteration the owner submits a job (10 µs of
    device time), one of the 1,000 files asks INFO (timed alone), and every
    ``BATCH`` submits the owner WAITs for its last job, which advances device
    time and completes the batch. So INFO is measured against a live queue, a
    busy owner and a thousand files, with no wall-clock sleeping to dilute it.
    """
    calls = 20_000 if quick else 100_000
    sub = Subsystem(VirtualClock())
    drv = VAccelDriver()
    sub.register_driver(drv)
    sub.create_device(drv)

    # Idle reference: one file, nothing running.
    lone = Process(sub)
    idle_info = _info_caller(lone, lone.open("/dev/accel/accel0"))
    idle = []
    for _ in range(calls // 4):
        t0 = time.perf_counter_ns()
        idle_info()
        idle.append(time.perf_counter_ns() - t0)
    lone.exit()

    owner = Process(sub)
    ofd = owner.open("/dev/accel/accel0")
    bo = V.new("struct vaccel_create_bo", size=4096)
    owner.ioctl(ofd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    job = V.new("struct vaccel_submit", handle=bo.handle, fill=0x5A, delay_ns=10_000)
    wait = V.new("struct vaccel_wait", timeout_ns=-1)
    callers = []
    for i in range(FILES - 1):  # the owner's file is the thousandth
        if i % (FILES // CLIENTS) == 0:
            proc = Process(sub)
        callers.append(_info_caller(proc, proc.open("/dev/accel/accel0")))
    samples: list[int] = []
    for i in range(calls):
        owner.ioctl(ofd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
        info = callers[(i * 7919) % len(callers)]  # stride: no cache-friendly order
        t0 = time.perf_counter_ns()
        info()
        samples.append(time.perf_counter_ns() - t0)
        if i % BATCH == BATCH - 1:
            wait.seqno = job.seqno
            owner.ioctl(ofd, V.DRM_IOCTL_VACCEL_WAIT, wait)
    p50, p99 = _percentile(samples, 0.5), _percentile(samples, 0.99)
    idle50 = _percentile(idle, 0.5)
    return [
        ratio_figure(
            "info_latency_under_load",
            p99 / 1e3,
            p50 / 1e3,
            "us p99",
            10.0,
            note=f"baseline: p50 of the same calls; {FILES} files / {CLIENTS + 1} processes, "
            f"owner submitting+waiting; idle 1-file p50 {idle50 / 1e3:.2f} us "
            f"(loaded p50 / idle p50 = {p50 / idle50:.2f}); VirtualClock, in-process",
        )
    ]


def _list_seconds(machine_devices: int, repeat: int) -> float:
    """Median wall seconds of ``accelctl --config M list --json`` as a process, ``M``
    a machine of ``machine_devices`` vaccel devices (the benchmark runs the CLI as
    its users do; it does not import it)."""
    with tempfile.TemporaryDirectory(prefix="accel-bench-") as tmp:
        config = Path(tmp) / "machine.toml"
        config.write_text(
            '[machine]\ndrivers = ["vaccel"]\n'
            f'[[virtual]]\ndriver = "vaccel"\ncount = {machine_devices}\n'
        )
        cmd = [sys.executable, "-m", "accelcore.cli", "--config", str(config), "list", "--json"]
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
            times.append(time.perf_counter() - t0)
            if res.returncode != 0:
                raise RuntimeError(f"accelctl list failed: {res.stderr}")
            if len(json.loads(res.stdout)["devices"]) != machine_devices:
                raise RuntimeError(f"accelctl list did not list {machine_devices} devices")
    return statistics.median(times)


def accelctl_list_256(quick: bool) -> list[Figure]:
    """``accelctl list --json`` over 256 vaccel devices (every minor) vs 1 device,
    each a whole ``accelctl`` process (start-up, building the machine from its
    description, enumeration through INFO, JSON): what a user waits for."""
    repeat = 3 if quick else 7
    one, full = [], []
    for _ in range(repeat):  # interleaved, like compare()
        one.append(_list_seconds(1, 5))
        full.append(_list_seconds(256, 1))
    t1, t256 = statistics.median(one), statistics.median(full)
    return [
        ratio_figure(
            "accelctl_list_256",
            t256 * 1e3,
            t1 * 1e3,
            "ms",
            256.0,
            note=f"baseline: 1 device, as a process; target linear; per device "
            f"{(t256 - t1) / 255 * 1e3:.2f} ms above start-up",
        )
    ]


SUITES: list[Callable[[bool], list[Figure]]] = [info_latency_under_load, accelctl_list_256]
