"""Process crashes: a real client process is SIGKILLed at random points.

Each iteration forks a child that connects to the devfs server (running in this
process), becomes the owner of ``accel0`` and then loops in one activity —
submitting jobs, waiting for a job, exporting or importing a dma-buf, writing
through CPU mappings — reporting one byte per loop. The parent reads a random
number of progress bytes (a seeded ``random``) and SIGKILLs the child, so the kill
lands somewhere inside an operation. Afterwards the server must have released
everything: ``accounting()`` (handles, buffers, mappings, dma-bufs, shared memory,
minors, driver counts) back to the baseline, this process's descriptors and threads
back to theirs, and the device usable by the next owner (the next child, and the
check at the end of each batch).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from accelcore.machine import Machine
from accelcore.server import Server, connect
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import CORE

from .conftest import open_fds, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.subprocess, pytest.mark.timeout(120)]

STAGES = ("submit", "wait", "export", "import", "mapped")
SIZE = 8192


def _create_bo(proc, fd: int):  # type: ignore[no-untyped-def]
    bo = V.new("struct vaccel_create_bo", size=SIZE)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    return bo


def _export(proc, fd: int, handle: int) -> int:  # type: ignore[no-untyped-def]
    ph = CORE.new("struct drm_prime_handle", handle=handle, flags=CORE.DRM_CLOEXEC)
    proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
    return int(ph.fd)


def _child_body(rt: Path, stage: str, w: int) -> None:
    """What a victim does until it is killed (it never returns normally)."""
    proc = connect(rt)
    fd = proc.open("/dev/accel/accel0")
    bo = _create_bo(proc, fd)
    if stage == "submit":
        while True:
            job = V.new("struct vaccel_submit", handle=bo.handle, fill=3, delay_ns=10**6)
            proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
            os.write(w, b".")
    elif stage == "wait":
        job = V.new("struct vaccel_submit", handle=bo.handle, fill=3, delay_ns=60 * 10**9)
        proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
        os.write(w, b".")
        wait = V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=-1)
        proc.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, wait)
    elif stage == "export":
        while True:
            buf = _export(proc, fd, bo.handle)
            os.write(w, b".")
            proc.close(buf)
    elif stage == "import":
        other = proc.open("/dev/accel/accel1")
        buf = _export(proc, fd, bo.handle)
        while True:
            imp = CORE.new("struct drm_prime_handle", fd=buf)
            proc.ioctl(other, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, imp)
            os.write(w, b".")
            proc.ioctl(
                other, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=imp.handle)
            )
    elif stage == "mapped":
        m = proc.mmap(fd, SIZE, bo.mmap_offset)
        dm = proc.mmap(_export(proc, fd, bo.handle), SIZE, write=False)
        n = 0
        while True:
            n = (n + 1) & 0xFF
            m.view[:8] = bytes([n]) * 8
            assert bytes(dm.view[:8]) == bytes([n]) * 8  # the same memory
            os.write(w, b".")
    raise AssertionError(f"stage {stage} returned")


def _fork_victim(rt: Path, stage: str) -> tuple[int, int]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns into pytest
        try:
            os.close(r)
            _child_body(rt, stage, w)
        except BaseException:
            traceback.print_exc()
            os.write(w, b"E")
        finally:
            os._exit(3)
    os.close(w)
    return pid, r


def _read_progress(r: int, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = os.read(r, n - len(got))
        if not chunk or b"E" in chunk:
            raise AssertionError(f"victim failed before being killed (progress {got + chunk!r})")
        got += chunk
    return got


def _owner_round_trip(rt: Path) -> None:
    """The next owner can use the device: a job fills its buffer."""
    proc = connect(rt)
    try:
        fd = proc.open("/dev/accel/accel0")
        bo = _create_bo(proc, fd)
        job = V.new("struct vaccel_submit", handle=bo.handle, fill=0x6B, delay_ns=10**5)
        proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
        wait = V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=5 * 10**9)
        proc.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, wait)
        assert wait.status == V.VACCEL_WAIT_COMPLETED
        m = proc.mmap(fd, SIZE, bo.mmap_offset)
        assert bytes(m.view[:SIZE]) == b"\x6b" * SIZE
    finally:
        proc.exit()


def _kill_batch(
    server: Server, machine: Machine, rng: random.Random, kills: int, counts: dict[str, int]
) -> None:
    sub = machine.subsystem
    base = sub.accounting()
    fds, threads = open_fds(), threading.active_count()
    for _ in range(kills):
        stage = rng.choice(STAGES)
        pid, r = _fork_victim(server.runtime_dir, stage)
        try:
            if stage == "wait":
                _read_progress(r, 1)
                assert wait_for(
                    lambda pid=pid: pid in sub.tasks and sub.tasks[pid].wait_points_seen >= 1
                )
            else:
                _read_progress(r, rng.randint(1, 12))
        finally:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            os.close(r)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        counts[stage] += 1
        assert wait_for(lambda: sub.accounting() == base), (
            stage,
            {k: (base[k], v) for k, v in sub.accounting().items() if base[k] != v},
        )
    assert wait_for(lambda: open_fds() == fds), (fds, open_fds())
    assert wait_for(lambda: threading.active_count() <= threads)
    _owner_round_trip(server.runtime_dir)
    assert wait_for(lambda: sub.accounting() == base)
    assert sub.oopses == []
    assert all(d.ownership.owner is None for d in sub.registered_devices())


def _run(
    rt: Path, make_server: Callable[[], tuple[Server, Machine]], batches: int, per_batch: int
) -> dict[str, int]:
    rng = random.Random(12)
    counts = dict.fromkeys(STAGES, 0)
    for _ in range(batches):
        fds_before = open_fds()
        server, machine = make_server()
        try:
            _kill_batch(server, machine, rng, per_batch, counts)
        finally:
            server.stop()
            machine.shutdown()
        assert wait_for(lambda n=fds_before: open_fds() == n), (fds_before, open_fds())
    return counts


@pytest.fixture
def make_server(rt: Path) -> Callable[[], tuple[Server, Machine]]:
    from accelcore.server.daemon import load_machine

    from .conftest import VACCEL_MACHINE

    def make() -> tuple[Server, Machine]:
        machine = load_machine(VACCEL_MACHINE)
        srv = Server(machine, rt, description=VACCEL_MACHINE)
        srv.start()
        return srv, machine

    return make


def test_sigkill_at_random_points_leaks_nothing(
    rt: Path, make_server: Callable[[], tuple[Server, Machine]], summary: Callable[[str], None]
) -> None:
    counts = _run(rt, make_server, batches=4, per_batch=25)
    assert sum(counts.values()) == 100
    summary(f"crash: 100 SIGKILLs over 4 servers, by stage {counts}; 0 leaks")


@pytest.mark.long
def test_sigkill_soak(
    rt: Path, make_server: Callable[[], tuple[Server, Machine]], summary: Callable[[str], None]
) -> None:
    counts = _run(rt, make_server, batches=10, per_batch=100)
    summary(f"crash soak: {sum(counts.values())} SIGKILLs, by stage {counts}; 0 leaks")


def test_killed_process_descriptor_is_gone_for_the_next_call(
    served: tuple[Server, Machine],
) -> None:
    """A victim's file cannot be reached once it died: the next owner gets a fresh
    handle namespace (handle 1 again), not the victim's buffer."""
    server, machine = served
    pid, r = _fork_victim(server.runtime_dir, "submit")
    try:
        _read_progress(r, 1)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
    assert wait_for(lambda: machine.subsystem.device(0).ownership.owner is None)
    proc = connect(server.runtime_dir)
    try:
        fd = proc.open("/dev/accel/accel0")
        assert _create_bo(proc, fd).handle == 1
        with pytest.raises(OSError) as exc:
            job = V.new("struct vaccel_submit", handle=2, fill=1, delay_ns=1)
            proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
        assert exc.value.errno == errno.ENOENT
    finally:
        proc.exit()
