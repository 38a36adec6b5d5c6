"""The user-program side of the cross-process figures (run in child processes).

``main(kind, params)`` runs one role and prints one JSON line of medians (ns).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from accelcore.server import connect, recv_fds, send_fds
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import CORE
from drivers.habana_like import HLK
from drivers.habana_like.packets import encode_lin_dma
from drivers.habana_like.userlib import HlkClient

from .harness import compare

#: Calls per batch of the batched cross-process figure.
BATCH = 16


def _info(params: dict[str, Any]) -> dict[str, float]:
    proc = connect(params["rt"])
    fd = proc.open("/dev/accel/accel0")
    out = proc.alloc(64)
    args = proc.alloc(64)
    info = CORE.new(
        "struct accel_info", op=CORE.ACCEL_INFO_STATUS, return_pointer=out.addr, return_size=32
    )
    args.view[: CORE.sizeof("struct accel_info")] = CORE.to_bytes(info)
    cmd = CORE.ACCEL_IOCTL_INFO

    def measured() -> None:
        proc.ioctl(fd, cmd, args.addr)

    batch = proc.batch()

    def batched() -> None:
        for _ in range(BATCH):
            batch.ioctl(fd, cmd, args.addr)
        for call in batch.submit():
            call.result()

    request = b"\0" * params["size"]
    plain = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    plain.connect(params["plain"])

    def raw() -> None:
        plain.send(request)
        plain.recv(65536)

    loops = params["loops"]
    for fn in (measured, raw, batched):  # warm up
        for _ in range(200):
            fn()
    info_ns, plain_ns = compare(measured, raw, loops)
    batch_ns, plain2_ns = compare(batched, raw, loops // BATCH)
    plain.close()
    proc.exit()
    return {
        "info": info_ns,
        "plain": plain_ns,
        "batched": batch_ns / BATCH,
        "plain_batched": plain2_ns,
    }


def _exporter(params: dict[str, Any]) -> dict[str, float]:
    sock = socket.socket(fileno=params["sock"])
    proc = connect(params["rt"])
    fd = proc.open("/dev/accel/accel0")
    handles = {}
    for size in params["sizes"]:
        bo = V.new("struct vaccel_create_bo", size=size)
        proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
        handles[size] = bo.handle

    def share(size: int) -> None:
        ph = CORE.new(
            "struct drm_prime_handle", handle=handles[size], flags=CORE.DRM_CLOEXEC | CORE.DRM_RDWR
        )
        proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
        send_fds(sock, [ph.fd], size.to_bytes(8, "little"))
        proc.close(ph.fd)
        if sock.recv(16) != b"k":
            raise RuntimeError("importer failed")

    big, small = params["sizes"]
    for _ in range(3):
        share(big)
        share(small)
    big_ns, small_ns = compare(lambda: share(big), lambda: share(small), params["loops"])
    sock.close()
    proc.exit()
    return {str(big): big_ns, str(small): small_ns}


def _importer(params: dict[str, Any]) -> dict[str, float]:
    sock = socket.socket(fileno=params["sock"])
    proc = connect(params["rt"])
    fd = proc.open("/dev/accel/accel1")
    n = 0
    while True:
        data, fds = recv_fds(sock)
        if not data:
            break
        size = int.from_bytes(data, "little")
        (buf,) = fds
        ph = CORE.new("struct drm_prime_handle", fd=buf)
        proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, ph)
        m = proc.mmap(buf, size)
        m.unmap()
        proc.ioctl(fd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=ph.handle))
        proc.close(buf)
        sock.send(b"k")
        n += 1
    proc.exit()
    return {"imports": float(n)}


def _p99(samples: list[int]) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))])


def _info_during_fill(params: dict[str, Any]) -> dict[str, float]:
    """INFO latencies on accel1: idle, then while fills of ``size`` bytes run on
    accel0 (submitted by this process; a thread waits for each): vaccel fill jobs,
    or with ``driver`` ``habana_like`` LIN_DMA memsets of one DRAM allocation."""
    proc = connect(params["rt"])
    fa, fb = proc.open("/dev/accel/accel0"), proc.open("/dev/accel/accel1")
    out, args = proc.alloc(64), proc.alloc(64)
    info = CORE.new(
        "struct accel_info", op=CORE.ACCEL_INFO_STATUS, return_pointer=out.addr, return_size=32
    )
    args.view[: CORE.sizeof("struct accel_info")] = CORE.to_bytes(info)
    cmd = CORE.ACCEL_IOCTL_INFO

    def sample(until: threading.Event | None, n: int) -> list[int]:
        got: list[int] = []
        while (until is None and len(got) < n) or (until is not None and not until.is_set()):
            t0 = time.perf_counter_ns()
            proc.ioctl(fb, cmd, args.addr)
            got.append(time.perf_counter_ns() - t0)
        return got

    size = params["size"]
    if params.get("driver") == "habana_like":
        # ClientProcess has accelcore.Process's API (HlkClient is typed for the latter).
        proc_any: Any = proc
        hl = HlkClient(proc_any, fa)
        dva = hl.map_device(hl.mem_alloc(size))

        def run_fill(i: int) -> None:
            cb = encode_lin_dma(i + 1, dva, size, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True)
            hl.wait(hl.submit([(hl.cb_with(cb), HLK.HLK_QUEUE_ID_DMA_0)]))

    else:
        bo = V.new("struct vaccel_create_bo", size=size)
        proc.ioctl(fa, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)

        def run_fill(i: int) -> None:
            job = V.new("struct vaccel_submit", handle=bo.handle, fill=i + 1, delay_ns=0)
            proc.ioctl(fa, V.DRM_IOCTL_VACCEL_SUBMIT, job)
            wait = V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=-1)
            proc.ioctl(fa, V.DRM_IOCTL_VACCEL_WAIT, wait)

    idle = sample(None, params["loops"])
    busy: list[int] = []
    fill_ns: list[int] = []
    for i in range(params["fills"]):
        done = threading.Event()

        def fill(i: int = i, done: threading.Event = done) -> None:
            t0 = time.perf_counter_ns()
            run_fill(i)
            fill_ns.append(time.perf_counter_ns() - t0)
            done.set()

        t = threading.Thread(target=fill)
        t.start()
        busy += sample(done, 0)
        t.join()
    proc.exit()
    return {
        "idle_p99": _p99(idle),
        "busy_p99": _p99(busy),
        "busy_samples": float(len(busy)),
        "fill_ms": sorted(fill_ns)[len(fill_ns) // 2] / 1e6,
    }


#: Per-task scheduler statistics: CPU time, run-queue time (ns), timeslices.
SCHEDSTAT = "/proc/self/schedstat"


def _fleet_client(params: dict[str, Any], ready: int, start: int) -> list[tuple[int, int]]:
    """One of the fleet: INFO ``loops`` times after the start signal; per call, its
    latency (timed alone) and how much of it, at most, this client spent waiting
    for a CPU (its run-queue time, read just outside the timed window), in ns."""
    proc = connect(params["rt"])
    fd = proc.open("/dev/accel/accel0")
    out = proc.alloc(64)
    args = proc.alloc(64)
    info = CORE.new(
        "struct accel_info", op=CORE.ACCEL_INFO_STATUS, return_pointer=out.addr, return_size=32
    )
    args.view[: CORE.sizeof("struct accel_info")] = CORE.to_bytes(info)
    cmd = CORE.ACCEL_IOCTL_INFO
    for _ in range(50):  # warm up
        proc.ioctl(fd, cmd, args.addr)
    try:
        stat = os.open(SCHEDSTAT, os.O_RDONLY)
    except OSError:  # a kernel without CONFIG_SCHED_INFO: no run-queue time
        stat = -1

    def waited() -> int:
        """This (single-threaded) process's time runnable but waiting for a CPU."""
        return int(os.pread(stat, 128, 0).split()[1]) if stat >= 0 else 0

    os.write(ready, b"r")
    os.read(start, 1)
    clock = time.perf_counter_ns
    samples = []
    for _ in range(params["loops"]):
        w0 = waited()
        t0 = clock()
        proc.ioctl(fd, cmd, args.addr)
        t1 = clock()
        samples.append((t1 - t0, waited() - w0))
    if stat >= 0:
        os.close(stat)
    proc.exit()
    return samples


