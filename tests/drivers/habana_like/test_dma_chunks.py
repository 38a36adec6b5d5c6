"""Issue 16 §3: a LIN_DMA memset/copy runs in :data:`FILL_CHUNK` pieces and lets
other threads into the engine (``Clock.cond_resched``) between them, so a large
fill on one device does not stall another device's INFO; a teardown or reset that
runs in between is seen by the next chunk, which stops the job cleanly."""

from __future__ import annotations

import errno
import threading

import pytest

from accelcore import DeviceIOError
from accelcore.machine import Machine
from accelcore.memory import FILL_CHUNK
from drivers.habana_like import HLK
from drivers.habana_like.packets import encode_lin_dma
from drivers.habana_like.userlib import HlkClient

DMA0 = HLK.HLK_QUEUE_ID_DMA_0
SIZE = 16 * FILL_CHUNK
DRAM = HLK.HLK_DMA_DRAM_TO_DRAM


def _fill(c: HlkClient, dva: int, value: int, size: int = SIZE) -> bytes:
    return encode_lin_dma(value, dva, size, DRAM, memset=True)


def _hook(machine: Machine, monkeypatch: pytest.MonkeyPatch, fn) -> list[int]:  # type: ignore[no-untyped-def]
    """Call ``fn(n)`` at the ``n``-th ``cond_resched`` (from 1); returns the calls."""
    calls: list[int] = []

    def resched() -> None:
        calls.append(machine.subsystem.device(0).private.model.dma_chunks)
        fn(len(calls))

    monkeypatch.setattr(machine.clock, "cond_resched", resched)
    return calls


def test_info_on_another_device_gets_the_lock_between_chunks(
    machine: Machine, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = client("/dev/accel/accel0")
    b = client("/dev/accel/accel1")
    handle = a.mem_alloc(SIZE)
    dva = a.map_device(handle)
    seq = a.submit([(a.cb_with(_fill(a, dva, 0x5A)), DMA0)])
    got: list[int] = []
    done = threading.Event()

    def other_thread() -> None:  # blocks on the engine lock until the fill lets it in
        usage = b.info(HLK.HLK_INFO_DRAM_USAGE, "struct hlk_info_dram_usage")
        got.append(int(usage.dram_free_mem))
        done.set()
        machine.clock.notify()

    def at(n: int) -> None:
        if n == 1:  # the lock is held here: start B's INFO, then let it in
            t = threading.Thread(target=other_thread)
            t.start()
            assert machine.clock.changed.wait_for(done.is_set, timeout=30)  # hang guard only
            t.join()

    calls = _hook(machine, monkeypatch, at)
    assert a.wait(seq) == HLK.HLK_WAIT_CS_STATUS_COMPLETED
    model = machine.subsystem.device(0).private.model
    # 16 chunks, a resched between each two; B's INFO ran after the first chunk.
    assert calls == list(range(1, SIZE // FILL_CHUNK))
    assert got and got[0] > 0
    (block,) = model.dram.blocks()
    assert bytes(block.view()) == b"\x5a" * SIZE  # every chunk landed
    a.unmap(dva)
    a.mem_free(handle)


def test_context_teardown_between_chunks_stops_the_job(
    machine: Machine, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = machine.subsystem.device(0)
    model = dev.private.model
    a = client("/dev/accel/accel0")
    dva = a.map_device(a.mem_alloc(SIZE))
    a.submit([(a.cb_with(_fill(a, dva, 0x11)), DMA0)])

    def at(n: int) -> None:
        if n == 3:  # another thread got the lock: the owner is SIGKILLed
            a.proc.exit()

    calls = _hook(machine, monkeypatch, at)
    machine.clock.advance(10**9)
    assert calls == [1, 2, 3] and model.dma_chunks == 3  # no chunk after the teardown
    assert model.is_idle() and dev.reset_count == 1  # "not idle after release": reset
    assert model.dram.blocks() == []
    assert machine.subsystem.oopses == []
    # The next owner's fill runs to the end.
    monkeypatch.undo()
    b = client("/dev/accel/accel0")
    handle = b.mem_alloc(FILL_CHUNK * 2)
    dvb = b.map_device(handle)
    seq = b.submit([(b.cb_with(_fill(b, dvb, 0x22, FILL_CHUNK * 2)), DMA0)])
    assert b.wait(seq) == HLK.HLK_WAIT_CS_STATUS_COMPLETED
    b.unmap(dvb)
    b.mem_free(handle)


def test_reset_between_chunks_stops_a_copy(
    machine: Machine, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = machine.subsystem.device(0)
    model = dev.private.model
    a = client("/dev/accel/accel0")
    src = a.map_device(a.mem_alloc(SIZE))
    dst = a.map_device(a.mem_alloc(SIZE))
    seq = a.submit([(a.cb_with(encode_lin_dma(src, dst, SIZE, DRAM)), DMA0)])

    def at(n: int) -> None:
        if n == 2:
            dev.reset("test: reset between chunks")

    calls = _hook(machine, monkeypatch, at)
    with pytest.raises(DeviceIOError) as err:  # the CS was aborted by the reset
        a.wait(seq)
    assert err.value.errno == errno.EIO
    assert calls == [1, 2] and model.dma_chunks == 2  # no chunk after the reset
    assert model.is_idle() and dev.reset_count == 1
    assert machine.subsystem.oopses == []
    # The fixture checks that accounting is back to baseline after the exit.
