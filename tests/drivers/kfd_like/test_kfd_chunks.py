"""Issue 16 §3: the memset kernel runs in :data:`FILL_CHUNK` pieces and lets other
threads into the engine (``Clock.cond_resched``) between them, so a large fill on
one GPU does not stall another GPU's INFO; a process exit between chunks drops the
packet with its queue and writes nothing more."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from accelcore import CORE, Process
from accelcore.machine import Machine
from accelcore.memory import FILL_CHUNK
from drivers.kfd_like import KFD_UAPI as U
from drivers.kfd_like.thunk import VRAM, Kfd, driver_of

VA = 0x10_0000_0000
SIZE = 16 * FILL_CHUNK


def _hook(machine: Machine, monkeypatch: pytest.MonkeyPatch, fn) -> list[int]:  # type: ignore[no-untyped-def]
    """Call ``fn(n)`` at the ``n``-th ``cond_resched`` (from 1); returns the calls."""
    calls: list[int] = []

    def resched() -> None:
        calls.append(len(calls) + 1)
        fn(len(calls))

    monkeypatch.setattr(machine.clock, "cond_resched", resched)
    return calls


def _memset(k: Kfd, gid: int, value: int) -> tuple[object, int]:
    buf = k.alloc(gid, SIZE, VA, VRAM)
    assert k.map(k.map_args(buf.handle, [gid])).n_success == 1
    q = k.create_queue(gid)
    ev = k.create_event()
    q.submit(U.KFD_LIKE_KERNEL_MEMSET, [VA, SIZE // 4, value], event=ev)
    return buf, ev


def test_info_on_another_gpu_gets_the_lock_between_chunks(
    machine2: Machine, kfd: Kfd, monkeypatch: pytest.MonkeyPatch
) -> None:
    gid = kfd.gpu_ids[0]
    buf, ev = _memset(kfd, gid, 0xA5A5A5A5)
    # Another program, with the second GPU's accel node open, asks INFO.
    proc = Process(machine2.subsystem)
    fd = proc.open("/dev/accel/accel1")
    ret = proc.alloc(CORE.sizeof("struct accel_info_status"))
    got: list[int] = []
    done = threading.Event()

    def other_thread() -> None:  # blocks on the engine lock until the memset lets it in
        arg = CORE.new(
            "struct accel_info",
            op=CORE.ACCEL_INFO_STATUS,
            return_pointer=ret.addr,
            return_size=len(ret.view),
        )
        proc.ioctl(fd, CORE.ACCEL_IOCTL_INFO, arg)
        got.append(int(arg.actual_size))
        done.set()
        machine2.clock.notify()

    def at(n: int) -> None:
        if n == 1:  # the lock is held here: start the other thread, then let it in
            t = threading.Thread(target=other_thread)
            t.start()
            assert machine2.clock.changed.wait_for(done.is_set, timeout=30)  # hang guard only
            t.join()

    calls = _hook(machine2, monkeypatch, at)
    assert kfd.wait([ev]) == U.KFD_IOC_WAIT_RESULT_COMPLETE
    assert calls == list(range(1, SIZE // FILL_CHUNK))
    assert got == [len(ret.view)]  # B's INFO answered in the gap after chunk 1
    cpu = np.frombuffer(kfd.cpu_map(gid, buf, SIZE), np.uint32)
    assert (cpu == 0xA5A5A5A5).all()  # every chunk landed
    del cpu
    proc.exit()


def test_exit_between_chunks_drops_the_packet(
    machine2: Machine, leak_check, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = leak_check(machine2)
    kfd = Kfd(machine2)
    kfd.acquire_all()
    gid = kfd.gpu_ids[0]
    node = driver_of(machine2).gpus[gid]
    _memset(kfd, gid, 0x11111111)

    def at(n: int) -> None:
        if n == 3:  # another thread got the lock: the process is SIGKILLed
            kfd.close()

    calls = _hook(machine2, monkeypatch, at)
    machine2.clock.advance(10**9)
    assert calls == [1, 2, 3]  # no chunk after the exit
    assert node.cp.queues == [] and node.cp.completed == 0
    assert machine2.subsystem.oopses == []
    check()  # every buffer, queue and mapping of the process is gone