def _fleet(params: dict[str, Any]) -> dict[str, float]:
    """``clients`` processes (forked from this one after its imports) calling INFO
    through the server at once; the p50 and p99 of every call's latency."""
    n = params["clients"]
    out_dir = Path(params["out"])
    ready_r, ready_w = os.pipe()
    start_r, start_w = os.pipe()
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller's code
            code = 1
            try:
                os.close(ready_r)
                os.close(start_w)
                samples = _fleet_client(params, ready_w, start_r)
                (out_dir / f"{i}.json").write_text(json.dumps(samples))
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(ready_w)
    os.close(start_r)
    got = 0
    while got < n:
        chunk = os.read(ready_r, n)
        if not chunk:
            raise RuntimeError(f"only {got} of {n} fleet clients got ready")
        got += len(chunk)
    os.write(start_w, b"s" * n)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"fleet client {pid} failed")
    os.close(ready_r)
    os.close(start_w)
    samples = sorted(
        (lat, wait)
        for i in range(n)
        for lat, wait in json.loads((out_dir / f"{i}.json").read_text())
    )
    p99_at = min(len(samples) - 1, int(0.99 * len(samples)))
    mid = samples[len(samples) * 45 // 100 : len(samples) * 55 // 100]
    tail = samples[p99_at:]
    return {
        "p50": float(samples[len(samples) // 2][0]),
        "p99": float(samples[p99_at][0]),
        "calls": float(len(samples)),
        # Where the time went, from the client side: of the calls around the
        # median and of those at or above p99, the mean latency and the mean time
        # their client spent waiting for a CPU; the rest was the server's.
        "mid_mean": sum(lat for lat, _ in mid) / len(mid),
        "mid_client_wait": sum(wait for _, wait in mid) / len(mid),
        "tail_mean": sum(lat for lat, _ in tail) / len(tail),
        "tail_client_wait": sum(wait for _, wait in tail) / len(tail),
        "client_wait_known": float(os.path.exists(SCHEDSTAT)),
    }


def main(kind: str, params: dict[str, Any]) -> None:
    """Run role ``kind`` and print its result as one JSON line."""
    if params.get("cpu"):
        os.sched_setaffinity(0, set(params["cpu"]))
    role = {
        "info": _info,
        "exporter": _exporter,
        "importer": _importer,
        "info_during_fill": _info_during_fill,
        "fleet": _fleet,
    }[kind]
    print(json.dumps(role(params)), flush=True)
