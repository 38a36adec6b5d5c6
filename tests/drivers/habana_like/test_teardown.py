"""Owner teardown: a context closed with work queued or an engine stalled is
followed by a hard reset before anyone else can own the device (upstream
``hpriv_release``: "device not idle after user context is closed, must reset");
the next owner never inherits a stalled engine nor loses memory to that reset.
And the driver cannot be unloaded while a dma-buf of its memory lives."""

from __future__ import annotations

import errno

import pytest

from accelcore import Process, VirtualClock
from accelcore.machine import Machine
from drivers.habana_like import HLK, HabanaLikeDriver
from drivers.habana_like.packets import encode_fence, encode_lin_dma
from drivers.habana_like.userlib import HlkClient

DMA0 = HLK.HLK_QUEUE_ID_DMA_0


def _memset(hl: HlkClient, dva: int, value: int, size: int = 4096) -> bytes:
    return encode_lin_dma(value, dva, size, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True)


def test_owner_killed_with_an_engine_stalled_on_a_fence_resets_before_the_next(
    machine: Machine, client
) -> None:
    dev = machine.subsystem.device(0)
    model = dev.private.model
    first = client()
    dva = first.map_device(first.mem_alloc(4096))
    # Waits for sync object 0 to reach 1, which its owner never signals.
    first.submit([(first.cb_with(encode_fence(0, 1) + _memset(first, dva, 1)), DMA0)])
    machine.clock.advance(1_000_000)  # the job starts and stalls (well before the CS timeout)
    assert model.engines[DMA0].stalled
    first.proc.exit()  # SIGKILL
    assert dev.reset_count == 1 and model.is_idle()
    assert dev.private.release_resets == 1

    nxt = client()
    handle = nxt.mem_alloc(4096)
    dva = nxt.map_device(handle)
    seq = nxt.submit([(nxt.cb_with(_memset(nxt, dva, 0x42)), DMA0)])
    assert nxt.wait(seq) == HLK.HLK_WAIT_CS_STATUS_COMPLETED  # no CS timeout: engine runs
    assert dev.reset_count == 1  # no reset in the next owner's tenure
    nxt.unmap(dva)
    nxt.mem_free(handle)  # its memory survived


def test_owner_closing_with_work_queued_resets_the_device(machine: Machine, client) -> None:
    dev = machine.subsystem.device(0)
    first = client()
    dva = first.map_device(first.mem_alloc(1 << 20))
    first.submit([(first.cb_with(_memset(first, dva, 7, 1 << 20)), DMA0)])
    first.proc.close(first.fd)
    assert dev.reset_count == 1 and dev.private.model.is_idle()


def test_owner_closing_an_idle_device_does_not_reset(machine: Machine, client) -> None:
    dev = machine.subsystem.device(0)
    first = client()
    dva = first.map_device(first.mem_alloc(4096))
    seq = first.submit([(first.cb_with(_memset(first, dva, 7)), DMA0)])
    assert first.wait(seq) == HLK.HLK_WAIT_CS_STATUS_COMPLETED
    first.proc.close(first.fd)
    assert dev.reset_count == 0


def test_driver_with_a_live_dmabuf_of_its_memory_cannot_be_removed() -> None:
    m = Machine(VirtualClock())
    m.bus.populate([{"model": "habana_like", "count": 1}])
    base = m.subsystem.accounting()
    m.add_driver(HabanaLikeDriver())
    p = Process(m.subsystem)
    hl = HlkClient(p, p.open("/dev/accel/accel0"))
    dva = hl.map_device(hl.mem_alloc(1 << 16))
    buf = hl.export(dva, 1 << 16)
    p.close(hl.fd)
    with pytest.raises(OSError) as e:
        m.remove_driver("habana_like")
    assert e.value.errno == errno.EBUSY and "dma-buf" in str(e.value)
    assert m.subsystem.device(0).driver.name == "habana_like"  # still bound
    p.close(buf)
    m.remove_driver("habana_like")
    p.exit()
    assert m.subsystem.accounting() == base
