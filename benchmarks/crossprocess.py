"""Cross-process figures: an INFO round trip through the devfs server, and sharing a
1 GiB dma-buf between processes.

The server runs in this process (a vaccel machine on a real-time clock) and the
user programs run in child Python processes, so every call really crosses a
process boundary. Both this process's threads and the children are pinned to
one CPU (``os.sched_setaffinity``) for the measured code and its baseline alike:
on a 2-vCPU VM a cross-CPU wakeup costs ~45 µs of scheduler noise either way
(see the project's IPC notes), while a same-CPU ping-pong is ~9 µs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from accelcore.server import Server
from accelcore.server.daemon import load_machine

from .harness import Figure, ratio_figure

__all__ = [
    "dmabuf_share_1g",
    "info_during_fill",
    "info_during_fill_habana",
    "ioctl_crossprocess",
    "server_p99_32",
]

_ROOT = Path(__file__).resolve().parent.parent
_MACHINE = {
    "machine": {"clock": "real", "drivers": ["vaccel"]},
    "virtual": [{"driver": "vaccel", "count": 2}],
}
#: Record sizes of an INFO round trip on the wire (protocol version 2): IOCTL
#: (header 24 + cmd/handle/argp/fd/nargs 24) and RESULT (header 24 +
#: ret/errno/nfds/mlen/handle 24).
IOCTL_RECORD, RESULT_RECORD = 48, 48
_CPU = 0


@contextlib.contextmanager
def _pinned() -> Iterator[None]:
    """Pin the calling thread (and the threads it starts) to one CPU."""
    before = os.sched_getaffinity(0)
    cpu = _CPU if _CPU in before else min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


#: Two habana_like devices with room for a 512 MiB DRAM allocation.
_HABANA_MACHINE = {
    "machine": {"clock": "real", "drivers": ["habana_like"]},
    "pci": [{"model": "habana_like", "count": 2, "options": {"dram_mb": 1024}}],
}


@contextlib.contextmanager
def _served(description: dict[str, Any] | None = None) -> Iterator[Server]:
    description = description or _MACHINE
    rt = Path(tempfile.mkdtemp(prefix="accel-bench-"))
    machine = load_machine(description)
    srv = Server(machine, rt, description=description)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        machine.shutdown()
        shutil.rmtree(rt, ignore_errors=True)


def _echo_server(path: Path, reply: int) -> tuple[socket.socket, threading.Thread]:
    """A raw SOCK_SEQPACKET responder: each request (and any descriptors it
    carries, closed at once) is answered by ``reply`` bytes."""
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lsock.bind(str(path))
    lsock.listen(4)
    answer = b"\0" * reply
    space = socket.CMSG_SPACE(16 * 4)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = lsock.accept()
            with conn:
                while True:
                    data, anc, _, _ = conn.recvmsg(65536, space, socket.MSG_CMSG_CLOEXEC)
                    if not data:
                        return
                    for _level, _kind, payload in anc:
                        for i in range(0, len(payload) - 3, 4):
                            os.close(int.from_bytes(payload[i : i + 4], "little"))
                    conn.send(answer)

    t = threading.Thread(target=serve, name="bench-echo", daemon=True)
    t.start()
    return lsock, t


def _run_child(
    kind: str, params: dict[str, Any], pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, json; from benchmarks import _children as c; "
            "c.main(sys.argv[1], json.loads(sys.argv[2]))",
            kind,
            json.dumps(params),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=_ROOT,
        env=env,
        pass_fds=pass_fds,
    )


def _result(child: subprocess.Popen[str], timeout: float = 180) -> dict[str, Any]:
    out, _ = child.communicate(timeout=timeout)
    if child.returncode:
        raise RuntimeError(f"benchmark child exited with {child.returncode}")
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return data


def ioctl_crossprocess(quick: bool) -> list[Figure]:
    """INFO from a child process through the devfs server, alone and 16 to a
    ``proc.batch()``, vs a raw request/response of the same sizes between the same
    two processes over ``SOCK_SEQPACKET``, measured alternately in one run.
    """
    loops = 2_000 if quick else 10_000
    with _pinned(), _served() as srv:
        plain_path = srv.runtime_dir / "bench-echo"
        lsock, thread = _echo_server(plain_path, RESULT_RECORD)
        try:
            child = _run_child(
                "info",
                {
                    "rt": str(srv.runtime_dir),
                    "plain": str(plain_path),
                    "size": IOCTL_RECORD,
                    "loops": loops,
                    "cpu": sorted(os.sched_getaffinity(0)),
                },
            )
            res = _result(child)
        finally:
            lsock.close()
            thread.join(5)
    note = "pinned: server process + client child on one CPU; SOCK_SEQPACKET"
    return [
        ratio_figure(
            "ioctl_crossprocess",
            res["info"] / 1e3,
            res["plain"] / 1e3,
            "us/call",
            1.6,
            note=f"baseline: raw {IOCTL_RECORD}/{RESULT_RECORD}-byte round trip; {note}",
        ),
        ratio_figure(
            "ioctl_crossprocess_batched16",
            res["batched"] / 1e3,
            res["plain_batched"] / 1e3,
            "us/call",
            0.6,
            note=f"16 INFOs per proc.batch() (one BATCH record each way), per call; "
            f"baseline: raw {IOCTL_RECORD}/{RESULT_RECORD}-byte round trip; {note}",
        ),
    ]


def dmabuf_share_1g(quick: bool) -> list[Figure]:
    """Export + pass to another process + import + mmap of a 1 GiB vaccel buffer vs
    the same for 4 KiB, between two child processes through the server.

    The exporter owns accel0 and the importer accel1 (vaccel's compute context is
    exclusive per device, so a second owner on accel0 would get ``EBUSY``).
    """
    loops = 100 if quick else 300
    with _pinned(), _served() as srv:
        a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        params = {"rt": str(srv.runtime_dir), "cpu": sorted(os.sched_getaffinity(0))}
        with a_sock, b_sock:
            importer = _run_child(
                "importer", {**params, "sock": b_sock.fileno()}, (b_sock.fileno(),)
            )
            exporter = _run_child(
                "exporter",
                {**params, "sock": a_sock.fileno(), "loops": loops, "sizes": [1 << 30, 4096]},
                (a_sock.fileno(),),
            )
        res = _result(exporter)
        _result(importer)
    return [
        ratio_figure(
            "dmabuf_share_1g",
            res["1073741824"] / 1e3,
            res["4096"] / 1e3,
            "us/share",
            2.0,
            note="baseline: same for 4 KiB; exporter and importer are two child processes "
            "(pinned to one CPU with the server); includes the importer's munmap+GEM_CLOSE",
        )
    ]


#: Bytes of the fill that runs on device A while INFO is timed on device B.
FILL_BYTES = 512 << 20


def info_during_fill(quick: bool) -> list[Figure]:
    """INFO p99 on device B while the same client fills a 512 MiB buffer on device
    A (vaccel SUBMIT, the fill runs on the server's clock thread), as a ratio to
    INFO p99 on B when idle, in the same run. Fills work in chunks with
    ``Clock.cond_resched`` between them, so they do not hold the engine lock."""
    with _served() as srv:
        child = _run_child(
            "info_during_fill",
            {
                "rt": str(srv.runtime_dir),
                "size": FILL_BYTES,
                "loops": 2_000 if quick else 10_000,
                "fills": 2 if quick else 5,
            },
        )
        res = _result(child)
    return [
        ratio_figure(
            "info_p99_during_fill",
            res["busy_p99"] / 1e3,
            res["idle_p99"] / 1e3,
            "us",
            5.0,
            note=f"baseline: INFO p99 on an idle machine; {res['busy_samples']:.0f} INFOs "
            f"during {FILL_BYTES >> 20} MiB fills of {res['fill_ms']:.0f} ms (median)",
        )
    ]


def info_during_fill_habana(quick: bool) -> list[Figure]:
    """:func:`info_during_fill` with habana_like: a LIN_DMA memset of 512 MiB of
    DRAM on device A (it works in 1 MiB chunks with ``Clock.cond_resched``
    between them) while INFO is timed on device B."""
    with _served(_HABANA_MACHINE) as srv:
        child = _run_child(
            "info_during_fill",
            {
                "rt": str(srv.runtime_dir),
                "size": FILL_BYTES,
                "loops": 2_000 if quick else 10_000,
                "fills": 2 if quick else 5,
                "driver": "habana_like",
            },
        )
        res = _result(child)
    return [
        ratio_figure(
            "info_p99_during_fill_habana",
            res["busy_p99"] / 1e3,
            res["idle_p99"] / 1e3,
            "us",
            5.0,
            note=f"baseline: INFO p99 on an idle machine; {res['busy_samples']:.0f} INFOs "
            f"during {FILL_BYTES >> 20} MiB LIN_DMA memsets of {res['fill_ms']:.0f} ms (median)",
        )
    ]


#: Client processes of :func:`server_p99_32`.
FLEET = 32


def server_p99_32(quick: bool) -> list[Figure]:
    """p99 vs p50 of INFO calls through the devfs server from 32 client processes
    calling at once, each call timed alone in its client.

    Not pinned, unlike the other cross-process figures: the server and its 32
    clients share every CPU, as a shared server does. (Pinned to one CPU, every
    call queues behind the other 31 clients' turns, which inflates p50 as much as
    p99 and hides the tail this figure is about.)

    The note says where the time of the calls at or above p99 went, measured: how
    much of it their client spent waiting for a CPU (its run-queue time from
    ``/proc/self/schedstat``), the rest being the server's; and the server's CPU
    time per call and the load average, which say how busy the CPUs were.
    """
    loops = 200 if quick else 1_000
    with _served() as srv, tempfile.TemporaryDirectory(prefix="accel-fleet-") as out:
        cpu0 = os.times()
        child = _run_child(
            "fleet", {"rt": str(srv.runtime_dir), "clients": FLEET, "loops": loops, "out": out}
        )
        res = _result(child, timeout=600)
        cpu1 = os.times()
    calls = int(res["calls"])
    if res["client_wait_known"]:
        where = (
            f"calls at or above p99 took {res['tail_mean'] / 1e6:.1f} ms on average, "
            f"{res['tail_client_wait'] / 1e6:.1f} ms of it their client waiting for a CPU "
            f"(calls around p50: {res['mid_mean'] / 1e6:.1f} ms, "
            f"{res['mid_client_wait'] / 1e6:.1f} ms), the rest in the server (its session "
            "threads' GIL hand-offs and waits for a CPU) and the client's own code"
        )
    else:
        where = "the clients' run-queue time is not known (no /proc/self/schedstat)"
    server_cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / calls * 1e6
    return [
        ratio_figure(
            "server_p99_32",
            res["p99"] / 1e3,
            res["p50"] / 1e3,
            "us p99",
            4.0,
            note=f"baseline: p50 of the same {calls} INFO calls; {FLEET} client processes "
            f"(forked after their imports) at once through one server, not pinned; {where}; "
            f"server CPU {server_cpu:.0f} us per call; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        )
    ]


SUITES: list[Callable[[bool], list[Figure]]] = [
    ioctl_crossprocess,
    dmabuf_share_1g,
    info_during_fill,
    info_during_fill_habana,
    server_p99_32,
]
